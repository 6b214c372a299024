"""The benchmark's report: the protocol, the table of per-fold scores, SpaHGC's ratios to the best
tuned baseline, what every fold chose — as ``report.md`` beside ``report.json``, ``per_gene.csv``
and a figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_spahgc.base.files import atomic_path, write_report
from napari_spahgc.base.metrics import TOP_GENES


def report_markdown(report: dict) -> str:
    """The whole report for people: protocol, table, ratios, choices."""
    protocol = report["protocol"]
    return "\n\n".join(
        [
            f"# Benchmark ({protocol['folds']})",
            _protocol_lines(protocol),
            report_table(report),
            _choices(report["methods"]),
        ]
    )


def _protocol_lines(protocol: dict) -> str:
    tuning = protocol.get("tuning", {})
    lines = [
        f"- Folds: {protocol['folds']}; held out: {', '.join('+'.join(f) for f in protocol['held_out'])}.",
        f"- Genes: {protocol['genes']} ({', '.join(f'{k} {v}' for k, v in protocol['n_genes'].items())}).",
        f"- Targets: {protocol.get('targets', '')}.",
        f"- PCC: {protocol['pcc']}. Top-{TOP_GENES}: {protocol.get(f'pcc_top{TOP_GENES}', '')}. "
        f"RMSE: {protocol['rmse']}.",
        *(f"- Tuning, {name}: {_grid(values)}" for name, values in tuning.items()),
    ]
    return "\n".join(lines)


def _grid(values) -> str:
    return ", ".join(f"{v:g}" for v in values) if isinstance(values, list) else str(values)


def report_table(report: dict) -> str:
    """Per-fold PCC, mean ± sd, top-gene PCC, RMSE and seconds per method, then SpaHGC's ratios to
    the best tuned baseline of the same run."""
    methods = report["methods"]
    slides = list(next(iter(methods.values()))["folds"])
    lines = [
        "| method | " + " | ".join(slides) + f" | PCC mean ± sd | top-{TOP_GENES} PCC | RMSE | seconds |",
        "|---|" + "---|" * (len(slides) + 4),
    ]
    for name, m in methods.items():
        folds = " | ".join(f"{m['folds'][s]['pcc']:.3f}" for s in slides)
        lines.append(
            f"| {name} | {folds} | {m['pcc_mean']:.3f} ± {m['pcc_sd']:.3f} | {m['pcc_top_mean']:.3f} "
            f"| {m['rmse_mean']:.3f} | {m['seconds_total']:.0f} |"
        )
    lines += ["", *_ratios(methods, slides), f"Peak memory: {report['peak_memory_mb']:.0f} MB"]
    return "\n".join(lines)


def _ratios(methods: dict, slides: list[str]) -> list[str]:
    baselines = {n: m for n, m in methods.items() if m["kind"] != "spahgc"}
    if not baselines:
        return []
    best = max(baselines, key=lambda n: baselines[n]["pcc_mean"])
    lines = []
    for name in (n for n, m in methods.items() if m["kind"] == "spahgc"):
        ours, theirs = methods[name], baselines[best]
        wins = sum(ours["folds"][s]["pcc"] > theirs["folds"][s]["pcc"] for s in slides)
        lines.append(
            f"{name} / best tuned baseline ({best}) PCC: {ours['pcc_mean'] / theirs['pcc_mean']:.2f}× "
            f"(higher on {wins} of {len(slides)} folds; RMSE {ours['rmse_mean']:.3f} vs {theirs['rmse_mean']:.3f})"
        )
    return lines


def _choices(methods: dict) -> str:
    """What each fold's training slides chose, per method."""
    lines = ["## What each fold chose (on its training slides only)", ""]
    for name, m in methods.items():
        per_fold = []
        for slide, record in m["folds"].items():
            if "chosen" in record:
                choice = ", ".join(f"{k}={v:g}" for k, v in record["chosen"].items())
            else:
                epochs = [str(e["best_epoch"]) for e in record.get("members", [])]
                choice = (
                    f"member epochs {'/'.join(epochs)}" if epochs else f"final epoch {record['epochs_run']}"
                )
                choice += f", smoothing {record['smoothing']:g}" if record.get("smoothing") else ""
            per_fold.append(f"{slide}: {choice}")
        lines.append(f"- {name}: " + "; ".join(per_fold))
    return "\n".join(lines)


def write_benchmark_report(out_dir: Path, report: dict, per_gene_rows: list) -> None:
    import pandas as pd

    write_report(out_dir, report, report_markdown(report))
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
    figure, axes = plt.subplots(figsize=(1.6 + 1.4 * len(slides), 3.8))
    for i, (name, m) in enumerate(methods.items()):
        x = np.arange(len(slides)) + (i - (len(methods) - 1) / 2) * width
        axes.bar(x, [m["folds"][s]["pcc"] for s in slides], width, label=f"{name} ({m['pcc_mean']:.3f})")
    axes.set_xticks(np.arange(len(slides)), slides)
    axes.set_ylabel("mean PCC over genes")
    axes.set_title(f"Per-fold PCC ({report['protocol']['folds']})")
    axes.legend(fontsize=7, loc="lower right", ncol=2)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
