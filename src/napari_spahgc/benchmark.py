"""Leave-one-out benchmark of SpaHGC against tuned baselines, on the same embeddings and genes in one run.

Folds leave out one patient when the cohort names at least two patients, else one slide. Inside a
fold the held-out slides never reach gene selection, scaling, training, tuning, model selection or
the reference bank (guarded by :func:`check_no_leakage`). Every baseline tunes its hyperparameters
by inner cross-validation on the fold's training slides (:mod:`napari_spahgc.baselines`); SpaHGC
chooses its members' epochs on held-out training slides; the report records what each fold chose.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import dataset
from .baselines import BASELINES, Baseline, shared_candidates
from .dataset import SlideData, make_folds
from .errors import InputError
from .evaluate import TOP_GENES, most_variable, score
from .report import write_benchmark_report
from .slide import Slide


class LeakageError(Exception):
    """A fold's held-out data reached its training side: the benchmark refuses to score it."""


@dataclass(frozen=True)
class Fold:
    """What a method may know of a fold besides its data: the genes (chosen on the training slides),
    the seed, the device and SpaHGC's options (``--set``, for ``spahgc`` only)."""

    genes: Sequence[str]
    seed: int = 0
    device: str = "auto"
    spahgc_options: Mapping = field(default_factory=dict)


Outcome = tuple[np.ndarray, dict]  # the test slide's prediction and what the training slides chose
Method = Callable[[Sequence[SlideData], SlideData, Fold], Outcome]


def _spahgc(preset: str, takes_options: bool) -> Method:
    """SpaHGC with ``preset`` (and the fold's ``--set`` options when ``takes_options``)."""

    def run(train: Sequence[SlideData], test: SlideData, fold: Fold) -> Outcome:
        from .trainer import fit_predict_fold

        options = dict(fold.spahgc_options) if takes_options else {}
        prediction, model = fit_predict_fold(
            train, test, seed=fold.seed, device=fold.device, genes=fold.genes, preset=preset, **options
        )
        validation = model.metadata.validation
        members = [
            {k: m[k] for k in ("validation_slides", "best_epoch")} for m in validation.get("members", [])
        ]
        return prediction, {
            "preset": preset, "epochs_run": validation["epochs_run"], "members": members,
            "validation_pcc": validation.get("pcc"), "smoothing": model.config.graph.smoothing,
        }  # fmt: skip

    return run


def _baseline(run: Baseline) -> Method:
    """A baseline as a benchmark method: it needs only the fold's data."""

    def method(train: Sequence[SlideData], test: SlideData, _fold: Fold) -> Outcome:
        tuned = run(train, test)
        return tuned.prediction, {"chosen": tuned.chosen, "inner_pcc": tuned.inner_pcc}

    return method


#: Every method the benchmark runs, by name: SpaHGC (ours, and the paper's configuration) and each
#: baseline of :data:`BASELINES`.
METHODS: dict[str, Method] = {
    "spahgc": _spahgc("default", takes_options=True),
    "spahgc_paper": _spahgc("paper", takes_options=False),
    **{name: _baseline(run) for name, run in BASELINES.items()},
}


def check_no_leakage(
    train: Sequence[SlideData], test: Sequence[SlideData], gene_slides: Sequence[str]
) -> None:
    """Held-out slides must share neither slide id nor (slide, spot) id with the training data, and
    must not be among the slides the genes were chosen on (``gene_slides``)."""
    test_ids = {s.slide_id for s in test}
    if {s.slide_id for s in train} & test_ids:
        raise LeakageError(
            f"held-out slides {sorted({s.slide_id for s in train} & test_ids)} are in the training data"
        )
    if set(gene_slides) & test_ids:
        raise LeakageError(f"the genes were chosen on held-out slides {sorted(set(gene_slides) & test_ids)}")
    train_spots = {(s.slide_id, spot) for s in train for spot in s.spot_ids}
    if any((s.slide_id, spot) in train_spots for s in test for spot in s.spot_ids):
        raise LeakageError("held-out spots are in the training data")


def fold_data(
    slides: Sequence[Slide], embeddings: Mapping[str, np.ndarray], held_out: Sequence[str], panel, n_hvg
) -> tuple[list[str], list[SlideData], list[SlideData]]:
    """One fold's genes (chosen on its training slides only), training and test data, leakage-checked."""
    training = [s for s in slides if s.slide_id not in held_out]
    by_id = {s.slide_id: s for s in slides}
    genes, train, tests = dataset.fold_data(training, embeddings, panel, n_hvg, [by_id[i] for i in held_out])
    check_no_leakage(train, tests, gene_slides=[s.slide_id for s in training])
    return genes, train, tests


def run_benchmark(
    slides: Sequence[Slide],
    embeddings: Mapping[str, np.ndarray],
    out_dir: str | Path,
    panel: Sequence[str] | None = None,
    n_hvg: int | None = None,
    methods: Sequence[str] = tuple(METHODS),
    seed: int = 0,
    device: str = "auto",
    protocol: Mapping | None = None,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    **spahgc_options,
) -> dict:
    """Run every fold and method; write ``report.json``, ``report.md``, ``per_gene.csv`` and
    ``pcc_per_fold.png`` to ``out_dir``; return the report.

    ``jobs`` > 1: the work runs in that many single-threaded worker processes, one unit at a time
    each (a SpaHGC method on one held-out slide, or every baseline on it, which share candidates);
    the genes, data and leakage check of each fold are made here first, as with ``jobs`` 1."""
    check_methods(methods, spahgc_options)
    scheme, folds = make_folds(slides)
    units, test_genes = [], {}
    for held_out in folds:
        genes, train, tests = fold_data(slides, embeddings, held_out, panel, n_hvg)
        top = most_variable([s.expression for s in train])
        for test in tests:
            test_genes[test.slide_id] = genes
            fold = Fold(genes, seed, device, spahgc_options)
            units += [(group, train, test, top, fold) for group in _unit_methods(methods)]
    outcomes = {}
    for test_id, method, record, per_gene in _run_units(units, jobs):
        outcomes[method, test_id] = record, per_gene
        log(f"{test_id}  {method:<14} PCC {record['pcc']:.4f}  top-{TOP_GENES} "
            f"{record[f'pcc_top{TOP_GENES}']:.4f}  RMSE {record['rmse']:.3f}  {record['seconds']:.1f} s")  # fmt: skip
    results, per_gene_rows = _tabulate(outcomes, test_genes, methods)
    n_genes = {test_id: len(genes) for test_id, genes in test_genes.items()}
    report = {
        "methods": results,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "protocol": _protocol(scheme, folds, panel, n_hvg, n_genes, seed, spahgc_options, protocol),
    }
    if jobs > 1:
        worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report.update(jobs=jobs, peak_worker_memory_mb=round(worker_peak, 1))
    write_benchmark_report(Path(out_dir), report, per_gene_rows)
    return report


def _tabulate(outcomes: dict, test_genes: dict, methods: Sequence[str]) -> tuple[dict, list]:
    """Per method its folds' records (folds in order, whatever order they finished in) and summary;
    and the per-gene rows (method, held-out slide, gene, PCC)."""
    results: dict[str, dict] = {m: {"folds": {}} for m in methods}
    per_gene_rows = []
    for test_id, genes in test_genes.items():
        for method in methods:
            record, per_gene = outcomes[method, test_id]
            results[method]["folds"][test_id] = record
            per_gene_rows += [(method, test_id, g, v) for g, v in zip(genes, per_gene, strict=True)]
    for summary in results.values():
        _summarise(summary)
    return results, per_gene_rows


def default_jobs(device: str) -> int:
    """Worker processes for :func:`run_benchmark`: one per core this process may use on CPU (SpaHGC's
    small graphs train as fast on one thread as on two), one with CUDA (the GPU is shared)."""
    from ._device import default_threads, resolve_device

    return 1 if resolve_device(device).type == "cuda" else default_threads()


def _unit_methods(methods: Sequence[str]) -> list[tuple[str, ...]]:
    """The methods as units of work for one held-out slide, longest first: each SpaHGC method alone,
    the baselines together (they share ridge's and kNN's candidates)."""
    spahgc = sorted((m for m in methods if m.startswith("spahgc")), key=lambda m: m != "spahgc_paper")
    baselines = tuple(m for m in methods if not m.startswith("spahgc"))
    return [(m,) for m in spahgc] + ([baselines] if baselines else [])


def _run_units(units: list, jobs: int) -> Iterator[tuple[str, str, dict, np.ndarray]]:
    """(held-out slide, method, record, per-gene PCC) of every method of every unit, as they finish:
    here one by one, or in ``jobs`` spawned single-threaded processes (all stopped if this stops)."""
    if jobs <= 1:
        for unit in units:
            yield from _run_unit(unit)
        return
    pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(units)), initializer=_single_threaded)
    try:
        for outcomes in pool.imap_unordered(_run_unit_list, units):
            yield from outcomes
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _run_unit(unit) -> Iterator[tuple[str, str, dict, np.ndarray]]:
    methods, train, test, top, fold = unit
    with shared_candidates():
        for method in methods:
            yield (test.slide_id, method, *_score(method, train, test, top, fold))


def _run_unit_list(unit) -> list[tuple[str, str, dict, np.ndarray]]:
    return list(_run_unit(unit))


def _single_threaded() -> None:
    """A worker process's set-up: one thread for torch and for numpy's BLAS and OpenMP pools."""
    import torch
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    threadpool_limits(1)


def check_methods(methods: Sequence[str], spahgc_options: Mapping) -> None:
    """Every method known; SpaHGC options only with the ``spahgc`` method they apply to."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if spahgc_options and "spahgc" not in methods:
        raise InputError(
            "SpaHGC options (--set, --epochs) apply to the 'spahgc' method, which --methods leaves out"
        )


def _protocol(scheme, folds, panel, n_hvg, n_genes, seed, spahgc_options, extra) -> dict:
    from . import baselines

    return {
        "folds": scheme,
        "held_out": folds,
        "genes": "panel" if panel is not None else f"top {n_hvg} HVGs per training slide, intersected",
        "n_genes": n_genes,
        "targets": "log1p(counts / spot total × 1e6) on the fold's genes",
        "seed": seed,
        **METRICS,
        "tuning": {
            "inner folds": "leave one training patient out (≥ 2 patients), else one training slide",
            "ridge alpha": list(baselines.RIDGE_ALPHAS),
            "knn k": list(baselines.KNN_KS),
            "spatial self weight": list(baselines.SELF_WEIGHTS),
            "blend ridge weight": list(baselines.BLEND_WEIGHTS),
            "mlp weight decay": list(baselines.MLP_WEIGHT_DECAYS),
            "mlp epochs": list(baselines.MLP_EPOCHS),
            "spahgc": "members choose their epochs on held-out training slides (spahgc_paper: final epoch)",
        },
        "spahgc_options": dict(spahgc_options),
        **dict(extra or {}),
    }


METRICS = {
    "pcc": "Pearson per gene across the held-out slide's spots, mean over genes; genes constant in the "
    "truth are excluded and counted (n_genes_excluded); genes constant in the prediction count as 0",
    f"pcc_top{TOP_GENES}": f"the same mean over the {TOP_GENES} genes most variable on the training slides",
    "rmse": "over all spot × gene values, log1p(CPM) units",
}


def _score(method: str, train, test: SlideData, top: np.ndarray, fold: Fold) -> tuple[dict, np.ndarray]:
    """One method on one held-out slide: its fold record (metrics, seconds, choices) and per-gene PCC."""
    started = time.perf_counter()
    prediction, choices = METHODS[method](train, test, fold)
    seconds = time.perf_counter() - started
    record, per_gene = score(test.expression, prediction, top)
    return {**record, "seconds": round(seconds, 2), **choices}, per_gene


def _summarise(summary: dict) -> None:
    """Mean ± sd of the folds' PCC, mean top-gene PCC and RMSE, total seconds, added to a method's summary."""
    folds = summary["folds"].values()
    pccs = [f["pcc"] for f in folds]
    summary.update(
        pcc_mean=float(np.mean(pccs)),
        pcc_sd=float(np.std(pccs, ddof=1)) if len(pccs) > 1 else 0.0,
        pcc_top_mean=float(np.mean([f[f"pcc_top{TOP_GENES}"] for f in folds])),
        rmse_mean=float(np.mean([f["rmse"] for f in folds])),
        seconds_total=round(sum(f["seconds"] for f in folds), 1),
    )
