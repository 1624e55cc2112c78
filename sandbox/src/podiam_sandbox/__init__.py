"""
A local, cluster-less world for the demo and the tests: Kubernetes API emulation, local STS,
pods as network namespaces, and a stand-in for the node's own IMDS.
"""
