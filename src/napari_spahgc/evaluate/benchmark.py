"""The evaluation stage's one flow: an :class:`EvaluateRequest` in, the report out — a leave-one-out
benchmark of SpaHGC against tuned baselines, on the same embeddings and genes in one run.

Folds leave out one patient when the cohort names at least two patients, else one slide (or the
request's own held-out sets: the demo holds out one section). Inside a fold the held-out slides never
reach gene selection, scaling, training, tuning, model selection or the reference bank: every method
gets the held-out slide without its counts (only the scorer reads them), and a SpaHGC model whose own
record names a held-out slide among its training slides is refused (:class:`LeakageError`). Every
baseline tunes its hyperparameters by inner cross-validation on the fold's training slides
(:mod:`napari_spahgc.evaluate.baselines`); SpaHGC trains and predicts through the training and
prediction flows, its members choosing their epochs on held-out training slides. With several seeds
every seeded method runs once per seed; the report gives each fold's mean ± sd over seeds and the
paired statistics of each SpaHGC method against the best tuned baseline
(:mod:`napari_spahgc.evaluate.statistics`); :mod:`napari_spahgc.evaluate.report` writes it.

Every method also gives prediction intervals at the request's ``level``, calibrated on data it never
trained on (SpaHGC: its members' held-out training slides; a baseline: its inner validation slides),
scored by their coverage of the held-out values and their mean width; SpaHGC's per-spot uncertainty
by its Spearman correlation with the spot's mean absolute error.

When the cohort names a labels file per slide (its ``labels`` column), every method's prediction of a
held-out slide is also scored by the ARI of its tissue domains against the slide's labels, the domain
settings chosen on the method's own inner-validation predictions (:mod:`napari_spahgc.evaluate.domains`).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_spahgc.base.conformal import (
    DEFAULT_LEVEL,
    check_level,
    conformal_quantile,
    coverage_and_width,
    interval,
)
from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import prepare_output_folder, safe_name
from napari_spahgc.base.metrics import TOP_GENES, most_variable, score
from napari_spahgc.base.progress import Progress, run_to_end
from napari_spahgc.embed.flow import Embeddings, EmbedRequest, embeddings_for
from napari_spahgc.evaluate.baselines import (
    BASELINES,
    SEEDED_BASELINES,
    TUNING_GRIDS,
    Baseline,
    shared_candidates,
)
from napari_spahgc.evaluate.domains import (
    DOMAIN_METRICS,
    domain_scores,
    measured_scores,
    slide_labels,
)
from napari_spahgc.evaluate.domains import PROTOCOL as DOMAIN_PROTOCOL
from napari_spahgc.evaluate.report import write_benchmark_report
from napari_spahgc.evaluate.statistics import paired_comparison
from napari_spahgc.io.expression import GeneChoice
from napari_spahgc.io.slide import Slide
from napari_spahgc.model import slide_data as dataset
from napari_spahgc.model.config import PRESETS, SpaHGCConfig
from napari_spahgc.model.slide_data import SlideData, make_folds


class LeakageError(Exception):
    """A model trained for a fold records a held-out slide among its training slides: the benchmark
    refuses to score it."""


@dataclass(frozen=True)
class Fold:
    """What a method may know of a fold besides its data: the genes (chosen on the training slides),
    the config of the ``spahgc`` method (its seed and device serve every method), the training slides
    and the held-out slide, without its counts, with their embeddings (for SpaHGC's flows), and where
    to keep the fold's SpaHGC model (None: not kept), and the intervals' level."""

    genes: Sequence[str]
    config: SpaHGCConfig
    train_slides: Sequence[Slide] = ()
    test_slide: Slide | None = None
    embeddings: Embeddings = field(default_factory=Embeddings)
    models: str | None = None
    level: float = DEFAULT_LEVEL


@dataclass(frozen=True)
class Outcome:
    """A method's prediction of the held-out slide, what its training slides chose, its intervals
    (lower, upper; None for a SpaHGC model trained without held-out slides), where the method has
    one each spot's uncertainty, and its inner-validation predictions of training slides (slide id →
    spots × genes: what domain settings are chosen on)."""

    prediction: np.ndarray
    choices: dict
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    inner: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A benchmark method: ``kind`` spahgc (trained through the SpaHGC flows; its own report rows and
    ratios) or baseline (tuned by inner cross-validation); ``run`` predicts one held-out slide;
    ``seeded``: its result depends on the seed (run once per seed of the request)."""

    kind: str
    run: Callable[[Sequence[SlideData], SlideData, Fold], Outcome]
    preset: str | None = None
    seeded: bool = False


def _spahgc(preset: str) -> Method:
    """SpaHGC with ``preset``: ``default`` is the request's config (``--set``), others the preset's own."""

    def run(_train: Sequence[SlideData], test: SlideData, fold: Fold) -> Outcome:
        from napari_spahgc.io.intervals import prediction_interval
        from napari_spahgc.predict.flow import PredictRequest, predict
        from napari_spahgc.train.flow import TrainRequest, train

        config = fold.config if preset == "default" else fold.config.with_preset(preset)
        out = None if fold.models is None else Path(fold.models, safe_name(test.slide_id), preset)
        request = TrainRequest(
            fold.train_slides, fold.embeddings, GeneChoice(panel=tuple(fold.genes)), config, out
        )
        trained = run_to_end(train(request))
        model = trained.model
        leaked = sorted(set(model.metadata.training_slides) & {test.slide_id})
        if leaked:
            raise LeakageError(f"the model for held-out slide {test.slide_id} trained on {leaked}")
        request = PredictRequest(
            model, [fold.test_slide], fold.embeddings, device=config.train.device, level=fold.level
        )
        predicted = run_to_end(predict(request)).predictions[test.slide_id]
        validation = model.metadata.validation
        members = [
            {k: m[k] for k in ("validation_slides", "best_epoch")} for m in validation.get("members", [])
        ]
        choices = {
            "preset": preset,
            "epochs_run": validation["epochs_run"],
            "members": members,
            "validation_pcc": validation.get("pcc"),
            "smoothing": model.config.graph.smoothing,
        }
        uncertainty = predicted.obs["uncertainty"].to_numpy()
        if model.calibration is None:  # trained without held-out slides: nothing to calibrate on
            return Outcome(predicted.X, choices, uncertainty=uncertainty, inner=trained.held_out)
        choices["interval_mix"] = model.calibration.mix
        return Outcome(predicted.X, choices, *prediction_interval(predicted), uncertainty, trained.held_out)

    return Method("spahgc", run, preset, seeded=True)


def _baseline(tune: Baseline, seeded: bool) -> Method:
    """A baseline as a benchmark method: it needs only the fold's data (and the fold's seed)."""

    def run(train: Sequence[SlideData], test: SlideData, fold: Fold) -> Outcome:
        tuned = tune(train, test, seed=fold.config.train.seed)
        truth = {s.slide_id: s.expression for s in train}
        residuals = np.concatenate(
            [np.abs(truth[slide_id] - values) for slide_id, values in tuned.inner_predictions.items()]
        ).astype(np.float32)
        width = conformal_quantile(residuals, fold.level)  # a constant width per gene: σ = 1
        bounds = interval(tuned.prediction, np.ones((1, 1), np.float32), width)
        choices = {"chosen": tuned.chosen, "inner_pcc": tuned.inner_pcc}
        return Outcome(tuned.prediction, choices, *bounds, inner=tuned.inner_predictions)

    return Method("baseline", run, seeded=seeded)


#: Every method the benchmark runs, by name: SpaHGC with each preset of :data:`PRESETS` (``spahgc``:
#: ours, the default; ``spahgc_<preset>``: the others, e.g. the paper's configuration) and each
#: baseline of :data:`BASELINES`.
METHODS: dict[str, Method] = {
    **{("spahgc" if preset == "default" else f"spahgc_{preset}"): _spahgc(preset) for preset in PRESETS},
    **{name: _baseline(tune, name in SEEDED_BASELINES) for name, tune in BASELINES.items()},
}


@dataclass(frozen=True)
class EvaluateRequest:
    """Benchmark ``methods`` on ``slides`` with their ``embeddings`` (or embedded now) and ``genes``,
    holding out each of ``held_out`` in turn (None: leave one patient, else one slide, out); write the
    report to ``out``. ``config``: the ``spahgc`` method's (its seed and device serve every method);
    ``jobs``: worker processes; ``models``: a folder to keep each fold's SpaHGC models in
    (``<held-out slide>/<preset>``, under ``seed-<seed>/`` with several seeds); ``seeds``: how many
    seeds (the config's seed, then the next ones) each seeded method runs with; ``level``: the
    prediction intervals' level; ``protocol``: more to record in the report (encoder, cohort)."""

    slides: Sequence[Slide]
    embeddings: Embeddings | EmbedRequest
    genes: GeneChoice
    out: str | Path
    methods: Sequence[str] = tuple(METHODS)
    config: SpaHGCConfig = field(default_factory=SpaHGCConfig)
    jobs: int = 1
    held_out: Sequence[Sequence[str]] | None = None
    models: str | Path | None = None
    seeds: int = 1
    level: float = DEFAULT_LEVEL
    protocol: Mapping = field(default_factory=dict)


def evaluate(request: EvaluateRequest) -> Generator[Progress, None, dict]:
    """Run every fold and method; write ``report.json``, ``report.md``, ``per_gene.csv`` and
    ``pcc_per_fold.png`` to the request's ``out``; yield each (held-out slide, method) as it is scored
    (``values``: its record); return the report.

    ``jobs`` > 1: the work runs in that many single-threaded worker processes, one unit at a time
    each (a SpaHGC method on one held-out slide, or every baseline on it, which share candidates);
    the genes, data and leakage check of each fold are made here first, as with ``jobs`` 1."""
    methods, config = list(request.methods), request.config
    check_methods(methods)
    if request.seeds < 1:
        raise InputError(f"seeds must be at least 1, not {request.seeds}")
    level = check_level(request.level)
    out = prepare_output_folder(request.out)
    slides = request.slides
    labels = slide_labels(slides)  # a bad labels file stops the run before any work
    embeddings = yield from embeddings_for(request.embeddings)
    scheme, folds = make_folds(slides) if request.held_out is None else ("held-out slides", request.held_out)
    folds = [list(f) for f in folds]
    models = None if request.models is None else str(request.models)
    units, test_genes, measured_domains = [], {}, {}
    by_id = {s.slide_id: s for s in slides}
    for held_out in folds:
        train_slides = [s for s in slides if s.slide_id not in held_out]
        genes, train, tests = dataset.fold_data(
            train_slides, embeddings, request.genes, [by_id[i] for i in held_out]
        )
        top = most_variable([s.expression for s in train])
        for test in tests:
            test_genes[test.slide_id] = genes
            if labels:
                measured_domains[test.slide_id] = measured_scores(train, test, labels)
            test_slide = replace(by_id[test.slide_id], expression=None)
            used = embeddings.only([*(s.slide_id for s in train_slides), test.slide_id])
            for index in range(request.seeds):
                seed = config.train.seed + index
                seeded = replace(config, train=replace(config.train, seed=seed))
                kept = models if models is None or request.seeds == 1 else str(Path(models, f"seed-{seed}"))
                fold = Fold(genes, seeded, train_slides, test_slide, used, kept, level)
                run = methods if index == 0 else [m for m in methods if METHODS[m].seeded]
                units += [(group, train, test, top, fold, labels) for group in _unit_methods(run)]
    outcomes: dict[tuple[str, str], list] = {}
    total = sum(len(unit[0]) for unit in units)
    for done, (test_id, method, seed, record, per_gene) in enumerate(_run_units(units, request.jobs), 1):
        outcomes.setdefault((method, test_id), []).append((seed, record, per_gene))
        text = (
            f"{test_id}  {method:<14} seed {seed}  PCC {record['pcc']:.4f}  top-{TOP_GENES} "
            f"{record[f'pcc_top{TOP_GENES}']:.4f}  RMSE {record['rmse']:.3f}  {record['seconds']:.1f} s"
            + (f"  domain ARI {record['domain_ari']:.3f}" if "domain_ari" in record else "")
        )
        yield Progress(done, total, text, "evaluate", record)
    results, per_gene_rows = _tabulate(outcomes, test_genes, methods)
    n_genes = {test_id: len(genes) for test_id, genes in test_genes.items()}
    report = {
        "methods": results,
        "comparisons": compare_to_best_baseline(results),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "protocol": _protocol(scheme, folds, request, embeddings, n_genes),
    }
    if any(measured_domains.values()):
        report["domains"] = {"protocol": DOMAIN_PROTOCOL, "measured": measured_domains}
    if request.jobs > 1:
        worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report.update(jobs=request.jobs, peak_worker_memory_mb=round(worker_peak, 1))
    write_benchmark_report(out, report, per_gene_rows)
    return report


def _tabulate(outcomes: dict, test_genes: dict, methods: Sequence[str]) -> tuple[dict, list]:
    """Per method its folds' records (folds in order, whatever order they finished in; a seeded
    method's over its seeds) and summary; and the per-gene rows (method, held-out slide, gene, PCC:
    the mean over seeds)."""
    results: dict[str, dict] = {m: {"kind": METHODS[m].kind, "folds": {}} for m in methods}
    per_gene_rows = []
    for test_id, genes in test_genes.items():
        for method in methods:
            runs = sorted(outcomes[method, test_id], key=lambda run: run[0])
            per_gene = np.mean([run[2] for run in runs], axis=0)
            results[method]["folds"][test_id] = runs[0][1] if len(runs) == 1 else _over_seeds(runs)
            per_gene_rows += [(method, test_id, g, v) for g, v in zip(genes, per_gene, strict=True)]
    for summary in results.values():
        _summarise(summary)
    return results, per_gene_rows


def _over_seeds(runs: list) -> dict:
    """One fold's record over several seeds: the metrics' means, the PCC's sd over seeds, the seconds'
    sum, and every seed's own record under ``seeds``."""
    records = [record for _, record, _ in runs]
    pccs = [r["pcc"] for r in records]
    return {
        "pcc": float(np.mean(pccs)),
        "pcc_seed_sd": float(np.std(pccs, ddof=1)),
        f"pcc_top{TOP_GENES}": float(np.mean([r[f"pcc_top{TOP_GENES}"] for r in records])),
        "rmse": float(np.mean([r["rmse"] for r in records])),
        **{
            k: float(np.mean([r[k] for r in records]))
            for k in (*INTERVAL_METRICS, *DOMAIN_METRICS)
            if k in records[0]
        },
        "n_genes_excluded": records[0]["n_genes_excluded"],
        "seconds": round(sum(r["seconds"] for r in records), 2),
        "seeds": {str(seed): record for seed, record, _ in runs},
    }


def compare_to_best_baseline(results: dict) -> dict:
    """Each SpaHGC method against the baseline with the best mean PCC of the same run: paired
    statistics over the folds (:func:`~napari_spahgc.evaluate.statistics.paired_comparison`)."""
    baselines = {n: m for n, m in results.items() if m["kind"] != "spahgc"}
    if not baselines:
        return {}
    best = max(baselines, key=lambda n: baselines[n]["pcc_mean"])
    slides = list(results[best]["folds"])
    return {
        name: {
            "against": best,
            "slides": slides,
            **paired_comparison(
                [m["folds"][s]["pcc"] for s in slides], [results[best]["folds"][s]["pcc"] for s in slides]
            ),
        }
        for name, m in results.items()
        if m["kind"] == "spahgc"
    }


def default_jobs(device: str) -> int:
    """Worker processes for :func:`evaluate`: one per core this process may use on CPU (SpaHGC's
    small graphs train as fast on one thread as on two), one with CUDA (the GPU is shared)."""
    from napari_spahgc.embed.device import default_threads, resolve_device  # torch: asked for here only

    return 1 if resolve_device(device).type == "cuda" else default_threads()


def _unit_methods(methods: Sequence[str]) -> list[tuple[str, ...]]:
    """The methods as units of work for one held-out slide, longest first: each SpaHGC method alone,
    the baselines together (they share ridge's and kNN's candidates)."""
    spahgc = sorted(  # other presets first: they train without early stopping (the paper's: 200 epochs)
        (m for m in methods if METHODS[m].kind == "spahgc"), key=lambda m: METHODS[m].preset == "default"
    )
    baselines = tuple(m for m in methods if METHODS[m].kind != "spahgc")
    return [(m,) for m in spahgc] + ([baselines] if baselines else [])


def _run_units(units: list, jobs: int) -> Iterator[tuple[str, str, int, dict, np.ndarray]]:
    """(held-out slide, method, seed, record, per-gene PCC) of every method of every unit, as they finish:
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


def _run_unit(unit) -> Iterator[tuple[str, str, int, dict, np.ndarray]]:
    methods, train, test, top, fold, labels = unit
    with shared_candidates():
        for method in methods:
            yield (
                test.slide_id,
                method,
                fold.config.train.seed,
                *_score(method, train, test, top, fold, labels),
            )


def _run_unit_list(unit) -> list[tuple[str, str, int, dict, np.ndarray]]:
    return list(_run_unit(unit))


def _single_threaded() -> None:
    """A worker process's set-up: one thread for torch and for numpy's BLAS and OpenMP pools."""
    import torch
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    threadpool_limits(1)


def check_methods(methods: Sequence[str]) -> None:
    """Every method known."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")


def _protocol(
    scheme: str, folds: list, request: EvaluateRequest, embeddings: Embeddings, n_genes: dict
) -> dict:
    config = request.config
    return {
        "folds": scheme,
        "held_out": folds,
        "genes": request.genes.describe(),
        "n_genes": n_genes,
        "targets": "log1p(counts / spot total × 1e6) on the fold's genes",
        "seed": config.train.seed,
        "seeds": list(range(config.train.seed, config.train.seed + request.seeds)),
        "interval_level": request.level,
        **METRICS,
        "tuning": {
            "inner folds": "leave one training patient out (≥ 2 patients), else one training slide",
            **TUNING_GRIDS,
            "spahgc": "members choose their epochs on held-out training slides (spahgc_paper: final epoch)",
        },
        "spahgc_options": config.changes(config.with_preset("default")),
        "encoder": embeddings.info,
        "patch": dict(embeddings.patch),
        **dict(request.protocol),
    }


METRICS = {
    "pcc": "Pearson per gene across the held-out slide's spots, mean over genes; genes constant in the "
    "truth are excluded and counted (n_genes_excluded); genes constant in the prediction count as 0",
    f"pcc_top{TOP_GENES}": f"the same mean over the {TOP_GENES} genes most variable on the training slides",
    "rmse": "over all spot × gene values, log1p(CPM) units",
    "coverage": "share of the held-out measured values inside their prediction interval (split "
    "conformal; SpaHGC: calibrated on its members' held-out training slides, residuals normalised by "
    "the retrieved references' deviation; baselines: a constant width per gene from their inner "
    "validation residuals); both clipped at 0",
    "interval_width": "mean upper − lower over all spot × gene values, log1p(CPM) units",
    "uncertainty_spearman": "Spearman correlation across held-out spots of a spot's uncertainty with "
    "its mean absolute error over genes",
}


def _score(
    method: str, train, test: SlideData, top: np.ndarray, fold: Fold, labels: Mapping
) -> tuple[dict, np.ndarray]:
    """One method on one held-out slide: its fold record (metrics, seconds, choices, and with labels
    the domain scores) and per-gene PCC. The method gets the slide without its expression and never
    sees a label; only the scorer reads them."""
    started = time.perf_counter()
    outcome = METHODS[method].run(train, replace(test, expression=None), fold)
    seconds = time.perf_counter() - started
    record, per_gene = score(test.expression, outcome.prediction, top)
    return {
        **record,
        **interval_scores(test.expression, outcome),
        **domain_scores(outcome.prediction, outcome.inner, train, test, labels),
        "seconds": round(seconds, 2),
        **outcome.choices,
    }, per_gene


#: the interval metrics of a fold record (the Spearman only for methods with an uncertainty)
INTERVAL_METRICS = ("coverage", "interval_width", "uncertainty_spearman")


def interval_scores(truth: np.ndarray, outcome: Outcome) -> dict:
    """Coverage and mean width of the intervals; Spearman of each spot's uncertainty with its mean
    absolute error over genes, where the method has an uncertainty."""
    from scipy.stats import spearmanr

    scores = {}
    if outcome.lower is not None:
        coverage, width = coverage_and_width(truth, outcome.lower, outcome.upper)
        scores.update(coverage=coverage, interval_width=width)
    if outcome.uncertainty is not None:
        error = np.nanmean(np.abs(truth - outcome.prediction), axis=1)
        scores["uncertainty_spearman"] = float(spearmanr(outcome.uncertainty, error).statistic)
    return scores


def _summarise(summary: dict) -> None:
    """Mean ± sd of the folds' PCC, mean top-gene PCC, RMSE and interval metrics, total seconds, added
    to a method's summary."""
    folds = summary["folds"].values()
    pccs = [f["pcc"] for f in folds]
    summary.update(
        pcc_mean=float(np.mean(pccs)),
        pcc_sd=float(np.std(pccs, ddof=1)) if len(pccs) > 1 else 0.0,
        pcc_top_mean=float(np.mean([f[f"pcc_top{TOP_GENES}"] for f in folds])),
        rmse_mean=float(np.mean([f["rmse"] for f in folds])),
        seconds_total=round(sum(f["seconds"] for f in folds), 1),
        **{
            f"{k}_mean": float(np.mean([f[k] for f in folds]))
            for k in (*INTERVAL_METRICS, *DOMAIN_METRICS)
            if all(k in f for f in folds)
        },
    )
