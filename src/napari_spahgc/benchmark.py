"""Leave-one-out benchmark of SpaHGC against baselines, on the same embeddings and genes in one run.

Folds leave out one patient when the cohort names at least two patients, else one slide. Inside a
fold the held-out slides never reach gene selection, scaling, training, model selection or the
reference bank (guarded by :func:`check_no_leakage`).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import dataset
from ._files import atomic_path, write_report
from .baselines import BASELINES, Baseline
from .dataset import SlideData
from .evaluate import score
from .slide import Slide


@dataclass(frozen=True)
class Fold:
    """What a method may know of a fold besides its data: the genes (chosen on the training slides),
    the seed, the device and SpaHGC's options."""

    genes: Sequence[str]
    seed: int = 0
    device: str = "auto"
    spahgc_options: Mapping = field(default_factory=dict)


def _spahgc(train: Sequence[SlideData], test: SlideData, fold: Fold) -> np.ndarray:
    from .trainer import fit_predict_fold

    return fit_predict_fold(
        train, test, seed=fold.seed, device=fold.device, genes=fold.genes, **fold.spahgc_options
    )


Method = Callable[[Sequence[SlideData], SlideData, Fold], np.ndarray]


def _baseline(run: Baseline) -> Method:
    """A baseline as a benchmark method: it needs only the fold's data."""
    return lambda train, test, _fold: run(train, test)


#: Every method the benchmark runs, by name: SpaHGC and each baseline of :data:`BASELINES`.
METHODS: dict[str, Method] = {
    "spahgc": _spahgc,
    **{name: _baseline(run) for name, run in BASELINES.items()},
}


def make_folds(slides: Sequence[Slide]) -> tuple[str, list[list[str]]]:
    """(``"leave-one-patient-out"`` | ``"leave-one-slide-out"``, the held-out slide ids of each fold)."""
    patients = [s.patient for s in slides]
    if all(patients) and len(set(patients)) >= 2:
        groups = {p: [s.slide_id for s in slides if s.patient == p] for p in dict.fromkeys(patients)}
        return "leave-one-patient-out", list(groups.values())
    return "leave-one-slide-out", [[s.slide_id] for s in slides]


def check_no_leakage(train: Sequence[SlideData], test: Sequence[SlideData]) -> None:
    """Held-out slides must share neither slide id nor (slide, spot) id with the training data."""
    train_ids = {s.slide_id for s in train}
    test_ids = {s.slide_id for s in test}
    if train_ids & test_ids:
        raise AssertionError(f"held-out slides {sorted(train_ids & test_ids)} are in the training data")
    train_spots = {(s.slide_id, spot) for s in train for spot in s.spot_ids}
    if any((s.slide_id, spot) in train_spots for s in test for spot in s.spot_ids):
        raise AssertionError("held-out spots are in the training data")


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
    **spahgc_options,
) -> dict:
    """Run every fold and method; write ``report.json``, ``report.md``, ``per_gene.csv`` and
    ``pcc_per_fold.png`` to ``out_dir``; return the report."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    scheme, folds = make_folds(slides)
    results: dict[str, dict] = {m: {"folds": {}} for m in methods}
    per_gene_rows = []
    n_genes = {}
    for held_out in folds:
        genes, train, tests = fold_data(slides, embeddings, held_out, panel, n_hvg)
        for test in tests:
            n_genes[test.slide_id] = len(genes)
            for method in methods:
                record, per_gene = _score(method, train, test, seed, device, genes, spahgc_options)
                results[method]["folds"][test.slide_id] = record
                per_gene_rows += [(method, test.slide_id, g, v) for g, v in zip(genes, per_gene, strict=True)]
                log(f"{test.slide_id}  {method:<14} PCC {record['pcc']:.4f}  RMSE {record['rmse']:.3f}  "
                    f"{record['seconds']:.1f} s")  # fmt: skip
    for summary in results.values():
        _summarise(summary)
    report = {
        "methods": results,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "protocol": {
            "folds": scheme,
            "held_out": folds,
            "genes": "panel" if panel is not None else f"top {n_hvg} HVGs per training slide, intersected",
            "n_genes": n_genes,
            "seed": seed,
            **METRICS,
            "spahgc_options": dict(spahgc_options),
            **dict(protocol or {}),
        },
    }
    _write_report(Path(out_dir), report, per_gene_rows)
    return report


def fold_data(
    slides: Sequence[Slide], embeddings: Mapping[str, np.ndarray], held_out: Sequence[str], panel, n_hvg
) -> tuple[list[str], list[SlideData], list[SlideData]]:
    """One fold's genes (chosen on its training slides only), training and test data, leakage-checked."""
    training = [s for s in slides if s.slide_id not in held_out]
    by_id = {s.slide_id: s for s in slides}
    genes, train, tests = dataset.fold_data(training, embeddings, panel, n_hvg, [by_id[i] for i in held_out])
    check_no_leakage(train, tests)
    return genes, train, tests


METRICS = {
    "pcc": "Pearson per gene across the held-out slide's spots, mean over genes; genes constant in "
    "truth or prediction are excluded and counted (n_genes_excluded)",
    "rmse": "over all spot × gene values, log1p(CPM) units",
}


def _score(method, train, test, seed, device, genes, options) -> tuple[dict, np.ndarray]:
    """One method on one held-out slide: its fold record (PCC, RMSE, seconds) and per-gene PCC."""
    started = time.perf_counter()
    prediction = METHODS[method](train, test, Fold(genes, seed, device, options))
    seconds = time.perf_counter() - started
    record, per_gene = score(test.expression, prediction)
    return {**record, "seconds": round(seconds, 2)}, per_gene


def _summarise(summary: dict) -> None:
    """Mean ± sd of the folds' PCC, mean RMSE and total seconds, added to a method's summary."""
    folds = summary["folds"].values()
    pccs = [f["pcc"] for f in folds]
    summary.update(
        pcc_mean=float(np.mean(pccs)),
        pcc_sd=float(np.std(pccs, ddof=1)) if len(pccs) > 1 else 0.0,
        rmse_mean=float(np.mean([f["rmse"] for f in folds])),
        seconds_total=round(sum(f["seconds"] for f in folds), 1),
    )


def report_table(report: dict) -> str:
    """The report as a markdown table (per-fold PCC, mean ± sd, RMSE, seconds) plus SpaHGC's ratios."""
    methods = report["methods"]
    slides = list(next(iter(methods.values()))["folds"])
    lines = [
        "| method | " + " | ".join(slides) + " | PCC mean ± sd | RMSE | seconds |",
        "|---|" + "---|" * (len(slides) + 3),
    ]
    for name, m in methods.items():
        folds = " | ".join(f"{m['folds'][s]['pcc']:.3f}" for s in slides)
        lines.append(
            f"| {name} | {folds} | {m['pcc_mean']:.3f} ± {m['pcc_sd']:.3f} | {m['rmse_mean']:.3f} | {m['seconds_total']:.0f} |"
        )
    if "spahgc" in methods and len(methods) > 1:
        spahgc = methods["spahgc"]["pcc_mean"]
        others = {n: m["pcc_mean"] for n, m in methods.items() if n != "spahgc"}
        best = max(others, key=others.get)
        lines.append("")
        if "ridge" in others:
            lines.append(f"SpaHGC / ridge PCC: {spahgc / others['ridge']:.2f}×")
        lines.append(f"SpaHGC / best other method ({best}) PCC: {spahgc / others[best]:.2f}×")
    lines.append(f"Peak memory: {report['peak_memory_mb']:.0f} MB")
    return "\n".join(lines)


def _write_report(out_dir: Path, report: dict, per_gene_rows: list) -> None:
    write_report(out_dir, report, f"# Benchmark ({report['protocol']['folds']})\n\n{report_table(report)}")
    frame = pd.DataFrame(per_gene_rows, columns=["method", "fold", "gene", "pcc"])
    with atomic_path(out_dir / "per_gene.csv") as tmp:
        frame.to_csv(tmp, index=False)
    _plot(out_dir / "pcc_per_fold.png", report)


def _plot(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    slides = list(next(iter(methods.values()))["folds"])
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(slides), 3.6))
    for i, (name, m) in enumerate(methods.items()):
        x = np.arange(len(slides)) + (i - (len(methods) - 1) / 2) * width
        axes.bar(x, [m["folds"][s]["pcc"] for s in slides], width, label=f"{name} ({m['pcc_mean']:.3f})")
    axes.set_xticks(np.arange(len(slides)), slides)
    axes.set_ylabel("mean PCC over genes")
    axes.set_title(f"Per-fold PCC ({report['protocol']['folds']})")
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
