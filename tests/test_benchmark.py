"""The evaluation flow and the benchmark, train → predict command line on real HER2ST sections
(short runs; embedded per spot, quick on legacy ST's few spots)."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import napari_spahgc as ns
from conftest import HER2ST, her2st_table
from napari_spahgc.evaluate.benchmark import METHODS
from napari_spahgc.model.config import PRESETS
from napari_spahgc.model.slide_data import make_folds

PANEL = HER2ST / "her2st_785_genes.txt"


@pytest.fixture
def three_sections(her2st_cohort, tmp_path):
    path = tmp_path / "three.csv"
    her2st_table(["C2", "C3", "C4"]).to_csv(path, index=False)
    return path


def _spahgc(*args: str) -> subprocess.CompletedProcess:
    """The ``spahgc`` console script (``napari_spahgc.cli:main``) in a new process."""
    command = [sys.executable, "-c", "from napari_spahgc.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True)


def _evaluated(request: ns.EvaluateRequest) -> tuple[dict, list[ns.Progress]]:
    """The report of the evaluation flow and the Progress records it yielded."""
    records, flow = [], ns.evaluate(request)
    while True:
        try:
            records.append(next(flow))
        except StopIteration as finished:
            return finished.value, records


def test_benchmark_writes_its_report(three_sections, tmp_path):
    out = tmp_path / "bench"
    methods = [m for m in METHODS if m != "spahgc_paper"]  # the paper's 200 epochs: in-process below
    result = _spahgc("benchmark", str(three_sections), "--genes", str(PANEL), "--out", str(out),
                     "--epochs", "3", "--device", "cpu", "--methods", ",".join(methods), "--mode", "spot")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == methods
    for method in report["methods"].values():
        assert set(method) >= {"folds", "pcc_mean", "pcc_sd", "pcc_top_mean", "rmse_mean"}
        assert list(method["folds"]) == ["C2", "C3", "C4"]
        assert all(set(f) >= {"pcc", "pcc_top50", "rmse", "seconds"} for f in method["folds"].values())
    assert report["protocol"]["folds"] == "leave-one-slide-out" and report["peak_memory_mb"] > 0
    assert report["methods"]["ridge"]["pcc_mean"] > 0.05  # real signal on real data
    per_gene = pd.read_csv(out / "per_gene.csv")
    assert (
        set(per_gene.columns) == {"method", "fold", "gene", "pcc"} and len(per_gene) == len(methods) * 3 * 785
    )
    markdown = (out / "report.md").read_text()
    assert "| spahgc |" in markdown and "- Tuning, ridge alpha: 10, 31.6228" in markdown
    assert "spahgc / best tuned baseline" in markdown and "## What each fold chose" in markdown
    assert (out / "pcc_per_fold.png").stat().st_size > 5000
    # the cohort names each section's labels: every method's domains are scored, settings chosen inner
    for method in report["methods"].values():
        # a method is scored when it has inner-validation predictions: every baseline; SpaHGC when its
        # members held training sections out (not here: two training sections per fold)
        inner = method["kind"] == "baseline" or all(f["members"] for f in method["folds"].values())
        assert ("domain_ari_mean" in method) == inner
        for fold in method["folds"].values() if inner else ():
            assert -1 <= fold["domain_ari"] <= 1 and fold["domain_count"] == 7
            assert fold["domain_spatial_weight"] in (0, 0.25, 0.5, 0.75, 1)
            assert len(fold["domain_inner_ari"]) == 5  # one mean per weight, on the training sections
    measured = report["domains"]["measured"]
    assert list(measured) == ["C2", "C3", "C4"] and all(m["ari"] > 0.05 for m in measured.values())
    assert "## Tissue domains" in markdown and "| measured expression |" in markdown


def test_every_method_records_what_each_fold_chose(three_sections, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS["paper"], "epochs", 2)  # the paper's configuration, shortened
    slides = ns.load_cohort(three_sections)
    request = ns.EvaluateRequest(
        slides, ns.EmbedRequest(slides, "efficientnet-lite0", device="cpu", mode="spot"), ns.GeneChoice.from_file(PANEL),
        tmp_path / "out", config=ns.SpaHGCConfig.from_options({"epochs": 2}, device="cpu"),
        models=tmp_path / "models",
    )  # fmt: skip
    report, records = _evaluated(request)
    assert list(report["methods"]) == list(METHODS)
    scored = [p for p in records if p.stage == "evaluate"]
    assert [p.done for p in scored] == list(range(1, 3 * len(METHODS) + 1))
    assert all(p.total == 3 * len(METHODS) and "pcc" in p.values for p in scored)
    for name, method in report["methods"].items():
        for fold, record in method["folds"].items():
            assert record in [p.values for p in scored]  # each record was yielded as it was scored
            if name.startswith("spahgc"):
                preset = "paper" if name == "spahgc_paper" else "default"
                assert record["preset"] == preset and record["epochs_run"] == 2
                model = ns.load_model(tmp_path / "models" / fold / preset)  # each fold's model is kept
                assert fold not in model.metadata.training_slides and len(model.metadata.training_slides) == 2
                assert len(model.genes) == 785 and model.metadata.validation["epochs_run"] == 2
            else:
                assert record["chosen"] and len(record["inner_pcc"]) > 1  # chose among candidates
    # two training slides per fold: a single member trained on both, for both presets (no validation)
    assert all(
        f["members"] == [] and f["validation_pcc"] is None
        for f in report["methods"]["spahgc"]["folds"].values()
    )
    assert report["protocol"]["tuning"]["knn k"][:2] == [5, 10]
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())


def test_worker_processes_give_the_serial_results(three_sections, tmp_path):
    """``jobs=2``: the units run in two spawned single-threaded processes; every fold's record and the
    per-gene table come back in fold order and agree with the serial run (up to the float rounding
    one thread instead of two may change)."""
    slides = ns.load_cohort(three_sections)
    embeddings = ns.run_to_end(
        ns.embed(ns.EmbedRequest(slides, "efficientnet-lite0", device="cpu", mode="spot"))
    )
    config = ns.SpaHGCConfig.from_options({"epochs": 2}, device="cpu")
    genes = ns.GeneChoice.from_file(PANEL)
    methods = ["spahgc", "ridge", "blend_spatial"]
    reports = {}
    for jobs in (1, 2):
        request = ns.EvaluateRequest(
            slides, embeddings, genes, tmp_path / f"jobs{jobs}", methods, config, jobs
        )
        reports[jobs] = ns.run_to_end(ns.evaluate(request))
    assert "jobs" not in reports[1] and reports[2]["jobs"] == 2 and reports[2]["peak_worker_memory_mb"] > 100
    for name, serial in reports[1]["methods"].items():
        parallel = reports[2]["methods"][name]
        assert list(parallel["folds"]) == ["C2", "C3", "C4"]
        tolerance = 2e-3 if name == "spahgc" else 1e-5
        for fold, record in serial["folds"].items():
            assert parallel["folds"][fold]["pcc"] == pytest.approx(record["pcc"], abs=tolerance)
            if name != "spahgc":
                assert parallel["folds"][fold]["chosen"] == record["chosen"]
    tables = [pd.read_csv(tmp_path / f"jobs{jobs}" / "per_gene.csv") for jobs in (1, 2)]
    assert tables[0][["method", "fold", "gene"]].equals(tables[1][["method", "fold", "gene"]])


def test_spahgc_options_need_the_spahgc_method_and_methods_must_exist(three_sections, tmp_path):
    result = _spahgc(
        "benchmark", str(three_sections), "--out", str(tmp_path), "--methods", "ridge", "--set", "q=3"
    )
    assert result.returncode == 2 and "apply to the 'spahgc' method" in result.stderr
    result = _spahgc("benchmark", str(three_sections), "--out", str(tmp_path), "--methods", "nonsense")
    assert result.returncode == 2 and "unknown method(s) nonsense; choose from spahgc" in result.stderr


def test_train_then_predict_from_the_command_line(three_sections, tmp_path):
    model = tmp_path / "model"
    result = _spahgc("train", str(three_sections), "--genes", str(PANEL), "--out", str(model), "--epochs", "3",
                     "--device", "cpu", "--mode", "spot")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((model / "config.json").read_text())
    assert config["encoder"]["name"] == "efficientnet-lite0" and len(config["genes"]) == 785
    assert config["patch"] == {"size": 224, "um_per_px": 0.5}
    assert config["encoder"]["embedding_mode"] == "spot"
    result = _spahgc(  # no --mode: the model's own (spot)
        "predict", str(model), str(three_sections), "--out", str(tmp_path / "pred"), "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    adata = ad.read_h5ad(tmp_path / "pred" / "C2.h5ad")
    assert adata.n_vars == 785 and adata.n_obs == 187 and "measured" in adata.layers
    assert np.isfinite(adata.X).all() and adata.uns["napari_spahgc"]["kind"] == "SpaHGC prediction"
    assert (
        _spahgc("predict", str(tmp_path), str(three_sections), "--out", str(tmp_path / "x")).returncode == 2
    )


def test_folds_leave_out_a_patient_when_there_are_two():
    def slide(name, patient):
        return ns.Slide(name, pd.Index(["a"]), np.zeros((1, 2)), patient=patient)

    assert make_folds([slide("A", "p1"), slide("B", "p1")]) == ("leave-one-slide-out", [["A"], ["B"]])
    scheme, folds = make_folds([slide("A", "p1"), slide("B", "p2"), slide("C", "p1")])
    assert scheme == "leave-one-patient-out" and folds == [["A", "C"], ["B"]]


def test_the_benchmark_runs_every_registered_baseline_beside_spahgc():
    from napari_spahgc.evaluate.baselines import BASELINES

    assert list(METHODS) == ["spahgc", "spahgc_paper", *BASELINES]
    assert list(BASELINES) == ["ridge", "knn", "ridge_spatial", "knn_spatial", "blend_spatial", "mlp"]
