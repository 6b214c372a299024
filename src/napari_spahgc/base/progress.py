"""The one progress record that every flow yields (Qt-free, torch-free: the viewer process imports it)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units (spots, epochs, blocks, slides) of a ``stage`` (embed, train, predict,
    evaluate), a line of text for a status bar, the stage's own ``values`` (an epoch's loss and
    validation PCC; an embedded slide's id, cache file and mode), and a ``warning`` for the user, shown
    by every front end as it comes (the CLI on stderr, a widget as a notification): e.g. a long
    per-spot embedding announced before it starts."""

    done: int
    total: int
    text: str = ""
    stage: str = ""
    values: Mapping[str, Any] = field(default_factory=dict, hash=False)  # a dict: not hashed, compared
    warning: str = ""


def run_to_end(flow: Generator[Any, None, T], each: Callable[[Any], object] | None = None) -> T:
    """Run a progress-yielding generator to its end, handing every record to ``each`` when given;
    return what it returns."""
    while True:
        try:
            record = next(flow)
        except StopIteration as finished:
            return finished.value
        if each is not None:
            each(record)
