"""medbridge: when does RL help a medical VLM? An lmms-eval plugin suite."""

__version__ = "0.1.0"
