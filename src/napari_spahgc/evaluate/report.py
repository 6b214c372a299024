"""The benchmark's report: the protocol, the table of per-fold scores (mean ± sd over seeds where
there are several), SpaHGC's ratios to the best tuned baseline with their paired statistics, what
every fold chose — as ``report.md`` beside ``report.json``, ``per_gene.csv`` and a figure."""

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
            interval_table(report),
            domain_table(report),
            _choices(report["methods"]),
        ]
    )


def _protocol_lines(protocol: dict) -> str:
    tuning = protocol.get("tuning", {})
    lines = [
        f"- Folds: {protocol['folds']}; held out: {', '.join('+'.join(f) for f in protocol['held_out'])}.",
        f"- Genes: {protocol['genes']} ({', '.join(f'{k} {v}' for k, v in protocol['n_genes'].items())}).",
        f"- Targets: {protocol.get('targets', '')}.",
        f"- Seeds: {', '.join(map(str, protocol.get('seeds', [protocol.get('seed', 0)])))} (methods whose "
        "result depends on the seed run once per seed; a fold's cell is then the mean ± sd over seeds).",
        f"- PCC: {protocol['pcc']}. Top-{TOP_GENES}: {protocol.get(f'pcc_top{TOP_GENES}', '')}. "
        f"RMSE: {protocol['rmse']}.",
        *(f"- Tuning, {name}: {_grid(values)}" for name, values in tuning.items()),
    ]
    return "\n".join(lines)


def _grid(values) -> str:
    return ", ".join(f"{v:g}" for v in values) if isinstance(values, list) else str(values)


def report_table(report: dict) -> str:
    """Per-fold PCC (± sd over seeds), mean ± sd over folds, top-gene PCC, RMSE and seconds per
    method, then SpaHGC's ratios to the best tuned baseline of the same run with paired statistics."""
    methods = report["methods"]
    slides = list(next(iter(methods.values()))["folds"])
    lines = [
        "| method | " + " | ".join(slides) + f" | PCC mean ± sd | top-{TOP_GENES} PCC | RMSE | seconds |",
        "|---|" + "---|" * (len(slides) + 4),
    ]
    for name, m in methods.items():
        folds = " | ".join(_fold_cell(m["folds"][s]) for s in slides)
        lines.append(
            f"| {name} | {folds} | {m['pcc_mean']:.3f} ± {m['pcc_sd']:.3f} | {m['pcc_top_mean']:.3f} "
            f"| {m['rmse_mean']:.3f} | {m['seconds_total']:.0f} |"
        )
    ratios = [_ratio_line(name, c, methods) for name, c in report.get("comparisons", {}).items()]
    lines += ["", *ratios, f"Peak memory: {report['peak_memory_mb']:.0f} MB"]
    return "\n".join(lines)


def interval_table(report: dict) -> str:
    """Per method and fold the intervals' coverage / mean width, their means, and SpaHGC's
    uncertainty–error Spearman; then each SpaHGC method's width against the best tuned baseline's."""
    methods = {n: m for n, m in report["methods"].items() if "coverage_mean" in m}
    if not methods:
        return ""
    level = report["protocol"].get("interval_level", 0.9)
    slides = list(next(iter(methods.values()))["folds"])
    lines = [
        f"## Prediction intervals at {level:.0%} (coverage / mean width per fold)",
        "",
        "| method | " + " | ".join(slides) + " | coverage | width | Spearman(uncertainty, MAE) |",
        "|---|" + "---|" * (len(slides) + 3),
    ]
    for name, m in methods.items():
        folds = " | ".join(
            f"{m['folds'][s]['coverage']:.3f} / {m['folds'][s]['interval_width']:.2f}" for s in slides
        )
        rho = m.get("uncertainty_spearman_mean")
        lines.append(
            f"| {name} | {folds} | {m['coverage_mean']:.3f} | {m['interval_width_mean']:.3f} | "
            + ("—" if rho is None else f"{rho:.3f}")
            + " |"
        )
    for name, comparison in report.get("comparisons", {}).items():
        if name not in methods or comparison["against"] not in methods:
            continue
        best = methods[comparison["against"]]
        mine = methods[name]
        narrower = sum(
            mine["folds"][s]["interval_width"] < best["folds"][s]["interval_width"] for s in slides
        )
        lines.append(
            f"\n{name}: mean width {mine['interval_width_mean']:.3f} vs {comparison['against']} "
            f"{best['interval_width_mean']:.3f} ({mine['interval_width_mean'] / best['interval_width_mean']:.3f}×, "
            f"narrower on {narrower} of {len(slides)} folds); coverage per fold "
            f"{min(mine['folds'][s]['coverage'] for s in slides):.3f}–{max(mine['folds'][s]['coverage'] for s in slides):.3f}."
        )
    return "\n".join(lines)


def domain_table(report: dict) -> str:
    """Per method and fold the ARI of the domains of its predictions against the labels (the spatial
    weight its inner validation chose), the means, the measured values' row, and each SpaHGC method
    against the baseline with the best mean ARI."""
    methods = {n: m for n, m in report["methods"].items() if "domain_ari_mean" in m}
    if not methods or "domains" not in report:
        return ""
    measured = report["domains"]["measured"]
    slides = list(next(iter(methods.values()))["folds"])
    lines = [
        "## Tissue domains (ARI against the labels; spatial weight chosen in inner validation)",
        "",
        f"{report['domains']['protocol']}.",
        "",
        "| method | " + " | ".join(slides) + " | ARI mean ± sd | NMI mean |",
        "|---|" + "---|" * (len(slides) + 2),
    ]
    for name, m in methods.items():
        aris = [m["folds"][s]["domain_ari"] for s in slides]
        cells = " | ".join(
            f"{a:.3f} (w {_weights(m['folds'][s])})" for a, s in zip(aris, slides, strict=True)
        )
        lines.append(
            f"| {name} | {cells} | {np.mean(aris):.3f} ± {np.std(aris, ddof=1):.3f} | {m['domain_nmi_mean']:.3f} |"
        )
    if all(measured.get(s) for s in slides):
        aris = [measured[s]["ari"] for s in slides]
        cells = " | ".join(f"{measured[s]['ari']:.3f} (w {measured[s]['spatial_weight']:g})" for s in slides)
        nmi = np.mean([measured[s]["nmi"] for s in slides])
        lines.append(
            f"| measured expression | {cells} | {np.mean(aris):.3f} ± {np.std(aris, ddof=1):.3f} | {nmi:.3f} |"
        )
    baselines = {n: m for n, m in methods.items() if m["kind"] != "spahgc"}
    if baselines:
        best = max(baselines, key=lambda n: baselines[n]["domain_ari_mean"])
        for name, m in methods.items():
            if m["kind"] != "spahgc":
                continue
            higher = sum(
                m["folds"][s]["domain_ari"] > baselines[best]["folds"][s]["domain_ari"] for s in slides
            )
            lines.append(
                f"\n{name}: mean ARI {m['domain_ari_mean']:.3f} vs the best baseline by ARI, {best}, "
                f"{baselines[best]['domain_ari_mean']:.3f} (higher on {higher} of {len(slides)} folds)."
            )
    return "\n".join(lines)


def _weights(record: dict) -> str:
    """The spatial weight a fold chose (every seed's, where there are several)."""
    records = record.get("seeds", {"": record}).values()
    return "/".join(f"{r['domain_spatial_weight']:g}" for r in records)


def _fold_cell(record: dict) -> str:
    cell = f"{record['pcc']:.3f}"
    return cell + f" ± {record['pcc_seed_sd']:.3f}" if "pcc_seed_sd" in record else cell


def _ratio_line(name: str, comparison: dict, methods: dict) -> str:
    """A SpaHGC method against the best tuned baseline: the ratio with its bootstrap interval, the
    folds won, the paired tests and the RMSEs."""
    best, (low, high) = comparison["against"], comparison["ratio_ci"]
    behind = [s for s, d in zip(comparison["slides"], comparison["differences"], strict=True) if d <= 0]
    tests = ", ".join(
        f"{label} p = {comparison[key]:.3g}" if comparison[key] is not None else f"{label}: n/a"
        for label, key in (("paired t", "t_test_p"), ("Wilcoxon", "wilcoxon_p"))
    )
    return (
        f"{name} / best tuned baseline ({best}) PCC: {comparison['ratio']:.2f}× "
        f"({comparison['ratio_ci_level']:.0%} bootstrap CI over folds {low:.2f}–{high:.2f}; higher on "
        f"{comparison['wins']} of {comparison['folds']} folds"
        + (f", not ahead on {', '.join(behind)}" if behind else "")
        + f"; {tests}; "
        f"RMSE {methods[name]['rmse_mean']:.3f} vs {methods[best]['rmse_mean']:.3f})"
    )


def _choices(methods: dict) -> str:
    """What each fold's training slides chose, per method."""
    lines = ["## What each fold chose (on its training slides only)", ""]
    for name, m in methods.items():
        per_fold = []
        for slide, fold in m["folds"].items():
            records = fold.get("seeds", {"": fold})
            per_fold.append(f"{slide}: " + " | ".join(_choice(r) for r in records.values()))
        lines.append(f"- {name}: " + "; ".join(per_fold))
    return "\n".join(lines)


def _choice(record: dict) -> str:
    """What one run of a method chose on its training slides."""
    if "chosen" in record:
        return ", ".join(f"{k}={v:g}" for k, v in record["chosen"].items())
    epochs = [str(e["best_epoch"]) for e in record.get("members", [])]
    choice = f"member epochs {'/'.join(epochs)}" if epochs else f"final epoch {record['epochs_run']}"
    return choice + (f", smoothing {record['smoothing']:g}" if record.get("smoothing") else "")


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
        folds = [m["folds"][s] for s in slides]
        spread = [f.get("pcc_seed_sd", 0.0) for f in folds]  # sd over seeds, where there are several
        axes.bar(x, [f["pcc"] for f in folds], width, yerr=spread, label=f"{name} ({m['pcc_mean']:.3f})")
    axes.set_xticks(np.arange(len(slides)), slides)
    axes.set_ylabel("mean PCC over genes")
    axes.set_title(f"Per-fold PCC ({report['protocol']['folds']})")
    axes.legend(fontsize=7, loc="lower right", ncol=2)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
