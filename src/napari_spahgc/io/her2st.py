"""The HER2ST sections C2–C6: where they are (local or downloaded), as a cohort table and as slides —
for napari's sample data and the demo.

Data: Andersson et al., "Spatial deconvolution of HER2-positive breast cancer delineates
tumor-associated cell type interactions", Nature Communications 12, 6012 (2021); public repository
https://github.com/almaan/her2st (``data/``). Cite it wherever results on it are shown.

Where the files come from, in order: the folder in ``$SPAHGC_DATA``; ``../shared/data/her2st`` (relative
to the working directory) when it exists; else, online, a download with pooch into the user cache,
each file checked against its SHA-256 in :data:`REGISTRY`. All three share one layout:
``ST-imgs/<section>/*.jpg``, ``ST-cnts/<section>.tsv.gz``, ``ST-spotfiles/<section>_selection.tsv``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from napari_spahgc.base.errors import InputError, describe
from napari_spahgc.base.files import atomic_path, cache_dir
from napari_spahgc.io.slide import Slide

SECTIONS = ("C2", "C3", "C4", "C5", "C6")
IMAGES = {
    "C2": "5714_HE_BT_C2.jpg",
    "C3": "5714_HE_BT_D1.jpg",
    "C4": "5714_HE_BT_D2.jpg",
    "C5": "5714_HE_BT_E1.jpg",
    "C6": "5714_HE_BT_E2.jpg",
}
PIXEL_SIZE_UM = 0.735  # the JPEGs store none: 200 µm spot pitch over a median ~272 px
PATIENT = "C"
BASE_URL = "https://github.com/almaan/her2st/raw/master/data/"
SHARED = Path("..") / "shared" / "data" / "her2st"

#: Local path → pooch ``known_hash`` of the public files (the same bytes as in the her2st repository).
REGISTRY = {
    "ST-cnts/C2.tsv.gz": "sha256:c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d",
    "ST-cnts/C3.tsv.gz": "sha256:e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a",
    "ST-cnts/C4.tsv.gz": "sha256:33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da",
    "ST-cnts/C5.tsv.gz": "sha256:c0f310315ca6110d74dbdf7011e5b42432ba0b8eb5f001824764911988f39338",
    "ST-cnts/C6.tsv.gz": "sha256:60478b0d2411501866685f41312c65c6591e499d64d5b719be8ee9bab25c9bc8",
    "ST-spotfiles/C2_selection.tsv": "sha256:235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c",
    "ST-spotfiles/C3_selection.tsv": "sha256:7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755",
    "ST-spotfiles/C4_selection.tsv": "sha256:47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c",
    "ST-spotfiles/C5_selection.tsv": "sha256:2114cc3b4da759772112897f1e247d5443c9f8c808e6a9a952eb4fda379a194c",
    "ST-spotfiles/C6_selection.tsv": "sha256:efdbbc6759c6af43baa966505c31705f09c087c1dccf1ea3e0d1db7b55717117",
    "ST-imgs/C2/5714_HE_BT_C2.jpg": "sha256:26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e",
    "ST-imgs/C3/5714_HE_BT_D1.jpg": "sha256:0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568",
    "ST-imgs/C4/5714_HE_BT_D2.jpg": "sha256:f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2",
    "ST-imgs/C5/5714_HE_BT_E1.jpg": "sha256:34028ea41e376396b50c42b0a11a7e689c85be4a8022e668d0a09cc128c04c65",
    "ST-imgs/C6/5714_HE_BT_E2.jpg": "sha256:dddd87232589648861a9b6776dc1749be8306213f6589aeef0e805fb2b1ee263",
}


def upstream_path(local: str) -> str:
    """Where a file lies in the her2st repository (its images sit one folder deeper, under ``C/``)."""
    return local.replace("ST-imgs/", "ST-imgs/C/", 1)


def her2st_folder(download: bool = True) -> Path:
    """The folder with all five sections: ``$SPAHGC_DATA``, ``../shared/data/her2st``, or a checked download."""
    if os.environ.get("SPAHGC_DATA"):
        return _complete(Path(os.environ["SPAHGC_DATA"]).expanduser().resolve(), "SPAHGC_DATA")
    if SHARED.is_dir():
        return _complete(SHARED.resolve(), "the shared")
    if not download:
        raise InputError(_not_found("downloading is off"))
    return _download(cache_dir("her2st"))


def _not_found(reason: str) -> str:
    return (
        f"the HER2ST sections are not here: SPAHGC_DATA is not set and {SHARED.resolve()} does not exist, "
        f"and {reason}. Set SPAHGC_DATA to a folder laid out as ST-imgs/<section>/*.jpg, "
        "ST-cnts/<section>.tsv.gz, ST-spotfiles/<section>_selection.tsv "
        "(e.g. export SPAHGC_DATA=/path/to/her2st), or go online to download them."
    )


def _complete(folder: Path, source: str) -> Path:
    missing = [name for name in REGISTRY if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"{source} HER2ST folder lacks {len(missing)} of {len(REGISTRY)} files, e.g. {missing[0]}", folder
        )
    return folder


def _download(folder: Path) -> Path:
    """Fetch every file into ``folder`` in the local layout; pooch skips files whose checksum matches."""
    import pooch

    for local, known_hash in REGISTRY.items():
        url = BASE_URL + upstream_path(local)
        target = folder / local
        try:
            pooch.retrieve(url, known_hash, fname=target.name, path=target.parent, progressbar=False)
        except Exception as err:  # offline, moved upstream, or a checksum mismatch
            raise InputError(_not_found(f"downloading {url} failed ({describe(err)})")) from err
    return folder


def her2st_cohort_table(folder: str | Path | None = None, sections: Sequence[str] = SECTIONS) -> Path:
    """Write a cohort table (absolute paths) of ``sections`` in ``folder`` into the cache; return its path."""
    folder = Path(folder).resolve() if folder is not None else her2st_folder()
    unknown = [s for s in sections if s not in IMAGES]
    if unknown:
        raise InputError(f"unknown HER2ST section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    table = pd.DataFrame(
        {
            "slide_id": list(sections),
            "image": [str(folder / "ST-imgs" / s / IMAGES[s]) for s in sections],
            "spots": [str(folder / "ST-spotfiles" / f"{s}_selection.tsv") for s in sections],
            "counts": [str(folder / "ST-cnts" / f"{s}.tsv.gz") for s in sections],
            "pixel_size_um": PIXEL_SIZE_UM,
            "patient": PATIENT,
            "labels": [_labels(folder, s) for s in sections],
        }
    )
    path = cache_dir("her2st") / f"cohort-{'-'.join(sections)}.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def _labels(folder: Path, section: str) -> str:
    """The section's tissue-domain labels where the folder has them (the shared copy does), else ""."""
    path = folder / "labels" / f"{section}-cluster-annotation.tsv.gz"
    return str(path) if path.is_file() else ""


def her2st_slides(sections: Sequence[str] = SECTIONS) -> list[Slide]:
    """Load HER2ST ``sections`` (image, spots, measured counts) from wherever :func:`her2st_folder` finds them."""
    from napari_spahgc.io.cohort import read_cohort

    return [entry.load() for entry in read_cohort(her2st_cohort_table(sections=sections))]
