"""How far the domain method can reach on the sections' *measured* expression: an upper bound for any
prediction of it.

Every labelled section of the cohort is clustered by :func:`~napari_spahgc.downstream.domains.find_domains`
on its measured log1p-CPM (the gene panel) for every spatial weight, number of principal components and
KMeans seed of the grid below, into the section's own number of labels, and scored by ARI against its
labels. The best setting is then picked by looking at those same labels (an oracle: nothing a real run
could do), so its mean ARI bounds what this domain method can give from expression at all. Prints one
row per setting (mean over seeds, per section) and the oracle's row.

    python benchmarks/domain_ceiling.py [--cohort CSV] [--genes TXT] [--seeds 5]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

import napari_spahgc as ns
from napari_spahgc.downstream.domains import SPATIAL_WEIGHTS, DomainOptions, find_domains
from napari_spahgc.downstream.labels import agreement
from napari_spahgc.evaluate.domains import slide_labels
from napari_spahgc.io.expression import log_cpm

ROOT = Path(__file__).resolve().parents[1]
N_PCS = (10, 20, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=ROOT / "examples" / "her2st_cohort.csv")
    parser.add_argument("--genes", type=Path, default=ROOT.parent / "shared/data/her2st/her2st_785_genes.txt")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    genes = list(ns.GeneChoice.from_file(args.genes).panel)
    slides = ns.load_cohort(args.cohort)
    labelled = slide_labels(slides)
    sections = [
        (s.slide_id, log_cpm(s.expression, genes).X, s.centers_px, labelled[s.slide_id])
        for s in slides
        if s.slide_id in labelled and s.expression is not None
    ]
    names = [name for name, *_ in sections]
    print(f"{len(genes)} genes; KMeans into each section's number of labels; {args.seeds} seeds a setting")
    print(f"{'weight':>6} {'pcs':>4}  " + " ".join(f"{n:>6}" for n in names) + "    mean")
    rows = {}
    for weight, n_pcs in itertools.product(SPATIAL_WEIGHTS, N_PCS):
        per_section = []
        for _, values, coords, labels in sections:
            scores = []
            for seed in range(args.seeds):
                options = DomainOptions(
                    n_domains=int(labels.nunique()), spatial_weight=weight, n_pcs=n_pcs, seed=seed
                )
                scores.append(agreement(find_domains(values, coords, options), labels)["ari"])
            per_section.append(float(np.mean(scores)))
        rows[weight, n_pcs] = per_section
        print(f"{weight:6.2f} {n_pcs:4d}  " + " ".join(f"{a:6.3f}" for a in per_section)
              + f"  {np.mean(per_section):6.3f}")  # fmt: skip
    best = max(rows, key=lambda key: np.mean(rows[key]))
    per_section = rows[best]
    print(f"oracle: weight {best[0]:g}, {best[1]} components: mean ARI {np.mean(per_section):.3f} "
          f"± {np.std(per_section, ddof=1):.3f}; best single section {max(per_section):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
