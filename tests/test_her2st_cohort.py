"""The real HER2ST sections through a cohort table, and ``spahgc info`` on them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from conftest import HER2ST, SECTIONS
from napari_spahgc import read_cohort


def _expected_ids(section: str) -> set[str]:
    spots = pd.read_csv(HER2ST / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    spot_ids = set(spots["x"].astype(str) + "x" + spots["y"].astype(str))
    counts = pd.read_csv(HER2ST / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0, usecols=[0])
    return spot_ids & set(counts.index.astype(str))


def test_all_five_sections_load(her2st_cohort):
    entries = read_cohort(her2st_cohort)
    assert [e.slide_id for e in entries] == list(SECTIONS)
    for entry in entries:
        slide = entry.load()
        expected = _expected_ids(entry.slide_id)
        assert slide.n_spots == len(expected)
        assert set(slide.spot_ids) == expected
        assert slide.expression is not None
        assert list(slide.expression.obs_names) == list(slide.spot_ids)
        assert slide.n_genes > 15000
        rows, cols = slide.image.shape
        assert 9000 < rows < 10500 and 9000 < cols < 10500
        x, y = slide.centers_px.T
        assert ((x >= 0) & (x < cols) & (y >= 0) & (y < rows)).all()
        assert slide.pixel_size_um == 0.735 and slide.pixel_size_source == "given by the user"
        assert np.isclose(slide.spot_diameter_px, 100 / 0.735)  # legacy ST spots are 100 µm across
        assert slide.image.n_levels >= 4 and max(slide.image.levels[-1].shape[:2]) <= 1024


def test_spot_centres_hit_tissue(her2st_cohort):
    """Geometry check on the real image: spot centres lie on tissue (darker than the glass)."""
    slide = read_cohort(her2st_cohort)[0].load()
    level = slide.image.level_for_downsample(8)
    step = slide.image.downsamples[level]
    pixels = np.asarray(slide.image.levels[level])
    rows = np.clip((slide.centers_px[:, 1] / step).astype(int), 0, pixels.shape[0] - 1)
    cols = np.clip((slide.centers_px[:, 0] / step).astype(int), 0, pixels.shape[1] - 1)
    at_spots = pixels[rows, cols].mean()
    assert at_spots < pixels.mean() - 20


def test_info_cli_json(her2st_cohort):
    result = subprocess.run(
        [sys.executable, "-m", "napari_spahgc.cli", "info", str(her2st_cohort), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    records = json.loads(result.stdout)
    assert [r["slide_id"] for r in records] == list(SECTIONS)
    for record in records:
        assert set(record) >= {
            "slide_id",
            "n_spots",
            "n_genes",
            "image_shape",
            "pixel_size_um",
            "n_levels",
            "patient",
        }
        assert record["n_spots"] == len(_expected_ids(record["slide_id"]))
        assert record["patient"] == "C" and record["pixel_size_um"] == 0.735
        assert len(record["image_shape"]) == 2


def test_info_cli_table(her2st_cohort):
    result = subprocess.run(
        [sys.executable, "-m", "napari_spahgc.cli", "info", str(her2st_cohort)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["slide_id", "n_spots", "n_genes"]
    assert [line.split()[0] for line in lines[1:]] == list(SECTIONS)


def test_slides_without_their_counts_keep_the_same_spots(her2st_cohort):
    from napari_spahgc.io.spots import read_count_ids, read_counts

    entry = read_cohort(her2st_cohort)[0]
    assert read_count_ids(entry.counts).equals(read_counts(entry.counts).obs_names)
    full, spots_only = entry.load(), entry.load(with_expression=False)
    assert spots_only.expression is None and spots_only.spot_ids.equals(full.spot_ids)
    np.testing.assert_array_equal(spots_only.centers_px, full.centers_px)
