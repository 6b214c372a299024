"""Generator functions that ``test_worker.py`` runs in worker processes: module-level, as
:func:`~napari_spahgc.run.worker.run_in_child` requires (the child imports them by module and name)."""

from __future__ import annotations

import faulthandler
import os
import time
from pathlib import Path

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.progress import Progress


def count(n: int, delay_s: float = 0.0, marker: str | None = None):
    """Yield ``n`` steps; the marker file records whether the generator was closed or completed."""
    try:
        for i in range(n):
            time.sleep(delay_s)
            yield Progress(i + 1, n, f"step {i + 1}")
        return {"pid": os.getpid(), "steps": n}
    finally:
        if marker:
            Path(marker).write_text("finished")


def ticks(n: int):
    """``n`` steps 20 ms apart: a flow of one argument, as the WorkerProcess runner passes its request."""
    return (yield from count(n, 0.02))


def bad_input(path: str):
    yield Progress(0, 1)
    raise InputError("cannot read this table", path)


def broken():
    yield Progress(0, 1)
    raise ZeroDivisionError("division by zero in a task")


def crash():
    yield Progress(0, 1)
    faulthandler._sigsegv()


def read_region(image, row: int, col: int, size: int):
    yield Progress(0, 1)
    return image.read_region(0, row, col, size, size)


def write_pid_then_wait(pid_file: str):
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)
        yield Progress(0, 1)
