"""Inner validation: how SpaHGC settings score without ever touching a benchmark fold's test section.

For each outer fold of ``spahgc benchmark`` the held-out section is set aside: gene choice, scaling,
training and validation see only the fold's training sections. The ensemble is trained on those and
every member is scored on the training section(s) it holds out (its best validation PCC, the number
settings are chosen on). Prints one row per fold and the mean; writes them, with every member's
validation history, as JSON.

    python benchmarks/inner_validation.py [--set NAME=VALUE ...] [--mode spot|dense] [--folds C2,C3]
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import napari_spahgc as ns
from napari_spahgc.model.config import parse_settings
from napari_spahgc.model.slide_data import make_folds

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=ROOT / "examples" / "her2st_cohort.csv")
    parser.add_argument("--genes", type=Path, default=ROOT.parent / "shared/data/her2st/her2st_785_genes.txt")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], help="SpaHGC option NAME=VALUE"
    )
    parser.add_argument("--folds", default="", help="comma-separated held-out sections (default: every fold)")
    parser.add_argument("--mode", default="dense", help="embedding mode: dense or spot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args()

    slides = ns.load_cohort(args.cohort)
    embeddings = ns.run_to_end(
        ns.embed(ns.EmbedRequest(slides, "efficientnet-lite0", device="cpu", mode=args.mode))
    )
    genes = ns.GeneChoice.from_file(args.genes)
    config = ns.SpaHGCConfig.from_options(parse_settings(args.settings), seed=args.seed, device="cpu")
    wanted = {f for f in args.folds.split(",") if f}
    rows = []
    for held_out in make_folds(slides)[1]:
        if wanted and not wanted & set(held_out):
            continue
        training = [s for s in slides if s.slide_id not in held_out]  # the test section is not used
        started = time.perf_counter()
        used = embeddings.only([s.slide_id for s in training])
        history = []

        def keep(p, history=history) -> None:
            if p.values.get("member_pcc") is not None:
                history.append((p.done, p.values["member_pcc"]))

        # the genes are chosen, and the members validated, on the training sections only
        model = ns.run_to_end(ns.train(ns.TrainRequest(training, used, genes, config)), keep).model
        members = model.metadata.validation["members"]
        row = {
            "fold": "+".join(held_out),
            "pcc": float(np.mean([m["pcc"] for m in members])),
            "members": members,
            "epochs_run": model.metadata.validation["epochs_run"],
            "seconds": round(time.perf_counter() - started, 1),
            "history": history,
        }
        rows.append(row)
        per_member = ", ".join(
            f"{'+'.join(m['validation_slides'])} {m['pcc']:.4f}@{m['best_epoch']}" for m in members
        )
        print(
            f"{row['fold']}: mean member PCC {row['pcc']:.4f}  ({per_member})  "
            f"{row['epochs_run']} epochs, {row['seconds']:.0f} s",
            flush=True,
        )
    mean = float(np.mean([r["pcc"] for r in rows]))
    print(f"embeddings: {args.mode}")
    seconds = sum(r["seconds"] for r in rows)
    print(
        f"settings {args.settings or 'defaults'}: mean {mean:.4f} over {len(rows)} fold(s), {seconds:.0f} s"
    )
    if args.out:
        args.out.write_text(
            json.dumps({"settings": args.settings, "mode": args.mode, "mean": mean, "folds": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
