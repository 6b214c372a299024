"""The progress record long work yields: a value, so it can cross to the viewer process and be compared."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from napari_spahgc.base.progress import Progress, run_to_end


def test_progress_is_an_immutable_value():
    progress = Progress(3, 10, "embedding C2")
    assert progress == Progress(3, 10, "embedding C2") and progress != Progress(4, 10, "embedding C2")
    assert Progress(0, 1).text == ""
    assert pickle.loads(pickle.dumps(progress)) == progress  # what the worker process sends
    with pytest.raises(dataclasses.FrozenInstanceError):
        progress.done = 4  # type: ignore[misc]
    assert len({progress, Progress(3, 10, "embedding C2")}) == 1
    epoch = Progress(2, 5, "epoch 2/5", "train", {"loss": 0.5, "validation_pcc": 0.2})
    assert pickle.loads(pickle.dumps(epoch)) == epoch  # a stage's values cross with it
    warned = Progress(0, 10, "loading", "embed", warning="a long run")
    assert pickle.loads(pickle.dumps(warned)).warning == "a long run" and Progress(0, 1).warning == ""
    assert epoch != Progress(2, 5, "epoch 2/5", "train", {"loss": 0.6, "validation_pcc": 0.2})
    assert hash(epoch) == hash(
        Progress(2, 5, "epoch 2/5", "train", {"loss": 0.6})
    )  # values: compared, not hashed


def test_run_to_end_returns_the_result_and_hands_on_every_record():
    def flow():
        yield Progress(0, 2, "start")
        yield Progress(2, 2, "done", "embed", {"slide_id": "C2"})
        return "result"

    seen = []
    assert run_to_end(flow(), seen.append) == "result"
    assert [p.done for p in seen] == [0, 2] and seen[-1].values == {"slide_id": "C2"}
    assert run_to_end(flow()) == "result"
