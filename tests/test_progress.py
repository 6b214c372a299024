"""The progress record long work yields: a value, so it can cross to the viewer process and be compared."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from napari_spahgc.progress import Progress


def test_progress_is_an_immutable_value():
    progress = Progress(3, 10, "embedding C2")
    assert progress == Progress(3, 10, "embedding C2") and progress != Progress(4, 10, "embedding C2")
    assert Progress(0, 1).text == ""
    assert pickle.loads(pickle.dumps(progress)) == progress  # what the worker process sends
    with pytest.raises(dataclasses.FrozenInstanceError):
        progress.done = 4  # type: ignore[misc]
    assert len({progress, Progress(3, 10, "embedding C2")}) == 1
