"""fmb: foundation-models benchmark and anomaly discovery for multimodal astronomical surveys."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fmb")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
