"""The user's order, each in a fresh process: napari shown and drawn first, then data, then the widgets.

Test modules import the widgets before any viewer exists, which hides crashes of native libraries
loaded after the OpenGL context (triton after Mesa's LLVM segfaulted napari). These runs start the
way a user does, in a subprocess whose exit code and record tell what happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import HER2ST
from napari_spahgc.io.cohort import read_cohort
from napari_spahgc.predict.flow import NO_INTERVALS

SCRIPT = Path(__file__).with_name("viewer_first.py")


def _run(tmp_path: Path, *arguments: str, timeout: float = 900) -> dict:
    record = tmp_path / "record.json"
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(SCRIPT), *arguments, str(record)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"exit code {done.returncode}\n{done.stderr[-4000:]}"
    return json.loads(record.read_text())


def test_open_with_the_reader_then_dock_every_widget_and_train_predict(her2st_cohort, tmp_path):
    rows = [
        {"slide_id": e.slide_id, "image": e.image, "spots": e.spots, "counts": e.counts,
         "pixel_size_um": e.pixel_size_um, "patient": e.patient}
        for e in read_cohort(her2st_cohort) if e.slide_id in ("C2", "C3", "C4")
    ]  # fmt: skip
    cohort = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(cohort, index=False)
    record = _run(tmp_path, "open", str(cohort), str(HER2ST / "her2st_785_genes.txt"))
    # two reference slides: one model, no held-out slide to calibrate intervals on; said once
    assert record["notifications"] == [f"Predicting: {NO_INTERVALS}"]
    assert record["slides"] == ["C2", "C3", "C4"]  # the reader's slides are the widgets' slides
    assert sorted(record["references"]) == ["C2", "C3"]
    n_spots = len(pd.read_csv(rows[2]["spots"], sep="\t"))
    assert record["prediction_shape"][1] == 785 and 0 < record["prediction_shape"][0] <= n_spots
    assert any(name.endswith("predicted") for name in record["visible_layers"])
    assert record["genes_listed"] == 785
    assert record["screenshot_std"] > 5  # a real picture, not a black canvas
    assert record["heavy_modules_loaded"] == []  # torch ran in the worker process only
    assert len(record["layers"]) == 6  # H&E + spots of each slide, opened once


def test_sample_data_then_dock_every_widget(her2st_cohort, tmp_path):
    record = _run(tmp_path, "sample", "-", "-")
    assert record["notifications"] == []
    assert record["slides"] == ["C2"]
    assert record["heavy_modules_loaded"] == []
    assert record["screenshot_std"] > 5
