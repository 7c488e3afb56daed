"""medbridge: when does RL help a medical VLM? An lmms-eval plugin suite."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medbridge")  # one source: pyproject.toml's [project] version
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
