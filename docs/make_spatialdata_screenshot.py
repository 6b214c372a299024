"""Regenerate docs/images/napari-spatialdata.png: a held-out HER2ST section predicted as a SpatialData
store, opened in napari-spatialdata and coloured by its best-validated gene.

    xvfb-run -a -s "-screen 0 1700x1100x24" python docs/make_spatialdata_screenshot.py MODEL_DIR [--slide C6]

MODEL_DIR: a model never trained on the slide (e.g. ``out/demo/models/C6/default`` after ``make demo``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--slide", default="C6")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "napari-spatialdata.png")
    args = parser.parse_args()
    cohort = ROOT / "examples" / "her2st_cohort.csv"
    with tempfile.TemporaryDirectory() as work:
        table = pd.read_csv(cohort)
        for column in ("image", "spots", "counts"):
            table[column] = [str((cohort.parent / p).resolve()) for p in table[column]]
        table[table["slide_id"] == args.slide].drop(columns="labels").to_csv(
            Path(work) / "slide.csv", index=False
        )
        spahgc = [sys.executable, "-c", "from napari_spahgc.cli import main; main()"]
        subprocess.run(
            [
                *spahgc,
                "predict",
                str(args.model),
                str(Path(work) / "slide.csv"),
                "--out",
                work,
                "--format",
                "zarr",
            ],
            check=True,
        )
        store = Path(work) / f"{args.slide}.zarr"
        import spatialdata

        validation = spatialdata.read_zarr(store).tables["table"].var["validation_pcc"]
        view = [sys.executable, str(ROOT / "tests" / "napari_spatialdata_view.py"), str(store), str(args.out)]
        subprocess.run([*view, str(validation.idxmax())], check=True)
    print(args.out)


if __name__ == "__main__":
    main()
