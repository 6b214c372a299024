"""napari-spahgc: predict spatial gene expression from H&E histology with SpaHGC.

The package import stays light (napari reads the plugin manifest through it); the public API is
loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-spahgc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_API = {
    "InputError": "errors",
    "Slide": "slide",
    "SlideImage": "slide",
    "CohortEntry": "io.cohort",
    "build_slide": "io.cohort",
    "load_cohort": "io.cohort",
    "open_slides": "io.cohort",
    "read_cohort": "io.cohort",
    "open_image": "io.images",
    "read_counts": "io.spots",
    "read_spots": "io.spots",
    "spot_anndata": "io.export",
    "write_h5ad": "io.export",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
