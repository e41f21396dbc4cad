"""qsmbids: a BIDS App for Quantitative Susceptibility Mapping, pure Python (numpy/scipy/torch)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qsmbids")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = ["__version__"]
