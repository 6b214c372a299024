"""Time and peak memory of ``spahgc domains`` and ``spahgc markers`` on a Visium HD-sized predictions file (issue 33).

    python benchmarks/bench_domains.py --spots 700000 --work /tmp/domains_bench

The slide: ``scale_slides.make_hd`` bins over HER2ST C2 (made once in ``--work``). Its predictions
file is written once, unmeasured, in the layout ``spahgc predict`` writes (``io.export.stream_h5ad``:
X float32 streamed by blocks, the sparse ``measured`` layer, ``obsm['spatial']``, the H&E thumbnail)
on the 785-gene panel. X holds each bin's measured log1p CPM averaged over its 24 nearest bins: smooth,
as predictions are; what the domains cost depends on the file's size and layout, not on what made
its values. Each measured command runs in its own process (``children.run_child``: wall time and that
child's peak RSS; the preparation runs in another, so no child is forked from a heavy parent): KMeans with 8 domains, Leiden at resolution 1 (both at the default spatial weight),
then the markers of domain 0 against the rest with the example gene sets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from children import prepared_arguments, reported, run_child

ROOT = Path(__file__).resolve().parents[1]
PANEL = ROOT.parent / "shared" / "data" / "her2st" / "her2st_785_genes.txt"
SMOOTHING_BINS = 24


def predictions_file(work: Path, spots: int) -> Path:
    """The predictions-format h5ad of an HD slide of ``spots`` bins (made once; imports here: the
    measuring parent stays light)."""
    import numpy as np
    from scale_slides import make_hd

    import napari_spahgc as ns
    from napari_spahgc.base.spatial import spatial_mix, spatial_neighbours
    from napari_spahgc.downstream.domains import row_blocks
    from napari_spahgc.io.export import measured_values, spot_anndata, stream_h5ad

    path = work / f"C2_hd{spots}_predictions.h5ad"
    if path.is_file():
        return path
    folder = work / f"C2_hd{spots}"
    if not (folder / "cohort.csv").is_file():
        make_hd("C2", folder, spots)
    slide = ns.load_cohort(folder / "cohort.csv")[0]
    genes = PANEL.read_text().split()
    measured = measured_values(slide.expression, genes, sparse=True)
    neighbours = spatial_neighbours(slide.centers_px, SMOOTHING_BINS)
    adata = spot_anndata(slide, None, genes, layers={"measured": measured})
    smooth = spatial_mix(np.nan_to_num(measured.toarray()), neighbours, 0.0)  # 2 × 2.2 GB, once
    with stream_h5ad(adata, path) as x:
        for block in row_blocks(smooth):
            x[block] = smooth[block]
    return path


def main(argv: list[str] | None = None) -> None:
    args = prepared_arguments(
        __file__, __doc__.splitlines()[0], Path("/tmp/domains_bench"), predictions_file, argv
    )
    if args is None:
        return
    path = args.work / f"C2_hd{args.spots}_predictions.h5ad"
    cli = [sys.executable, "-c", "from napari_spahgc.cli import main; main()"]
    runs = {
        "domains kmeans 8": [*cli, "domains", str(path), "--n-domains", "8", "--out", str(args.work / "kmeans")],
        "domains leiden 1.0": [*cli, "domains", str(path), "--out", str(args.work / "leiden")],
        "markers 0 vs rest": [*cli, "markers", str(args.work / "kmeans" / path.name), "--domain", "0",
                              "--gene-sets", str(ROOT / "examples" / "marker_sets.gmt"), "--min-pcc", "-1",
                              "--out", str(args.work / "markers")],
    }  # fmt: skip
    records = [reported(name, args.spots, run_child(command, args.timeout)[1]) for name, command in runs.items()]
    if args.out:
        args.out.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
