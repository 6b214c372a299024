"""HER2ST sections as napari sample data (the sections are found by :mod:`napari_spahgc.io.her2st`)."""

from __future__ import annotations

from collections.abc import Sequence

from napari_spahgc.io.her2st import SECTIONS, her2st_slides
from napari_spahgc.view.layers import slide_layers


def her2st_section() -> list[tuple]:
    """napari sample: section C2 (H&E pyramid and spots with their measured genes)."""
    return _layers(("C2",))


def her2st_all_sections() -> list[tuple]:
    """napari sample: sections C2–C6 (only the first visible)."""
    return _layers(SECTIONS)


def _layers(sections: Sequence[str]) -> list[tuple]:
    slides = her2st_slides(sections)
    return [layer for index, slide in enumerate(slides) for layer in slide_layers(slide, visible=index == 0)]
