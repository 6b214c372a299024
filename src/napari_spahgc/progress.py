"""The one progress record that long work yields (Qt-free, torch-free: the viewer process imports it)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units (spots, epochs, slides) and a line of text for a status bar."""

    done: int
    total: int
    text: str = ""


def run_to_end(flow: Generator[Any, None, T]) -> T:
    """Run a progress-yielding generator to its end; return what it returns."""
    while True:
        try:
            next(flow)
        except StopIteration as finished:
            return finished.value
