"""Tissue detection on a slide thumbnail: Otsu's threshold on colour saturation, then a small clean-up.

H&E tissue is pink to purple and the glass is near-white or grey, so saturation separates them better
than brightness does (pen marks and dark dust are grey, so they stay out). The threshold is
scikit-image's ``threshold_otsu``; the clean-up (closing, opening, filling holes, dropping specks) is
``scipy.ndimage``. The mask is a boolean array at thumbnail scale; :meth:`TissueMask.contains` says
whether a full-resolution rectangle holds any tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_spahgc.io.slide import SlideImage

#: Longest side of the thumbnail the mask is computed on (about 4–5 full-resolution px per mask px
#: for a 10k px image; a whole-slide image gets a coarser, still tile-sized, mask).
THUMBNAIL_SIDE = 2048
#: Saturation (0–1) below which a pixel is never tissue, whatever Otsu's threshold says (blank slides).
MIN_SATURATION = 0.05
#: Median saturation above which the pixels under Otsu's threshold are not glass but paler tissue: an
#: image that tissue fills (a crop, a core) has no glass class, and all of it above MIN_SATURATION is
#: tissue. HER2ST's glass has medians 0.02–0.08; its tissue ≈ 0.33.
MAX_GLASS_SATURATION = 0.12
#: Names the detector and its settings in dense embedding cache keys (change it when they change).
TISSUE_METHOD = "otsu-saturation-2048-v2"


@dataclass(frozen=True)
class TissueMask:
    """``mask`` (rows, cols) bool at thumbnail scale; ``scale`` = thumbnail px per full-resolution px."""

    mask: np.ndarray
    scale: float
    threshold: float

    def contains(self, row0: float, col0: float, rows: float, cols: float) -> bool:
        """Whether the full-resolution rectangle (row0, col0, rows, cols) covers any tissue pixel."""
        r0, c0 = max(int(np.floor(row0 * self.scale)), 0), max(int(np.floor(col0 * self.scale)), 0)
        r1 = min(int(np.ceil((row0 + rows) * self.scale)), self.mask.shape[0])
        c1 = min(int(np.ceil((col0 + cols) * self.scale)), self.mask.shape[1])
        return bool(r1 > r0 and c1 > c0 and self.mask[r0:r1, c0:c1].any())

    def at(self, xy: np.ndarray) -> np.ndarray:
        """Whether each full-resolution (x, y) point (n, 2) lies on tissue (outside the image: no)."""
        cols = np.floor(np.asarray(xy)[:, 0] * self.scale).astype(int)
        rows = np.floor(np.asarray(xy)[:, 1] * self.scale).astype(int)
        inside = (rows >= 0) & (cols >= 0) & (rows < self.mask.shape[0]) & (cols < self.mask.shape[1])
        out = np.zeros(len(rows), dtype=bool)
        out[inside] = self.mask[rows[inside], cols[inside]]
        return out

    @property
    def fraction(self) -> float:
        """The share of the image that is tissue."""
        return float(self.mask.mean())


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (0–1) of a uint8 (rows, cols, 3) image."""
    pixels = rgb[..., :3].astype(np.float32)
    high, low = pixels.max(axis=-1), pixels.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0.0).astype(np.float32)


def detect_tissue(
    image: SlideImage,
    max_side: int = THUMBNAIL_SIDE,
    min_area_um2: float = 2e4,
    pixel_size_um: float | None = None,
) -> TissueMask:
    """The tissue mask of ``image``: Otsu on the thumbnail's saturation (or, when the pixels under
    Otsu's threshold are too saturated to be glass, everything above ``MIN_SATURATION``), cleaned up.

    Objects smaller than ``min_area_um2`` (default 0.02 mm², about a 140 µm square) are dropped when the
    pixel size is known (``pixel_size_um``, else the image's own); holes inside tissue are filled.
    """
    pixels, scale = image.thumbnail(max_side)
    sat = saturation(pixels)
    threshold = max(_otsu(sat), MIN_SATURATION)
    if np.median(sat[sat <= threshold]) > MAX_GLASS_SATURATION:  # no glass: Otsu split the tissue
        threshold = MIN_SATURATION
    mask = sat > threshold
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
    mask = ndimage.binary_fill_holes(mask)
    um = pixel_size_um or image.pixel_size_um
    if um is not None:
        min_pixels = min_area_um2 / (um / scale) ** 2
        labels, n = ndimage.label(mask)
        if n:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            mask = (sizes >= min_pixels)[labels] & mask
    return TissueMask(mask, scale, float(threshold))


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (scikit-image's ``threshold_otsu``)."""
    from skimage.filters import threshold_otsu

    if values.size == 0 or float(values.max()) == float(values.min()):
        return float(values.max()) if values.size else 1.0
    return float(threshold_otsu(values, nbins=bins))
