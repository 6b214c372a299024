"""The one progress record that long work yields (Qt-free, torch-free: the viewer process imports it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units (spots, epochs, slides) and a line of text for a status bar."""

    done: int
    total: int
    text: str = ""
