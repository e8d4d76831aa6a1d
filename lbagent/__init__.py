"""lbagent: a live CPU load-balancing agent for Linux with a learned DreamerV3 + RL² policy."""

__version__ = "0.1.0"
