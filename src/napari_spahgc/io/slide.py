"""The one in-memory model of "a slide with its spots", shared by the CLI, the Python API and the widgets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd

from napari_spahgc.base.errors import InputError, describe

#: Spot diameters of the platforms we read, in µm (used to derive a pixel size from scalefactors).
VISIUM_SPOT_DIAMETER_UM = 55.0
LEGACY_ST_SPOT_DIAMETER_UM = 100.0
#: What :func:`spot_pitch` gives for fewer than two spots, in the units of the coordinates.
DEFAULT_SPOT_PITCH = 10.0
#: Pixel sizes (µm per full-resolution pixel) a slide may have: from 200× scanners to thumbnails.
PLAUSIBLE_UM_PER_PX = (0.05, 50.0)


def check_pixel_size(um_per_px: float, source: str, path: str | Path | None = None) -> float:
    """``um_per_px`` if it is a plausible pixel size, else an error naming where it came from."""
    low, high = PLAUSIBLE_UM_PER_PX
    if not (np.isfinite(um_per_px) and low <= um_per_px <= high):
        raise InputError(
            f"pixel size {um_per_px:g} µm/px ({source}) is outside the plausible range {low:g}–{high:g} µm/px",
            path,
        )
    return float(um_per_px)


def spot_pitch(xy: np.ndarray, max_queries: int | None = None) -> float:
    """The median distance from a spot to its nearest other spot, in the units of ``xy`` (n, 2);
    :data:`DEFAULT_SPOT_PITCH` for fewer than two spots. With ``max_queries``, that many evenly
    spaced spots (still measured against all) stand for the rest of a larger slide."""
    if len(xy) < 2:
        return DEFAULT_SPOT_PITCH
    from scipy.spatial import cKDTree

    queries = xy
    if max_queries is not None and len(xy) > max_queries:
        queries = xy[np.linspace(0, len(xy) - 1, max_queries).astype(int)]
    distances, _ = cKDTree(xy).query(queries, k=2)
    return float(np.median(distances[:, 1]))


def spot_grid(centers: np.ndarray, tolerance: float = 0.1) -> tuple[np.ndarray, float, np.ndarray] | None:
    """``(index, pitch, origin)`` when every spot sits alone on one square grid (binned data):
    ``index`` (n, 2) int32 row/column, ``pitch`` in px, ``origin`` (x, y) px; else None."""
    if len(centers) < 4:
        return None
    pitch = spot_pitch(centers, max_queries=5000)
    origin = centers.min(axis=0)
    steps = (centers - origin) / pitch
    cells = np.rint(steps)
    if pitch <= 0 or np.abs(steps - cells).max() > tolerance:
        return None
    index = cells[:, ::-1].astype(np.int32)
    if len(np.unique(index[:, 0].astype(np.int64) * (index[:, 1].max() + 1) + index[:, 1])) < len(index):
        return None
    return index, pitch, origin


@dataclass
class SlideImage:
    """A lazy image pyramid in full-resolution pixel units.

    ``levels[i]`` is an (rows, cols, 3) uint8 dask array whose pixel covers ``downsamples[i]``
    full-resolution pixels. Nothing is read until a region is asked for, so a whole-slide level
    never has to fit in memory. An image opened from a file (``reopen_from``) pickles as that path and
    is opened again on unpickling (the worker process gets the image, not its open file handles).
    """

    path: Path
    levels: list[da.Array]
    downsamples: list[float]
    pixel_size_um: float | None = None
    pixel_size_source: str | None = None
    reopen_from: Path | None = None

    def __reduce__(self):
        if self.reopen_from is not None:
            return _reopened, (self.reopen_from,)
        return super().__reduce__()

    @property
    def shape(self) -> tuple[int, int]:
        """Full-resolution (rows, cols)."""
        rows, cols = self.levels[0].shape[:2]
        return round(rows * self.downsamples[0]), round(cols * self.downsamples[0])

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def level_for_downsample(self, downsample: float) -> int:
        """The coarsest level that is still at least as fine as ``downsample`` (or the finest level)."""
        candidates = [i for i, d in enumerate(self.downsamples) if d <= downsample * (1 + 1e-6)]
        if not candidates:
            return int(np.argmin(self.downsamples))
        return max(candidates, key=lambda i: self.downsamples[i])

    def read_region(
        self, level: int, row0: int, col0: int, rows: int, cols: int, fill: int = 255
    ) -> np.ndarray:
        """Read ``rows × cols`` pixels of ``level`` starting at (row0, col0); outside the image is ``fill``."""
        array = self.levels[level]
        out = np.full((rows, cols, 3), fill, dtype=np.uint8)
        r0, c0 = max(row0, 0), max(col0, 0)
        r1, c1 = min(row0 + rows, array.shape[0]), min(col0 + cols, array.shape[1])
        if r1 > r0 and c1 > c0:
            try:
                out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = np.asarray(array[r0:r1, c0:c1, :3])
            except (MemoryError, InputError):
                raise
            except Exception as err:  # codec errors of damaged tiles come in many types
                raise InputError(
                    f"cannot decode the image data of level {level}, rows {r0}–{r1}, columns {c0}–{c1} "
                    f"({describe(err)})",
                    self.path,
                ) from None
        return out

    def patch(self, center_xy, pixel_size_um: float, size: int = 224, um_per_px: float = 0.5) -> np.ndarray:
        """The (size, size, 3) uint8 patch of ``size`` · ``um_per_px`` µm centred on a full-resolution
        (x, y) centre, for an image of ``pixel_size_um`` µm per full-resolution pixel. Reads only the
        needed region from the pyramid level nearest the scale (at least as fine), resamples it with
        sub-pixel accuracy, and pads outside the image with white."""
        from PIL import Image

        full_px_per_patch_px = um_per_px / pixel_size_um
        level = self.level_for_downsample(full_px_per_patch_px)
        step = self.downsamples[level]
        side = size * full_px_per_patch_px / step  # patch side in level pixels
        left, top = center_xy[0] / step - side / 2, center_xy[1] / step - side / 2
        col0, row0 = math.floor(left), math.floor(top)
        cols, rows = math.ceil(left + side) - col0, math.ceil(top + side) - row0
        region = self.read_region(level, row0, col0, max(rows, 1), max(cols, 1))
        box = (left - col0, top - row0, left - col0 + side, top - row0 + side)
        return np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.BILINEAR, box=box))

    def thumbnail(self, max_side: int = 2000) -> tuple[np.ndarray, float]:
        """An RGB thumbnail no larger than ``max_side`` and its scale factor relative to full resolution."""
        from PIL import Image

        fine_enough = [i for i, lvl in enumerate(self.levels) if max(lvl.shape[:2]) >= max_side]
        level = max(fine_enough, key=lambda i: self.downsamples[i]) if fine_enough else 0
        pixels = self.read_region(level, 0, 0, *self.levels[level].shape[:2])
        scale = 1.0 / self.downsamples[level]
        longest = max(pixels.shape[:2])
        if longest > max_side:
            ratio = max_side / longest
            size = (max(1, round(pixels.shape[1] * ratio)), max(1, round(pixels.shape[0] * ratio)))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))
            scale *= ratio
        return pixels, scale


def _reopened(path: Path) -> SlideImage:
    from napari_spahgc.io.images import open_image

    return open_image(path)


@dataclass
class Slide:
    """A section: lazy image, spots with their ids and centres, optional measured expression.

    - ``spot_ids`` are exactly the input's ids (10x barcodes, legacy-ST ``"{x}x{y}"``, h5ad obs_names)
      and stay unchanged through every output.
    - ``centers_px`` is (n, 2) float64 of full-resolution pixel centres, column 0 = x (column),
      column 1 = y (row).
    - ``expression`` holds raw counts with ``obs_names == spot_ids`` (None for a slide to predict).
    - ``labels``: a per-spot labels table (tissue domains; the cohort's optional ``labels`` column)
      that the benchmark scores domains against (:mod:`napari_spahgc.downstream.labels`).
    """

    slide_id: str
    spot_ids: pd.Index
    centers_px: np.ndarray
    image: SlideImage | None = None
    pixel_size_um: float | None = None
    pixel_size_source: str | None = None
    expression: ad.AnnData | None = None
    patient: str | None = None
    spot_diameter_px: float | None = None
    sources: dict[str, str] = field(default_factory=dict)
    labels: str | None = None

    def __post_init__(self) -> None:
        self.spot_ids = pd.Index(self.spot_ids.astype(str), name="spot_id")
        self.centers_px = np.asarray(self.centers_px, dtype=np.float64).reshape(-1, 2)
        if len(self.spot_ids) != len(self.centers_px):
            raise ValueError("spot_ids and centers_px differ in length")
        if self.expression is not None and not self.expression.obs_names.equals(self.spot_ids):
            raise ValueError("expression rows must be exactly the slide's spots, in order")

    @property
    def n_spots(self) -> int:
        return len(self.spot_ids)

    @property
    def n_genes(self) -> int:
        return 0 if self.expression is None else self.expression.n_vars

    @property
    def has_expression(self) -> bool:
        return self.expression is not None

    def require_pixel_size(self) -> float:
        """The pixel size in µm/px, or a clear error saying how to provide it."""
        if self.pixel_size_um is None:
            raise InputError(
                f"slide {self.slide_id!r} has no known pixel size (no OME/TIFF/SVS metadata, no scalefactors). "
                "Give it in the cohort table's pixel_size_um column (µm per full-resolution pixel) "
                "or with --pixel-size.",
                self.sources.get("image"),
            )
        return self.pixel_size_um

    def summary(self) -> dict:
        """One JSON-friendly record, as ``spahgc info`` prints it."""
        return {
            "slide_id": self.slide_id,
            "n_spots": self.n_spots,
            "n_genes": self.n_genes,
            "image_shape": list(self.image.shape) if self.image is not None else None,
            "pixel_size_um": self.pixel_size_um,
            "pixel_size_source": self.pixel_size_source,
            "n_levels": self.image.n_levels if self.image is not None else 0,
            "patient": self.patient,
            "spot_diameter_px": self.spot_diameter_px,
        }
