"""Time and peak memory of SpatialData in and out on a Visium HD-sized slide (issue 34).

    python benchmarks/bench_spatialdata.py --spots 700000 --work /tmp/spatialdata_bench

The slide: ``scale_slides.make_hd`` bins over HER2ST C2 (made once in ``--work``); its store is made
once by spatialdata-io's ``visium_hd`` reader from that folder (unmeasured: it is the user's tool, not
ours), and so is its predictions file (``bench_domains.predictions_file``: the layout ``spahgc predict``
writes, 785 genes). Each measured command runs in its own process (``children.run_child``: wall time and
that child's own peak RSS):

- open: ``spahgc info`` on a cohort table whose spots column names the store's 8 µm table (ids,
  centres mapped through the transformations, pixel size, the counts, the image pyramid opened lazily);
- write: the predictions file as a store with the H&E, bins as a labels raster (``--format zarr``'s
  last step, ``io.spatialdata.write_predictions_store``), and again with the bins as squares;
- view: napari-spatialdata (under Xvfb) opens the written store and colours the bins by a predicted gene.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from children import prepared_arguments, reported, run_child

ROOT = Path(__file__).resolve().parents[1]
VIEW = ROOT / "tests" / "napari_spatialdata_view.py"


def prepare(work: Path, spots: int) -> None:
    """The HD folder, spatialdata-io's store of it and the predictions file (made once)."""
    import warnings

    import pandas as pd
    import spatialdata_io
    from bench_domains import predictions_file

    predictions_file(work, spots)  # makes the folder too
    folder = work / f"C2_hd{spots}"
    store = work / f"C2_hd{spots}.zarr"
    if not store.is_dir():
        image = pd.read_csv(folder / "cohort.csv")["image"].iloc[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata = spatialdata_io.visium_hd(
                folder, dataset_id="C2", fullres_image_file=image, load_segmentations_only=False
            )
            sdata.write(work / "partial.zarr", overwrite=True)
        (work / "partial.zarr").rename(store)
    table = pd.DataFrame(
        [
            {
                "slide_id": "C2_store",
                "image": "",
                "spots": f"{store}::square_008um",
                "counts": "",
                "pixel_size_um": "",
                "patient": "C",
            }
        ]
    )
    table.to_csv(work / "store_cohort.csv", index=False)


def main(argv: list[str] | None = None) -> None:
    args = prepared_arguments(
        __file__, __doc__.splitlines()[0], Path("/tmp/spatialdata_bench"), prepare, argv
    )
    if args is None:
        return
    predictions = args.work / f"C2_hd{args.spots}_predictions.h5ad"
    image = args.work / f"C2_hd{args.spots}" / "image.tif"
    written = {bins: args.work / f"predictions_{bins}.zarr" for bins in ("raster", "squares")}
    for path in written.values():
        shutil.rmtree(path, ignore_errors=True)
    cli = [sys.executable, "-c", "from napari_spahgc.cli import main; main()"]
    write = (
        "import sys; from napari_spahgc.io.images import open_image; "
        "from napari_spahgc.io.spatialdata import write_predictions_store as w; "
        "w(sys.argv[1], sys.argv[2], image=open_image(sys.argv[3]), bins=sys.argv[4])"
    )
    xvfb = ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24"]
    runs = {
        "open store (info)": [*cli, "info", str(args.work / "store_cohort.csv")],
        **{
            f"write store ({bins})": [
                sys.executable,
                "-c",
                write,
                str(predictions),
                str(path),
                str(image),
                bins,
            ]
            for bins, path in written.items()
        },
        "napari-spatialdata view": [*xvfb, sys.executable, str(VIEW), str(written["raster"])],
    }
    records = []
    for name, command in runs.items():
        printed = args.work / "printed.txt"
        with printed.open("w") as sink:
            _, measured = run_child(command, args.timeout, stdout=sink, stderr=subprocess.DEVNULL)
        if command[-2] == str(VIEW):  # what the viewer showed: the layer, the gene it is coloured by
            measured["shown"] = json.loads(printed.read_text().strip().splitlines()[-1])
        records.append(reported(name, args.spots, measured))
    if args.out:
        args.out.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
