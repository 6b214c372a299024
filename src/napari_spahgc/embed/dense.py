"""Dense embedding: one encoder pass per tissue tile, then each spot's field averaged from the feature map.

Per-spot embedding crops a 224 px patch at 0.5 µm/px around every spot and runs the encoder on it, so
the cost grows with the number of spots (Visium HD: ~775k bins a slide). Here the slide is cut into
tiles at the same scale, each tile goes through the encoder once (:meth:`Encoder.feature_grid`: a CNN's
map before pooling, a ViT's patch tokens), and the cells of the resulting global feature grid are
averaged over each spot's field — the cells whose centres lie inside its 112 µm square — with an
integral image (cumulative sums), so the cost follows the tissue area, not the spot count.

- Only the tiles some spot's field reaches are needed. Of those, the ones with tissue
  (:mod:`~napari_spahgc.embed.tissue`) go through the encoder; the others (bare glass: Visium HD's raw bins
  off the section) get the feature of a blank white tile, computed once — so every spot gets an
  embedding, and glass costs nothing. A tile's input overlaps its neighbours by ``margin_px`` (half a field)
  on each side so the kept interior cells see real context; only the interior is kept.
- The grid is held one band of tiles (a tile row) at a time, float16: a spot is averaged once its own
  band and the two beside it are done, and bands no spot needs any more are dropped. Peak memory is
  about three bands, not the slide.
- :func:`dense_embeddings` is a generator that yields a :class:`~napari_spahgc.base.progress.Progress` of
  tiles (with ``values['spots_done']``, the spots whose embedding is final) after each tile batch and
  returns the (n_spots, dim) embeddings in spot order, float16 like the grid cells they average (a
  rounding of at most 2⁻¹² relative; half the memory and cache of float32: 1.8 GB, not 3.6 GB, for
  700,000 bins × 1280). Every consumer standardises them to float32 block by block.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from napari_spahgc.base.progress import Progress
from napari_spahgc.embed.patches import PatchSpec, prefetch
from napari_spahgc.embed.tissue import TissueMask, detect_tissue
from napari_spahgc.io.slide import Slide

#: Overlap of neighbouring tiles' inputs (target px at 0.5 µm/px): half a 224 px field.
MARGIN_PX = 112
#: Channels summed at a time in the box filter (bounds the float64 integral image).
CHANNEL_CHUNK = 64


@dataclass(frozen=True)
class DenseGrid:
    """The geometry of a slide's feature grid: target px per full-resolution px and per cell."""

    full_per_target: float  # full-resolution px per target px
    stride: int  # target px per feature cell
    offset: float  # the centre of cell k at (k + offset) · stride target px (edge coordinates)
    tile: int  # kept cells per tile side
    margin: int  # extra cells read on each side of a tile

    @classmethod
    def of(cls, slide: Slide, encoder, spec: PatchSpec = PatchSpec(), margin_px: int = MARGIN_PX):
        enc = encoder.spec
        full_per_target = spec.um_per_px / slide.require_pixel_size()
        margin = math.ceil(margin_px / enc.grid_stride)
        return cls(full_per_target, enc.grid_stride, enc.grid_offset, enc.tile_cells, margin)

    @property
    def input_px(self) -> int:
        """Side of a tile's input in target px."""
        return (self.tile + 2 * self.margin) * self.stride

    def to_dict(self) -> dict:
        return {"stride": self.stride, "offset": self.offset, "tile": self.tile, "margin": self.margin}

    def spot_boxes(self, centers_px: np.ndarray, field_px: int) -> np.ndarray:
        """(n, 4) int: each spot's cells [row0, row1) × [col0, col1) whose centres lie in its field."""
        target = np.asarray(centers_px, dtype=np.float64) / self.full_per_target  # (x, y) target px
        low = np.ceil((target - field_px / 2) / self.stride - self.offset).astype(np.int64)
        high = np.ceil((target + field_px / 2) / self.stride - self.offset).astype(np.int64)
        return np.stack([low[:, 1], high[:, 1], low[:, 0], high[:, 0]], axis=1)

    def home_rows(self, centers_px: np.ndarray) -> np.ndarray:
        """The tile row holding each spot's centre."""
        target_y = np.asarray(centers_px, dtype=np.float64)[:, 1] / self.full_per_target
        return np.floor(target_y / (self.tile * self.stride)).astype(np.int64)


def needed_tiles(grid: DenseGrid, boxes: np.ndarray, tissue: TissueMask | None) -> tuple[set, set]:
    """(tile row, tile col) of every tile holding a cell of some spot's field, and those of them that
    are to be encoded: the ones on tissue (all of them without a mask)."""
    t = grid.tile
    rows = np.stack([boxes[:, 0] // t, (boxes[:, 1] - 1) // t], axis=1)
    cols = np.stack([boxes[:, 2] // t, (boxes[:, 3] - 1) // t], axis=1)
    pairs = np.stack([np.repeat(rows, 2, axis=1).ravel(), np.tile(cols, (1, 2)).ravel()], axis=1)
    tiles = {tuple(map(int, p)) for p in np.unique(pairs, axis=0)} if len(pairs) else set()
    if tissue is None:
        return tiles, tiles
    side = t * grid.stride * grid.full_per_target  # a tile's interior in full-resolution px
    return tiles, {(ty, tx) for ty, tx in tiles if tissue.contains(ty * side, tx * side, side, side)}


def glass_feature(encoder, grid: DenseGrid) -> np.ndarray:
    """The (dim,) feature of the centre cell of a blank white tile: what bare glass encodes to."""
    white = np.full((1, grid.input_px, grid.input_px, 3), 255, dtype=np.uint8)
    features = encoder.feature_grid(white)[0]
    return features[features.shape[0] // 2, features.shape[1] // 2]


def read_tile(slide: Slide, grid: DenseGrid, ty: int, tx: int) -> np.ndarray:
    """The (input_px, input_px, 3) uint8 input of tile (ty, tx), read from the pyramid like a spot patch
    (the level nearest the target scale that is at least as fine, resampled sub-pixel exactly; outside
    the image is white)."""
    image = slide.image
    level = image.level_for_downsample(grid.full_per_target)
    scale = grid.full_per_target / image.downsamples[level]  # level px per target px
    origin = ((np.array([ty, tx]) * grid.tile - grid.margin) * grid.stride) * scale
    side = grid.input_px * scale
    top, left = origin
    row0, col0 = math.floor(top), math.floor(left)
    rows, cols = math.ceil(top + side) - row0, math.ceil(left + side) - col0
    region = image.read_region(level, row0, col0, max(rows, 1), max(cols, 1))
    box = (left - col0, top - row0, left - col0 + side, top - row0 + side)
    size = (grid.input_px, grid.input_px)
    return np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR, box=box))


def dense_embeddings(
    slide: Slide,
    encoder,
    spec: PatchSpec = PatchSpec(),
    tiles_per_batch: int = 1,
    prefetch_depth: int = 1,
    tissue: TissueMask | bool | None = True,
) -> Generator[Progress, None, np.ndarray]:
    """Embed every spot of ``slide`` densely; yield progress per tile batch, return (n_spots, dim) float16.

    ``tissue``: True detects it on the thumbnail; a :class:`TissueMask` is used as given; None or False
    encodes every tile a spot's field reaches, glass too. Stop iterating to cancel between tile batches.
    """
    if slide.image is None:
        raise ValueError(f"slide {slide.slide_id!r} has no image")
    grid = DenseGrid.of(slide, encoder, spec)
    if tissue is True:
        tissue = detect_tissue(slide.image, pixel_size_um=slide.pixel_size_um)
    boxes = grid.spot_boxes(slide.centers_px, spec.size)
    home = grid.home_rows(slide.centers_px)
    tiles, encoded = needed_tiles(grid, boxes, tissue or None)
    out = np.zeros((slide.n_spots, encoder.dim), dtype=np.float16)
    if not tiles:
        return out
    glass = glass_feature(encoder, grid) if tiles - encoded else None
    col_min = min(tx for _, tx in tiles)
    width = (max(tx for _, tx in tiles) - col_min + 1) * grid.tile
    bands: dict[int, np.ndarray] = {}
    done_tiles, done_spots = 0, 0
    row_lo, row_hi = min(min(ty for ty, _ in tiles), int(home.min())), max(ty for ty, _ in tiles)
    for ty in range(row_lo, row_hi + 2):
        row = sorted(tx for y, tx in encoded if y == ty)
        if any(y == ty for y, _ in tiles):
            bands[ty] = np.zeros((grid.tile, width, encoder.dim), dtype=np.float16)
            for tx in (tx for y, tx in tiles - encoded if y == ty):
                bands[ty][:, (tx - col_min) * grid.tile : (tx - col_min + 1) * grid.tile] = glass
        for n in _fill_band(
            slide, encoder, grid, ty, row, bands, col_min, width, tiles_per_batch, prefetch_depth
        ):
            done_tiles += n
            yield Progress(done_tiles, len(encoded), stage="embed", values={"spots_done": done_spots})
        done_spots += _finish_row(ty - 1, home, boxes, bands, grid, col_min, width, out)
        bands.pop(ty - 2, None)  # no spot left needs it
    yield Progress(done_tiles, len(encoded), stage="embed", values={"spots_done": done_spots})
    return out


def _fill_band(slide, encoder, grid, ty, row, bands, col_min, width, tiles_per_batch, prefetch_depth):
    """Encode the tiles ``row`` of tile row ``ty`` into ``bands[ty]``; yield the tiles done per batch."""
    if not row:
        return
    band = bands[ty]
    groups = [row[i : i + tiles_per_batch] for i in range(0, len(row), tiles_per_batch)]
    batches = (np.stack([read_tile(slide, grid, ty, tx) for tx in group]) for group in groups)
    kept = slice(grid.margin, grid.margin + grid.tile)
    for group, batch in zip(
        groups, prefetch(batches, prefetch_depth) if prefetch_depth else batches, strict=False
    ):
        features = encoder.feature_grid(batch)
        for tx, feature in zip(group, features, strict=True):
            col = (tx - col_min) * grid.tile
            band[:, col : col + grid.tile] = feature[kept, kept]
        yield len(group)


def _finish_row(r, home, boxes, bands, grid, col_min, width, out) -> int:
    """Average the field of each spot whose centre lies in tile row ``r`` from bands r−1, r, r+1."""
    idx = np.flatnonzero(home == r)
    if not len(idx):
        return 0
    t, dim = grid.tile, out.shape[1]
    empty = np.zeros((t, width, dim), dtype=np.float16)
    stack = np.concatenate([bands.get(r + d, empty) for d in (-1, 0, 1)])
    y0, y1 = boxes[idx, 0] - (r - 1) * t, boxes[idx, 1] - (r - 1) * t
    x0, x1 = boxes[idx, 2] - col_min * t, boxes[idx, 3] - col_min * t
    y0, y1 = np.clip(y0, 0, 3 * t), np.clip(y1, 0, 3 * t)
    x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    area = np.maximum((y1 - y0) * (x1 - x0), 1)[:, None]
    for c in range(0, dim, CHANNEL_CHUNK):
        integral = np.zeros((3 * t + 1, width + 1, min(CHANNEL_CHUNK, dim - c)))
        np.cumsum(stack[..., c : c + CHANNEL_CHUNK], axis=0, dtype=np.float64, out=integral[1:, 1:])
        np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
        total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        out[idx, c : c + CHANNEL_CHUNK] = total / area
    return len(idx)
