"""Prediction intervals: the split-conformal arithmetic on synthetic data drawn with a known noise
scale, then a model trained on the real HER2ST sections C2–C5 whose intervals are scored on the
held-out C6 (a band, not a value), stored compactly in the h5ad and read back by
``prediction_interval``; bad levels and models without a calibration."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

import napari_spahgc as ns
from conftest import HER2ST_COHORT
from napari_spahgc.base.conformal import (
    Calibration,
    check_level,
    conformal_quantile,
    coverage_and_width,
    interval,
    scale,
)
from napari_spahgc.io.expression import log_cpm
from napari_spahgc.io.intervals import has_intervals, interval_levels
from napari_spahgc.model.slide_data import slide_data
from napari_spahgc.view.explain import reference_patches, reference_table, write_mosaic


def test_the_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 10.0)[:, None]  # nine calibration spots
    assert conformal_quantile(scores, 0.9)[0] == 9  # ⌈10 · 0.9⌉ = the 9th smallest
    assert conformal_quantile(scores, 0.5)[0] == 5
    assert np.isinf(conformal_quantile(scores, 0.95)[0])  # rank 10 of 9: no finite guarantee


@pytest.mark.parametrize("level", [0, 1, -0.1, 1.5, "x"])
def test_a_level_outside_zero_one_is_refused(level):
    with pytest.raises(ns.InputError, match=r"outside \(0, 1\)|not a number"):
        check_level(level)


def _draw(rng, n: int, genes: int = 20):
    """Predictions, the references' deviation d and truth = prediction + noise of sd d (≥ 0)."""
    prediction = rng.uniform(2, 6, (n, genes))
    deviation = rng.uniform(0.1, 2.0, (n, genes))
    truth = np.maximum(prediction + deviation * rng.standard_normal((n, genes)), 0)
    return truth, prediction, deviation


def test_intervals_cover_at_their_level_and_widen_where_references_disagree():
    rng = np.random.default_rng(0)
    truth, prediction, deviation = _draw(rng, 3000)
    calibration = Calibration.fit(truth, prediction, deviation, groups=np.arange(3000) % 3)
    widths = {mix: record["width"] for mix, record in calibration.inner["by_mix"].items()}
    assert set(widths) == {"0", "0.5", "1"} and calibration.mix == float(min(widths, key=widths.get))
    assert calibration.mix < 1  # the noise follows each gene's own deviation, not the spot's mean

    new_truth, new_prediction, new_deviation = _draw(rng, 4000)
    sigma = scale(new_deviation, new_deviation.mean(1), calibration.mix)
    q = calibration.quantiles([0.9])[:, 0]
    lower, upper = interval(new_prediction, sigma, q)
    coverage, width = coverage_and_width(new_truth, lower, upper)
    assert 0.885 < coverage < 0.915
    hard = new_deviation > 1.5
    assert (upper - lower)[hard].mean() > 1.5 * (upper - lower)[new_deviation < 0.5].mean()
    # a constant width per gene (σ = 1, calibrated on the same spots) covers as much, but wider
    constant = conformal_quantile(np.abs(truth - prediction), 0.9)
    c_coverage, c_width = coverage_and_width(new_truth, *interval(new_prediction, np.ones((1, 1)), constant))
    assert 0.885 < c_coverage < 0.915 and width < c_width


@pytest.fixture(scope="module")
def her2st(her2st_model, her2st_c6_predictions):
    """C2–C6 embedded per spot (the model's cache), the model trained on C2–C5 (``her2st_model``: four
    members, each holding one section out) and C6 predicted with intervals (``her2st_c6_predictions``)."""
    slides = ns.load_cohort(HER2ST_COHORT)
    embeddings = ns.run_to_end(
        ns.embed(ns.EmbedRequest(slides, "efficientnet-lite0", device="cpu", mode="spot"))
    )
    return slides, embeddings, her2st_model, ad.read_h5ad(her2st_c6_predictions)


def test_intervals_on_a_held_out_section_cover_near_their_level(her2st):
    *_, adata = her2st
    lower, upper = ns.prediction_interval(adata)
    assert lower.shape == upper.shape == adata.shape and np.all(lower >= 0) and np.all(upper >= lower)
    measured = adata.layers["measured"]
    coverage, width = coverage_and_width(measured, lower, upper)
    assert 0.85 < coverage < 0.95, coverage  # C6 never reached training, selection or calibration
    assert interval_levels(adata) == (0.9, tuple(round(0.5 + 0.01 * i, 2) for i in range(50)))
    narrow = coverage_and_width(measured, *ns.prediction_interval(adata, 0.8))
    assert narrow[0] < coverage and narrow[1] < width
    # the uncertainty ranks the spots' errors
    error = np.abs(measured - adata.X).mean(axis=1)
    assert spearmanr(adata.obs["uncertainty"], error).statistic > 0.2
    # a few genes give the same columns as all of them
    genes = list(adata.var_names[[5, 0, 300]])
    part = ns.prediction_interval(adata, 0.8, genes=genes)
    np.testing.assert_array_equal(part[1], ns.prediction_interval(adata, 0.8)[1][:, [5, 0, 300]])
    # compact: the references and quantiles, no spots × genes array besides X and the measured values
    assert set(adata.layers) == {"measured"} and adata.varm["interval_quantile"].shape == (785, 50)
    assert adata.obsm["spahgc_references"].shape == (adata.n_obs, 7)
    assert set(adata.uns["spahgc_references"]["slide_id"]) <= {"C2", "C3", "C4", "C5"}


def test_the_model_folder_keeps_its_calibration(her2st):
    *_, model_dir, adata = her2st
    model = ns.load_model(model_dir)
    record = model.metadata.calibration
    assert model.calibration.scores.shape == (record["kept_spots"], 785) and record["spots"] > 600
    assert record["mix"] == model.calibration.mix == adata.uns["napari_spahgc"]["intervals"]["mix"]
    np.testing.assert_array_equal(
        model.calibration.quantiles([0.9])[:, 0], adata.varm["interval_quantile"][:, 40]
    )


def test_another_level_is_asked_for_at_prediction(her2st):
    slides, embeddings, model_dir, adata = her2st
    with pytest.raises(ns.InputError, match=r"no intervals at level 0\.925"):
        ns.prediction_interval(adata, 0.925)
    request = ns.PredictRequest(model_dir, slides[4:], embeddings, device="cpu", level=0.925)
    predicted = ns.run_to_end(ns.predict(request)).predictions["C6"]
    assert interval_levels(predicted)[0] == 0.925
    wide = ns.prediction_interval(predicted)
    assert np.all(wide[1] >= ns.prediction_interval(predicted, 0.9)[1])
    with pytest.raises(ns.InputError, match=r"outside \(0, 1\)"):
        ns.run_to_end(ns.predict(dataclasses.replace(request, level=1.0)))


def test_a_model_without_calibration_predicts_without_intervals_and_says_so_once(her2st, tmp_path):
    slides, embeddings, model_dir, _ = her2st
    model = ns.load_model(model_dir)
    model.calibration, model.metadata.calibration = None, {}  # as a folder from before intervals
    model.save(tmp_path / "earlier")
    records, flow = (
        [],
        ns.predict(ns.PredictRequest(tmp_path / "earlier", slides[3:], embeddings, device="cpu")),
    )
    while True:
        try:
            records.append(next(flow))
        except StopIteration as finished:
            result = finished.value
            break
    assert [p.warning for p in records if p.warning] == [
        "this model has no calibration for prediction intervals (saved before intervals existed, or "
        "trained without held-out slides): predicting without intervals"
    ]
    adata = result.predictions["C6"]
    assert not has_intervals(adata) and "uncertainty" in adata.obs
    with pytest.raises(ns.InputError, match="these predictions have no intervals"):
        ns.prediction_interval(adata)


def test_each_gene_records_its_mean_width_and_coverage(her2st):
    *_, adata = her2st
    lower, upper = ns.prediction_interval(adata)
    np.testing.assert_allclose(adata.var["interval_width"], (upper - lower).mean(axis=0), rtol=1e-4)
    inside = (adata.layers["measured"] >= lower) & (adata.layers["measured"] <= upper)
    np.testing.assert_allclose(adata.var["coverage"], inside.mean(axis=0), rtol=1e-5)


def test_why_a_spot_was_predicted_names_its_references_and_their_measured_values(her2st):
    slides, embeddings, model_dir, adata = her2st
    spot, gene = str(adata.obs_names[10]), "SCD"
    frame = reference_table(adata, spot, gene)
    assert len(frame) == 7 and set(frame["slide_id"]) <= {"C2", "C3", "C4", "C5"}
    assert np.all(np.diff(frame["similarity"]) <= 1e-6)  # most similar first
    assert frame["attention"].sum() == pytest.approx(1.0, abs=1e-4)  # CNAP's softmax over the seven
    by_id = {s.slide_id: s for s in slides}
    for _, ref in frame.iterrows():  # each reference's measured value is that spot's own, in its slide
        reference = by_id[ref.slide_id]
        measured = log_cpm(reference.expression, [gene]).X[reference.spot_ids.get_loc(ref.spot_id), 0]
        assert ref.measured == pytest.approx(measured, abs=1e-4)
        np.testing.assert_allclose(
            (ref.x, ref.y), reference.centers_px[reference.spot_ids.get_loc(ref.spot_id)], atol=0.01
        )
    low, high = frame.attrs["interval"]
    assert low <= frame.attrs["prediction"] <= high
    model = ns.load_model(model_dir)  # the same from Python, predicting the slide
    from_python = model.explain(slide_data(slides[4], embeddings["C6"], None), spot, gene)
    pd.testing.assert_frame_equal(from_python, frame, check_exact=False, atol=1e-5)
    patches, notes = reference_patches(adata, frame)
    assert notes == [] and all(p.shape == (112, 112, 3) and p.std() > 5 for p in patches)  # real tissue


def test_unknown_spots_and_genes_name_close_matches_and_gone_images_are_said(her2st, tmp_path):
    *_, adata = her2st
    spot = str(adata.obs_names[0])
    with pytest.raises(
        ns.InputError, match=rf"no spot '{spot}9' among the slide's 178 spots; close: .*{spot}"
    ):
        reference_table(adata, spot + "9", "SCD")
    with pytest.raises(ns.InputError, match="gene 'SCDD' was not predicted; close: SCD"):
        reference_table(adata, spot, "SCDD")
    moved = adata.copy()
    images = moved.uns["spahgc_references"]["images"]
    images["image"] = np.where(images["slide_id"] == "C2", str(tmp_path / "moved.tif"), images["image"])
    frame = reference_table(moved, spot, "SCD")
    patches, notes = reference_patches(moved, frame)
    assert notes == [f"C2: its image is gone ({tmp_path / 'moved.tif'})"]
    assert all((p is None) == (slide == "C2") for p, slide in zip(patches, frame["slide_id"], strict=True))
    write_mosaic(tmp_path / "why.png", frame, patches)  # the rest is still shown
    assert (tmp_path / "why.png").stat().st_size > 10_000


def test_explain_from_the_command_line(her2st, tmp_path):
    *_, model_dir, adata = her2st
    spot = str(adata.obs_names[10])
    command = [sys.executable, "-c", "from napari_spahgc.cli import main; main()", "explain", str(model_dir),
               str(HER2ST_COHORT), "--slide", "C6", "--spot", spot, "--gene", "SCD", "--out", str(tmp_path / "why.png"),
               "--device", "cpu", "--cache", str(tmp_path / "cache")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{spot}, SCD: predicted" in done.stdout and "similarity" in done.stdout
    assert (tmp_path / "why.png").stat().st_size > 10_000
    bad = subprocess.run([*command[:8], "--spot", "99x99"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no spot '99x99'" in bad.stderr and "Traceback" not in bad.stderr


def test_a_bad_level_on_the_command_line_exits_2_before_any_work(her2st, tmp_path):
    *_, model_dir, _ = her2st
    for command in (
        ["predict", str(model_dir), str(HER2ST_COHORT), "--out", str(tmp_path / "p"), "--level", "1.5"],
        ["benchmark", str(HER2ST_COHORT), "--n-hvg", "10", "--out", str(tmp_path / "b"), "--level", "0"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", "from napari_spahgc.cli import main; main()", *command],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and "outside (0, 1)" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "p").exists() and not (tmp_path / "b").exists()
