"""napari reader: a cohort table, a Space Ranger ``outs/`` folder, or an ``.h5ad`` with spot coordinates."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_error, show_warning

from .errors import InputError
from .io.cohort import is_cohort_table, open_slides
from .layers import slide_layers

NULL_LAYER = [(None,)]  # npe2's "read, but no layers" sentinel: the viewer stays as it was


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """Return :func:`read_spatial` when ``path`` is something this plugin reads, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    candidate = Path(path)
    name = candidate.name.lower()
    if candidate.is_dir():
        return read_spatial if (candidate / "spatial").is_dir() else None
    if name.endswith(".h5ad"):
        return read_spatial
    if name.endswith(".csv") and is_cohort_table(candidate):
        return read_spatial
    return None


def read_spatial(path: str | list[str]) -> list[tuple]:
    """Read slides into layers; bad input becomes a notification, never an exception in the viewer."""
    path = Path(path[0] if isinstance(path, list) else path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            slides = open_slides(path)
        for warning in caught:
            show_warning(str(warning.message))
    except InputError as err:
        show_error(f"napari-spahgc could not open {err}")
        return NULL_LAYER
    return [layer for index, slide in enumerate(slides) for layer in slide_layers(slide, visible=index == 0)]
