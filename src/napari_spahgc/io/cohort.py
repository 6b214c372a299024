"""Cohort tables (the unit the CLI and the widgets work on) and the assembly of a :class:`Slide`.

A cohort table is a CSV with the columns ``slide_id, image, spots, counts, pixel_size_um, patient``.
``counts``, ``pixel_size_um`` and ``patient`` may be empty; relative paths resolve against the folder
of the table. An optional column ``labels`` names each slide's per-spot labels table (tissue domains,
:mod:`napari_spahgc.downstream.labels`), which the benchmark scores domains against.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd

from napari_spahgc.base.errors import InputError, describe
from napari_spahgc.base.files import require_file
from napari_spahgc.io.images import open_image
from napari_spahgc.io.slide import Slide, SlideImage, check_pixel_size
from napari_spahgc.io.spatialdata import is_store, store_name
from napari_spahgc.io.spots import SpotTable, read_count_ids, read_counts, read_spots

COHORT_COLUMNS = ("slide_id", "image", "spots", "counts", "pixel_size_um", "patient")


@dataclass(frozen=True)
class CohortEntry:
    """One row of a cohort table, paths resolved."""

    slide_id: str
    image: Path | None
    spots: Path
    counts: Path | None = None
    pixel_size_um: float | None = None
    patient: str | None = None
    labels: Path | None = None

    def load(self, with_expression: bool = True) -> Slide:
        slide = build_slide(
            self.slide_id,
            self.spots,
            image=self.image,
            counts=self.counts,
            pixel_size_um=self.pixel_size_um,
            patient=self.patient,
            with_expression=with_expression,
        )
        if self.labels is not None:
            slide.labels = str(self.labels)
        return slide


def read_cohort(path: str | Path) -> list[CohortEntry]:
    """Parse and check a cohort table (columns, duplicate ids, pixel sizes); no file is opened yet."""
    path = require_file(path, "cohort table")
    try:
        table = pd.read_csv(
            path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig"
        )
    except Exception as err:
        raise InputError(f"cannot read cohort table ({describe(err)})", path) from err
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in COHORT_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"cohort table lacks column(s) {', '.join(missing)}; it needs {', '.join(COHORT_COLUMNS)}", path
        )
    if table.empty:
        raise InputError("cohort table has no slides", path)
    ids = table["slide_id"].str.strip()
    if (ids == "").any():
        raise InputError("cohort table has a row with an empty slide_id", path)
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise InputError(f"duplicate slide_id in cohort table: {', '.join(duplicated)}", path)
    base = path.parent
    entries = []
    for row, slide_id in zip(table.itertuples(index=False), ids, strict=True):
        if not row.spots.strip():
            raise InputError(f"slide {slide_id!r} has no spots file", path)
        entries.append(
            CohortEntry(
                slide_id=slide_id,
                image=_resolve(base, row.image),
                spots=_resolve(base, row.spots),
                counts=_resolve(base, row.counts),
                pixel_size_um=_pixel_size(row.pixel_size_um, slide_id, path),
                patient=row.patient.strip() or None,
                labels=_resolve(base, getattr(row, "labels", "")),
            )
        )
    return entries


def load_cohort(path: str | Path) -> list[Slide]:
    """Read a cohort table and load every slide."""
    return [entry.load() for entry in read_cohort(path)]


def open_slides(path: str | Path, image: str | Path | None = None) -> list[Slide]:
    """Slides from what a user points at: a cohort table, a Space Ranger ``outs/`` folder, an ``.h5ad``,
    or a spot table (legacy ST, CSV, h5ad) with its ``image``."""
    path = Path(path)
    if path.suffix.lower() == ".csv" and image is None and is_cohort_table(path):
        return load_cohort(path)
    if is_store(path):
        return [build_slide(store_name(path), path, image=image)]
    slide_id = path.name if path.is_dir() else path.name.split(".")[0]
    return [build_slide(slide_id, path, image=image)]


def is_cohort_table(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            header = {column.strip() for column in handle.readline().split(",")}
    except OSError:
        return False
    return {"slide_id", "spots", "image"} <= header or set(COHORT_COLUMNS) <= header


def build_slide(
    slide_id: str,
    spots: str | Path,
    image: str | Path | None = None,
    counts: str | Path | None = None,
    pixel_size_um: float | None = None,
    patient: str | None = None,
    with_expression: bool = True,
) -> Slide:
    """Assemble a :class:`Slide` from a spot source, an optional image and optional separate counts.

    The slide's spots are those of the spot source that the counts have (and that lie in the image);
    ``with_expression=False`` selects them from the counts' spot ids without reading the counts.

    Pixel size: the value given here wins, then the image's metadata, then the spot source's
    scalefactors. Without a full-resolution image, a low-resolution image carried by the spot
    source (h5ad ``uns['spatial']``, Space Ranger ``spatial/``) is used at its scale.
    """
    table = read_spots(spots, with_counts=with_expression and counts is None)
    sources = {"spots": str(table.path)}
    expression = table.counts if with_expression else None
    counted = None if table.counts is None else table.counts.obs_names
    if counts is not None:
        expression = read_counts(counts) if with_expression else None
        counted = expression.obs_names if expression is not None else read_count_ids(counts)
        sources["counts"] = str(counts)
    slide_image = _slide_image(image, table, sources)

    keep = _kept_spots(table, counted, sources.get("counts", table.path), slide_image)
    spot_ids = table.spot_ids[keep]
    if expression is not None:
        expression = expression[spot_ids].copy()
    pixel_size, source = _choose_pixel_size(pixel_size_um, slide_image, table)
    diameter = table.spot_diameter_px
    if diameter is None and table.spot_diameter_um and pixel_size:
        diameter = table.spot_diameter_um / pixel_size
    return Slide(
        slide_id=str(slide_id),
        spot_ids=spot_ids,
        centers_px=table.centers_px[keep],
        image=slide_image,
        pixel_size_um=pixel_size,
        pixel_size_source=source,
        expression=expression,
        patient=patient,
        spot_diameter_px=diameter,
        sources=sources,
    )


def _kept_spots(
    table: SpotTable, counted: pd.Index | None, counts_source: str | Path, image: SlideImage | None
) -> np.ndarray:
    """Which of the table's spots the slide keeps: those the counts have and that lie in the image."""
    keep = np.ones(len(table.spot_ids), dtype=bool)
    if counted is not None:
        keep &= table.spot_ids.isin(counted)
        if not keep.any():
            raise InputError(
                f"counts and spots share no spot ids (e.g. spots {list(table.spot_ids[:3])} vs counts "
                f"{list(counted[:3])})",
                counts_source,
            )
    if image is not None:
        rows, cols = image.shape
        x, y = table.centers_px[:, 0], table.centers_px[:, 1]
        inside = (x >= 0) & (x < cols) & (y >= 0) & (y < rows)
        outside = int((keep & ~inside).sum())
        if outside == int(keep.sum()):
            raise InputError(
                f"none of the {outside} spots lie inside the image ({cols} × {rows} px)", table.path
            )
        if outside:
            warnings.warn(
                f"{table.path}: dropped {outside} of {int(keep.sum())} spots outside the image ({cols} × {rows} px)",
                stacklevel=3,
            )
        keep &= inside
    return keep


def _slide_image(image: str | Path | None, table: SpotTable, sources: dict) -> SlideImage | None:
    """The full-resolution image when given, else the finest one the spot source carries (recorded
    in ``sources``)."""
    if image is not None:
        sources["image"] = str(image)
        return open_image(image)
    if table.full_image is not None:
        sources["image"] = str(table.full_image.path)
        return table.full_image
    if is_store(table.path):
        raise InputError(
            "the store has no image in the spots' coordinate system: add one to the store, or give the "
            "image file (the cohort table's image column, or --image)",
            table.path,
        )
    if table.images:
        sources["image"] = f"{table.path} (embedded {next(iter(table.images))} image)"
        return _carried_image(table)
    return None


def _choose_pixel_size(
    given: float | None, image: SlideImage | None, table: SpotTable
) -> tuple[float | None, str | None]:
    if given is not None:
        return check_pixel_size(float(given), "given by the user"), "given by the user"
    if image is not None and image.pixel_size_um is not None:
        return image.pixel_size_um, image.pixel_size_source
    if table.pixel_size_um is not None:
        check_pixel_size(table.pixel_size_um, table.pixel_size_source or "spot file", table.path)
    return table.pixel_size_um, table.pixel_size_source


def _carried_image(table: SpotTable) -> SlideImage:
    """The finest low-resolution image a spot source carries, as a one-level pyramid."""
    pixels, scale = max(table.images.values(), key=lambda image: image[1])
    level = da.from_array(pixels, chunks=(1024, 1024, 3))
    return SlideImage(table.path, [level], [1.0 / scale])


def _resolve(base: Path, value: str) -> Path | None:
    value = value.strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _pixel_size(value: str, slide_id: str, table: Path) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        size = float(value)
    except ValueError:
        size = float("nan")
    if not np.isfinite(size) or size <= 0:
        raise InputError(f"slide {slide_id!r}: pixel_size_um must be a positive number, got {value!r}", table)
    return check_pixel_size(size, f"pixel_size_um of slide {slide_id!r}", table)
