"""Kubernetes side: API connection and the pod index fed by a list+watch of this node's pods."""
