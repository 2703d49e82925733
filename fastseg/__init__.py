"""fastseg: self-configuring medical image segmentation, nnU-Net v2 compatible, native-fast."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
