"""Open slide images as lazy pyramids: TIFF / BigTIFF / OME-TIFF / SVS through tifffile + zarr, and
JPEG / PNG through a one-time conversion into a tiled pyramid TIFF in the cache folder.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from napari_spahgc.base.errors import InputError, describe
from napari_spahgc.base.files import atomic_path, cache_dir, file_fingerprint, require_file
from napari_spahgc.io.slide import PLAUSIBLE_UM_PER_PX, SlideImage

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".ome.tif", ".ome.tiff", ".ndpi", ".scn")
FLAT_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_SUFFIXES = TIFF_SUFFIXES + FLAT_SUFFIXES

_TILE = 512
_COARSEST_SIDE = 1024  # the smallest pyramid level fits a viewer canvas (cheap first frame in napari)
_MAX_FLAT_PIXELS = 1_000_000_000  # a JPEG/PNG is decoded whole once: at most 3 GB of RGB
_MIN_BYTES_PER_PIXEL = 1e-4  # 1-bit PNG at deflate's best ratio: no real file claims more pixels
_MAX_CHUNK_BYTES = 512 << 20  # one TIFF tile or strip, decoded (what one patch read may cost)
_UNIT_TO_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "nm": 1e-3, "Å": 1e-4}


def open_image(path: str | Path) -> SlideImage:
    """Open ``path`` as a lazy :class:`SlideImage` (pixel size from metadata when the file has it)."""
    path = require_file(path, "image file")
    lower = path.name.lower()
    if lower.endswith(FLAT_SUFFIXES):
        image = _open_tiff(_flat_image_pyramid(path), display_path=path)
    elif lower.endswith(TIFF_SUFFIXES):
        image = _open_tiff(path, display_path=path)
    else:
        raise InputError(f"unsupported image type (expected one of {', '.join(IMAGE_SUFFIXES)})", path)
    image.reopen_from = path
    return image


def _open_tiff(path: Path, display_path: Path) -> SlideImage:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            _check_complete(tif, path)
            pixel_size, source = _tiff_pixel_size(tif)
            axes = series.axes
        store = tifffile.imread(path, aszarr=True, series=0)
        root = zarr.open(store, mode="r")
    except InputError:
        raise
    except Exception as err:  # tifffile raises many types for corrupt files
        raise InputError(f"cannot read image ({describe(err)})", display_path) from err
    arrays = (
        [root[key] for key in sorted(root.array_keys(), key=int)] if isinstance(root, zarr.Group) else [root]
    )
    for array in arrays:
        _check_chunks(array, display_path)
    levels = [_as_rgb(da.from_zarr(array), axes, display_path) for array in arrays]
    base_rows = levels[0].shape[0]
    downsamples = [base_rows / level.shape[0] for level in levels]
    return SlideImage(display_path, levels, downsamples, pixel_size, source)


def _check_complete(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse files whose image data runs past the end of the file (truncated copies)."""
    size = path.stat().st_size
    for level in tif.series[0].levels:
        for page in level.pages:
            if page is None:
                continue
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c]
            if ends and max(ends) > size:
                raise InputError("image data runs past the end of the file (truncated?)", path)


def _as_rgb(array: da.Array, axes: str, path: Path) -> da.Array:
    """Bring a level to (rows, cols, 3) uint8 without reading it."""
    axes = axes.upper()
    if len(axes) != array.ndim:
        axes = axes[-array.ndim :]
    keep = {"Y", "X", "S", "C"}
    index = tuple(slice(None) if ax in keep else 0 for ax in axes)
    array = array[index]
    axes = "".join(ax for ax in axes if ax in keep)
    if "C" in axes and "S" not in axes:
        axes = axes.replace("C", "S")
    if "S" not in axes:
        array, axes = da.stack([array] * 3, axis=-1), axes + "S"
    array = da.moveaxis(array, [axes.index("Y"), axes.index("X"), axes.index("S")], [0, 1, 2])
    if array.shape[2] < 3:
        array = da.concatenate([array] + [array[..., :1]] * (3 - array.shape[2]), axis=2)
    array = array[..., :3]
    if array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InputError(f"unsupported pixel type {array.dtype} (expected 8-bit RGB or 16-bit)", path)
    return array


def _tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[float | None, str | None]:
    """Pixel size in µm/px from OME, SVS or plain TIFF resolution tags, if the file states one."""
    if tif.is_ome and tif.ome_metadata:
        size = _ome_pixel_size(tif.ome_metadata)
        if size is not None:
            return size, "OME metadata"
    page = tif.pages.first
    if tif.is_svs:
        match = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if match and _plausible(float(match.group(1))):
            return float(match.group(1)), "SVS metadata"
    unit = page.tags.get("ResolutionUnit")
    resolution = page.tags.get("XResolution")
    if unit is not None and resolution is not None and int(unit.value) in (2, 3):
        numerator, denominator = resolution.value
        if numerator and denominator:
            per_unit = numerator / denominator
            um = (25400.0 if int(unit.value) == 2 else 10000.0) / per_unit
            if _plausible(um):
                return um, "TIFF resolution tags"
    return None, None


def _ome_pixel_size(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and element.get("PhysicalSizeX"):
            unit = element.get("PhysicalSizeXUnit", "µm")
            size = float(element.get("PhysicalSizeX")) * _UNIT_TO_UM.get(unit, 1.0)
            return size if _plausible(size) else None
    return None


def _plausible(um_per_px: float) -> bool:
    return PLAUSIBLE_UM_PER_PX[0] <= um_per_px <= PLAUSIBLE_UM_PER_PX[1]


def _flat_image_pyramid(path: Path) -> Path:
    """Convert a JPEG/PNG once into a tiled pyramid TIFF in the cache; return the cached file.

    JPEG and PNG have no random access, so the image is decoded once (peak memory ≈ rows × cols × 3
    bytes); every later read — patches, the napari view — reads tiles of the cached pyramid.
    """
    target = cache_dir("pyramids") / f"{path.stem}-{file_fingerprint(path)}.tif"
    if target.is_file():
        return target
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, _MAX_FLAT_PIXELS)
    try:
        with Image.open(path) as opened:
            _check_flat_budget(opened.size, path)  # from the header, before anything is decoded
            opened.load()
            image = opened if opened.mode == "RGB" else opened.convert("RGB")
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(f"image is too large to decode whole ({err})", path) from None
    except Exception as err:
        raise InputError(f"cannot decode image ({describe(err)})", path) from err
    levels = [image]
    while max(levels[-1].size) > _COARSEST_SIDE:
        levels.append(levels[-1].reduce(2))
    with atomic_path(target) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as writer:
        for index, level in enumerate(levels):
            width, height = level.size
            writer.write(
                _tiles(level),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(_TILE, _TILE),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 1},
                subifds=len(levels) - 1 if index == 0 else None,
                subfiletype=1 if index else 0,
                metadata={"axes": "YXS"} if index == 0 else None,
            )
    return target


def _check_flat_budget(size: tuple[int, int], path: Path) -> None:
    """Refuse a JPEG/PNG whose claimed size cannot be real (a decompression bomb) or would not fit in
    memory decoded whole; the message says how to convert it."""
    import psutil

    width, height = size
    pixels = width * height
    advice = (
        "convert it to a tiled pyramid TIFF (e.g. vips tiffsave --tile --pyramid), which is read tile by tile"
    )
    if path.stat().st_size < pixels * _MIN_BYTES_PER_PIXEL:
        raise InputError(
            f"a {path.stat().st_size}-byte file cannot hold the {width} × {height} px it claims "
            "(corrupt, or a decompression bomb)",
            path,
        )
    needed = pixels * 3 * 2  # the decoded RGB image and its pyramid levels
    if pixels > _MAX_FLAT_PIXELS or needed > psutil.virtual_memory().available:
        raise InputError(
            f"{width} × {height} px is too large to decode whole ({needed / 1e9:.1f} GB needed, limit "
            f"{_MAX_FLAT_PIXELS / 1e9:g} Gpx); {advice}",
            path,
        )


def _check_chunks(array: zarr.Array, path: Path) -> None:
    """Refuse a TIFF whose tiles or strips are so large that reading one patch would decode gigabytes."""
    chunk_bytes = int(np.prod(array.chunks)) * array.dtype.itemsize
    if chunk_bytes > _MAX_CHUNK_BYTES:
        raise InputError(
            f"its tiles/strips are {' × '.join(map(str, array.chunks))} ({chunk_bytes / 1e9:.1f} GB decoded "
            f"each; limit {_MAX_CHUNK_BYTES >> 20} MB): write it as a tiled TIFF",
            path,
        )


def _tiles(image) -> Iterator[np.ndarray]:
    """Row-major tiles of a PIL image, padded to the tile size, one tile band in memory at a time."""
    width, height = image.size
    for top in range(0, height, _TILE):
        band = np.asarray(image.crop((0, top, width, min(top + _TILE, height))))
        for left in range(0, width, _TILE):
            tile = np.zeros((_TILE, _TILE, 3), np.uint8)
            chunk = band[:, left : left + _TILE]
            tile[: chunk.shape[0], : chunk.shape[1]] = chunk
            yield tile
