"""Synthetic slides of real Visium / Visium HD size from the real HER2ST sections, as Space Ranger folders.

    python benchmarks/scale_slides.py --kind visium --section C2 --out /tmp/vis_c2
    python benchmarks/scale_slides.py --kind hd --section C2 --spots 200000 --out /tmp/hd_c2_200k

- ``visium``: a hexagonal grid of 100 µm pitch (55 µm spots) over the section's image (0.735 µm/px):
  ≈ 5,700 spots for a whole section, or the ``--spots`` nearest the tissue centre. ``outs/`` with
  ``spatial/tissue_positions.csv``, ``scalefactors_json.json``, ``tissue_hires_image.png`` and a 10x
  ``filtered_feature_bc_matrix.h5``; the image is the section's own JPEG (named in ``cohort.csv``).
- ``hd``: the section upscaled 2× (0.3675 µm/px), written tile by tile as a tiled JPEG pyramid TIFF
  (``image.tif``; one band of tiles in memory), with 8 µm square bins over it (≈ 775,000 for a whole
  section, or a crop holding ``--spots`` bins centred on the spot nearest the tissue centre): ``binned_outputs/square_008um/`` with
  ``spatial/tissue_positions.parquet`` and scalefactors carrying ``bin_size_um`` and ``microns_per_pixel``.

Counts: each synthetic spot takes the nearest real ST spot's profile (cKDTree); its total is the real
spot's total × the area ratio (55 µm disc or 8 µm square over a 100 µm disc; ×0.05 off the tissue) and
its UMIs are drawn from the profile (Poisson total, multinomial genes: the same as independent Poisson
per gene), sparse throughout. Every output goes through the project's readers unchanged
(``read_cohort``/``read_spaceranger``/``open_image``); ``cohort.csv`` in ``--out`` names the slide.
HER2ST: Andersson et al., Nature Communications 12, 6012 (2021).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tifffile
from scipy.spatial import cKDTree

import napari_spahgc as ns
from napari_spahgc.base.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_UM_PER_PX = 0.735
ST_SPOT_AREA_UM2 = np.pi * 50.0**2  # a legacy-ST spot: 100 µm across
OFF_TISSUE = 0.05  # total-count factor beyond one ST pitch (272 px) of any real spot
_TILE = 512


def her2st_section(section: str) -> ns.Slide:
    """One HER2ST section through the project's cohort reader (image pyramid, spots, counts)."""
    entries = {e.slide_id: e for e in ns.read_cohort(ROOT / "examples" / "her2st_cohort.csv")}
    return entries[section].load()


def hex_grid(shape_rc: tuple[int, int], pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """(xy centres, (array_row, array_col)) of a Visium-like hexagonal grid over ``shape_rc`` pixels."""
    dy = pitch * np.sqrt(3) / 2
    rows = np.arange(int((shape_rc[0] - pitch / 2) // dy))
    cols = np.arange(int((shape_rc[1] - pitch) // pitch))
    r, c = np.meshgrid(rows, cols, indexing="ij")
    x = pitch / 2 + c * pitch + (r % 2) * pitch / 2
    xy = np.stack([x.ravel(), pitch / 2 + r.ravel() * dy], axis=1)
    return xy, np.stack([r.ravel(), 2 * c.ravel() + r.ravel() % 2], axis=1)


def bin_grid(shape_rc: tuple[int, int], pitch: float, n: int | None) -> tuple[int, int, int]:
    """(rows, cols, n) of a square bin grid: the whole ``shape_rc`` or a near-square block of ``n``."""
    max_rows, max_cols = int(shape_rc[0] // pitch), int(shape_rc[1] // pitch)
    if n is None or n >= max_rows * max_cols:
        return max_rows, max_cols, max_rows * max_cols
    cols = min(int(np.ceil(np.sqrt(n))), max_cols)
    return int(np.ceil(n / cols)), cols, n


def synthetic_counts(
    real: ns.Slide, real_xy: np.ndarray, xy: np.ndarray, area_ratio: float, seed: int
) -> sp.csr_matrix:
    """Sparse UMI counts (spots × real genes) drawn from the nearest real spot's profile."""
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(real.expression.X, dtype=np.float64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    distance, near = cKDTree(real_xy).query(xy)
    pitch = float(np.median(cKDTree(real_xy).query(real_xy, k=2)[0][:, 1]))
    mean = totals[near] * area_ratio * np.where(distance > pitch, OFF_TISSUE, 1.0)
    umis = rng.poisson(mean).astype(np.int64)
    order = np.argsort(near, kind="stable")
    starts = np.searchsorted(near[order], np.arange(len(totals) + 1))
    rows, cols = [], []
    for k in np.flatnonzero(np.diff(starts)):  # one draw per real spot (~200), not per synthetic spot
        spots = order[starts[k] : starts[k + 1]]
        profile = counts[k].toarray().ravel() / max(totals[k], 1.0)
        rows.append(np.repeat(spots, umis[spots]).astype(np.int32))
        cols.append(rng.choice(len(profile), size=int(umis[spots].sum()), p=profile).astype(np.int32))
    coo = sp.coo_matrix(
        (np.ones(sum(map(len, rows)), np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(xy), counts.shape[1]),
    )
    return coo.tocsr()


def write_10x_h5(path: Path, counts: sp.csr_matrix, barcodes: np.ndarray, genes: list[str]) -> Path:
    """A Cell Ranger v3 matrix: CSC of genes × barcodes, i.e. the spots × genes CSR arrays as they are."""
    counts.sum_duplicates()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        group = handle.create_group("matrix")
        group.create_dataset("data", data=counts.data.astype(np.int32), compression="lzf")
        group.create_dataset("indices", data=counts.indices.astype(np.int64), compression="lzf")
        group["indptr"] = counts.indptr.astype(np.int64)
        group["shape"] = np.array([counts.shape[1], counts.shape[0]], dtype=np.int32)
        group.create_dataset("barcodes", data=barcodes.astype("S"), compression="lzf")
        features = group.create_group("features")
        features["id"] = np.array([f"SYN{i:011d}" for i in range(len(genes))], dtype="S")
        features["name"] = np.array(genes, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
    return path


#: Space Ranger's low-resolution image: at most 600 px on its longer side.
LOWRES_SIDE = 600


def write_spatial(folder: Path, positions: pd.DataFrame, factors: dict, hires: np.ndarray) -> None:
    """``spatial/`` as Space Ranger writes it: positions, scalefactors, the hires image and the lowres
    one (its scalefactor added to ``factors``)."""
    from PIL import Image

    shrink = LOWRES_SIDE / max(hires.shape[:2])
    lowres = Image.fromarray(hires).reduce(max(1, int(np.ceil(1 / shrink))))
    factors = {**factors, "tissue_lowres_scalef": factors["tissue_hires_scalef"] * lowres.width / hires.shape[1]}

    spatial = folder / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    if folder.name.startswith("square_"):
        with atomic_path(spatial / "tissue_positions.parquet") as tmp:
            positions.to_parquet(tmp, index=False)
    else:
        with atomic_path(spatial / "tissue_positions.csv") as tmp:
            positions.to_csv(tmp, index=False)
    with atomic_path(spatial / "scalefactors_json.json") as tmp:
        tmp.write_text(json.dumps(factors, indent=2))
    with atomic_path(spatial / "tissue_hires_image.png") as tmp:
        Image.fromarray(hires).save(tmp, format="PNG")
    with atomic_path(spatial / "tissue_lowres_image.png") as tmp:
        lowres.save(tmp, format="PNG")


def hires_of(real: ns.Slide, r0: int, c0: int, rows: int, cols: int, side: int = 2000):
    """A thumbnail (≤ ``side``) of a source region, and its scale relative to the source pixels."""
    level = real.image.level_for_downsample(max(rows, cols) / side)
    step = real.image.downsamples[level]
    region = real.image.read_region(level, int(r0 / step), int(c0 / step), int(rows / step), int(cols / step))
    return region, 1.0 / step


def write_cohort(out: Path, slide_id: str, image: Path, folder: Path, pixel_size: float) -> Path:
    path = out / "cohort.csv"
    row = {"slide_id": slide_id, "image": image.resolve(), "spots": folder.resolve(),
           "counts": folder.resolve(), "pixel_size_um": pixel_size, "patient": "C"}  # fmt: skip
    with atomic_path(path) as tmp:
        pd.DataFrame([row]).to_csv(tmp, index=False)
    return path


def make_visium(section: str, out: Path, n: int | None = None, seed: int = 0) -> Path:
    """A Visium-like ``outs/`` folder over ``section``; returns the cohort table naming it."""
    real = her2st_section(section)
    pitch = 100.0 / SOURCE_UM_PER_PX
    xy, array = hex_grid(real.image.shape, pitch)
    if n is not None and n < len(xy):
        centre = real.centers_px.mean(axis=0)
        keep = np.sort(np.argsort(np.abs(xy - centre).max(axis=1), kind="stable")[:n])
        xy, array = xy[keep], array[keep]
    counts = synthetic_counts(real, real.centers_px, xy, np.pi * 27.5**2 / ST_SPOT_AREA_UM2, seed)
    index = np.arange(len(xy))[:, None] // 4 ** np.arange(16)[None, :] % 4
    barcodes = pd.DataFrame(np.array(list("ACGT"))[index]).agg("".join, axis=1).to_numpy() + "-1"
    folder = out / "outs"
    positions = pd.DataFrame({
        "barcode": barcodes, "in_tissue": 1, "array_row": array[:, 0], "array_col": array[:, 1],
        "pxl_row_in_fullres": np.rint(xy[:, 1]).astype(int), "pxl_col_in_fullres": np.rint(xy[:, 0]).astype(int),
    })  # fmt: skip
    hires, scale = hires_of(real, 0, 0, *real.image.shape)
    factors = {"spot_diameter_fullres": 55.0 / SOURCE_UM_PER_PX, "tissue_hires_scalef": scale,
               "fiducial_diameter_fullres": 65.0 / SOURCE_UM_PER_PX}  # fmt: skip
    write_spatial(folder, positions, factors, hires)
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, barcodes, list(real.expression.var_names))
    return write_cohort(out, f"{section}_visium", real.image.path, folder, SOURCE_UM_PER_PX)


def write_upscaled_pyramid(path: Path, real: ns.Slide, r0: int, c0: int, rows: int, cols: int) -> Path:
    """The source region (r0, c0, rows, cols) at 2× as a tiled JPEG pyramid TIFF, streamed by bands:
    level 0 repeats each source pixel 2 × 2; level k ≥ 1 is the source pyramid's level of downsample
    2^(k-1) (one band of ``_TILE`` output rows in memory)."""
    shapes = [(rows * 2, cols * 2)]
    while max(shapes[-1]) > 2 * _TILE:
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as writer:
        for index, shape in enumerate(shapes):
            writer.write(
                _level_tiles(real, r0, c0, shape, index),
                shape=(*shape, 3), dtype=np.uint8, tile=(_TILE, _TILE), photometric="rgb",
                compression="jpeg", compressionargs={"level": 90},
                subifds=len(shapes) - 1 if index == 0 else None, subfiletype=1 if index else 0,
                metadata={"axes": "YXS", "PhysicalSizeX": SOURCE_UM_PER_PX / 2,
                          "PhysicalSizeY": SOURCE_UM_PER_PX / 2} if index == 0 else None,
            )  # fmt: skip
    return path


def _level_tiles(real: ns.Slide, r0: int, c0: int, shape: tuple[int, int], index: int):
    """Row-major tiles of output level ``index`` (downsample 2^index of the 2× image)."""
    factor = 2.0 ** (index - 1)  # source pixels per output pixel
    level = real.image.level_for_downsample(max(factor, 1.0))
    step = real.image.downsamples[level]
    for top in range(0, shape[0], _TILE):
        height = min(_TILE, shape[0] - top)
        if index == 0:
            band = real.image.read_region(level, r0 + top // 2, c0, (height + 1) // 2 + 1, shape[1] // 2 + 1)
            band = band.repeat(2, axis=0).repeat(2, axis=1)[top % 2 : top % 2 + height, : shape[1]]
        else:
            sub = factor / step  # output pixel in pixels of the chosen source level (≥ 1, a power of 2)
            src = real.image.read_region(
                level, int((r0 + top * factor) / step), int(c0 / step), int(height * sub), int(shape[1] * sub)
            )
            band = src[:: max(int(sub), 1), :: max(int(sub), 1)][:height, : shape[1]]
        for left in range(0, shape[1], _TILE):
            tile = np.zeros((_TILE, _TILE, 3), np.uint8)
            chunk = band[:, left : left + _TILE]
            tile[: chunk.shape[0], : chunk.shape[1]] = chunk
            yield tile


def make_hd(section: str, out: Path, n: int | None = None, seed: int = 0, margin_px: int = 400) -> Path:
    """A Visium HD-like ``binned_outputs/square_008um/`` folder over ``section`` upscaled 2×."""
    real = her2st_section(section)
    um = SOURCE_UM_PER_PX / 2
    pitch = 8.0 / um
    full = (real.image.shape[0] * 2, real.image.shape[1] * 2)
    n_rows, n_cols, n = bin_grid(full, pitch, n)
    extent = np.array([n_rows, n_cols]) * pitch
    mean = real.centers_px.mean(axis=0)  # the spot nearest the spots' mean: on tissue, which the mean
    nearest = real.centers_px[np.argmin(((real.centers_px - mean) ** 2).sum(axis=1))]  # may not be (C3)
    centre = nearest[::-1] * 2  # (row, col) at 2×
    origin = np.clip(centre - extent / 2, 0, np.array(full) - extent)  # of the bins, 2× px
    crop0 = np.maximum(np.floor((origin - margin_px) / 2).astype(int), 0)  # source px
    crop1 = np.minimum(np.ceil((origin + extent + margin_px) / 2).astype(int), real.image.shape)
    index = np.arange(n)
    r, c = np.divmod(index, n_cols)
    xy = np.stack(
        [(c + 0.5) * pitch + origin[1] - 2 * crop0[1], (r + 0.5) * pitch + origin[0] - 2 * crop0[0]], 1
    )
    source_xy = (xy + 2 * crop0[::-1]) / 2
    counts = synthetic_counts(real, real.centers_px, source_xy, 8.0**2 / ST_SPOT_AREA_UM2, seed)
    barcodes = ("s_008um_" + pd.Series(r).astype(str).str.zfill(5) + "_"
                + pd.Series(c).astype(str).str.zfill(5) + "-1").to_numpy()  # fmt: skip
    folder = out / "binned_outputs" / "square_008um"
    image = write_upscaled_pyramid(out / "image.tif", real, *crop0, *(crop1 - crop0))
    positions = pd.DataFrame({
        "barcode": barcodes, "in_tissue": 1, "array_row": r, "array_col": c,
        "pxl_row_in_fullres": xy[:, 1], "pxl_col_in_fullres": xy[:, 0],
    })  # fmt: skip
    hires, scale = hires_of(real, *crop0, *(crop1 - crop0))
    factors = {"spot_diameter_fullres": pitch, "bin_size_um": 8.0, "microns_per_pixel": um,
               "tissue_hires_scalef": scale / 2}  # fmt: skip
    write_spatial(folder, positions, factors, hires)
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, barcodes, list(real.expression.var_names))
    write_feature_slice(out / "feature_slice.h5")
    return write_cohort(out, f"{section}_hd{n}", image, folder, um)


def write_feature_slice(path: Path) -> Path:
    """The metadata part of Space Ranger HD's ``feature_slice.h5`` (its layout's file format), which
    spatialdata-io's reader checks; the per-gene slices themselves are not written."""
    metadata = {"hd_layout_json": json.dumps({"file_format": "1.0"})}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["metadata_json"] = json.dumps(metadata)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("visium", "hd"), required=True)
    parser.add_argument("--section", default="C2", choices=("C2", "C3", "C4", "C5", "C6"))
    parser.add_argument(
        "--spots", type=int, default=None, help="number of spots/bins (default: whole section)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    make = make_visium if args.kind == "visium" else make_hd
    print(make(args.section, args.out, args.spots, args.seed))


if __name__ == "__main__":
    main()
