"""rlfm: reinforcement learning for and with foundation models."""

__version__ = "0.1.0"
