"""covidseg: COVID-19 lung opacity segmentation in chest CT with transfer-regularized fine-tuning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("covidseg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
