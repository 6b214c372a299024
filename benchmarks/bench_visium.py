"""Visium-sized, end to end through the command line (issue 15's Visium targets).

    python benchmarks/bench_visium.py --work /tmp/visium_work --out visium.json

Five Visium-like slides (``scale_slides.make_visium`` over HER2ST C2–C6: a 100 µm hexagonal grid of
55 µm spots over each whole section, ≈ 5,600 spots, counts drawn from the nearest real spot), made once
in ``--work``. Then three commands, each a child process with its wall time and peak RSS:
``spahgc embed`` of the five slides (``--mode``, default dense), ``spahgc train`` (``--preset``, default
the default ensemble) on four of them with the 785-gene HER2ST panel, and ``spahgc predict`` of the
fifth (``--target``). Printed and written to ``--out``: each command's numbers, the embedding mode
chosen, the training's epochs and members, and the prediction's mean per-gene PCC against the
slide's (synthetic) counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SECTIONS = ("C2", "C3", "C4", "C5", "C6")
PANEL = HERE.parent.parent / "shared" / "data" / "her2st" / "her2st_785_genes.txt"


def cohorts(work: Path, target: str) -> tuple[Path, Path, Path]:
    """The five slides (made once) as cohort tables: all, the four training slides, the target."""
    from scale_slides import make_visium

    rows = []
    for section in SECTIONS:
        table = work / section / "cohort.csv"
        if not table.is_file():
            make_visium(section, table.parent)
        rows.append(pd.read_csv(table))
    every = pd.concat(rows, ignore_index=True)
    every["patient"] = every["slide_id"]  # one section a patient, as the benchmark treats HER2ST
    is_target = every["slide_id"] == f"{target}_visium"
    paths = work / "all.csv", work / "train.csv", work / "target.csv"
    for path, table in zip(paths, (every, every[~is_target], every[is_target]), strict=True):
        table.to_csv(path, index=False)
    return paths


def main(argv: list[str] | None = None) -> None:
    from children import run_child

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench_visium.json"))
    parser.add_argument("--target", default="C6", choices=SECTIONS)
    parser.add_argument("--mode", default="dense", choices=("dense", "spot"))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", nargs="*", default=[], help="SpaHGC options NAME=VALUE for train")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    every, train, target = cohorts(args.work, args.target)
    spahgc = str(Path(sys.executable).with_name("spahgc"))
    cache, model, predictions = (args.work / name for name in ("cache", "model", "predictions"))
    shared = ["--cache", str(cache), "--mode", args.mode]
    commands = {
        "embed": [spahgc, "embed", str(every), *shared],
        "train": [spahgc, "train", str(train), "--out", str(model), "--genes", str(PANEL),
                  "--preset", args.preset, *shared, *(item for s in args.set for item in ("--set", s))],
        "predict": [spahgc, "predict", str(model), str(target), "--out", str(predictions), *shared],
    }  # fmt: skip
    records = {}
    for stage, command in commands.items():
        status, records[stage] = run_child(command, args.timeout)
        print(
            f"{stage:<8} {records[stage]['wall_s']:7.1f} s  {records[stage]['peak_rss_gb']:.2f} GB",
            flush=True,
        )
        if status != 0:
            break
    else:
        records["result"] = describe(model, predictions / f"{args.target}_visium.h5ad", every)
        print(json.dumps(records["result"], indent=2))
    args.out.write_text(json.dumps({"records": records, "settings": vars(args)}, indent=2, default=str))


def describe(model: Path, predicted: Path, every: Path) -> dict:
    """What the run chose and scored: spots per slide, the embedding mode, epochs and members, PCC."""
    config = json.loads((model / "config.json").read_text())
    validation = config["validation"]
    written = ad.read_h5ad(predicted, backed="r")
    pcc = written.var["pcc"].to_numpy(dtype=float)
    result = {
        "spots": {row.slide_id: len(pd.read_csv(Path(row.spots) / "spatial" / "tissue_positions.csv"))
                  for row in pd.read_csv(every).itertuples()},
        "embedding_mode": config["encoder"].get("embedding_mode"),
        "epochs_run": validation.get("epochs_run"),
        "members": [{k: m[k] for k in ("best_epoch", "epochs_trained", "pcc")} for m in validation.get("members", [])],
        "predicted_spots": written.n_obs,
        "mean_pcc": float(np.nanmean(pcc)),
    }  # fmt: skip
    written.file.close()
    return result


if __name__ == "__main__":
    main()
