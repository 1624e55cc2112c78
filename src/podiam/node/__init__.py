"""The node: the iptables DNAT rule that sends pod metadata traffic to podiam."""
