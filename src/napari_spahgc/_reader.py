"""napari reader: a cohort table, a Space Ranger ``outs/`` folder, a SpatialData store, or an ``.h5ad``
with spot coordinates."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_error, show_warning

from napari_spahgc.base.errors import describe
from napari_spahgc.io.cohort import is_cohort_table, open_slides
from napari_spahgc.io.spatialdata import is_store
from napari_spahgc.view.layers import slide_layers

NULL_LAYER = [(None,)]  # npe2's "read, but no layers" sentinel: the viewer stays as it was


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """Return :func:`read_spatial` when ``path`` is something this plugin reads, else None (never raises)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return _reader_for(Path(path))
    except (OSError, ValueError):  # unreadable or odd paths are not ours to read
        return None


def _reader_for(candidate: Path) -> Callable | None:
    name = candidate.name.lower()
    if is_store(candidate):
        return read_spatial
    if candidate.is_dir():
        return read_spatial if (candidate / "spatial").is_dir() else None
    if name.endswith(".h5ad"):
        return read_spatial  # a missing or broken one is reported by the reader
    if name.endswith(".csv") and candidate.is_file() and is_cohort_table(candidate):
        return read_spatial
    return None


def read_spatial(path: str | list[str]) -> list[tuple]:
    """Read slides into layers; any failure becomes an error notification, never an exception in the viewer."""
    path = Path(path[0] if isinstance(path, list) else path)
    try:
        return _read_layers(path)
    except Exception as err:  # bad input of any kind: the user gets the reason, the viewer stays as it was
        reason = describe(err)
        named = reason if reason.startswith(str(path)) else f"{path}: {reason}"
        show_error(f"napari-spahgc could not open {named}")
        return NULL_LAYER


def _read_layers(path: Path) -> list[tuple]:
    """The layers of the slides at ``path``; warnings while reading become notifications, also on failure."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            slides = open_slides(path)
            return [
                layer
                for index, slide in enumerate(slides)
                for layer in slide_layers(slide, visible=index == 0)
            ]
        finally:
            for warning in caught:
                show_warning(str(warning.message))
