"""Lazy pyramids: OME-TIFF / SVS / plain TIFF metadata, JPEG conversion, no whole-level reads."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile

from conftest import write_ome_pyramid
from napari_spahgc import InputError, open_image
from napari_spahgc.base.files import cache_dir


def _gradient(rows: int, cols: int) -> np.ndarray:
    r, c = np.mgrid[0:rows, 0:cols]
    return np.stack([r % 256, c % 256, (r + c) % 256], axis=-1).astype(np.uint8)


def test_ome_pyramid_is_read_lazily(tmp_path):
    rows, cols = 6000, 5000
    path = write_ome_pyramid(tmp_path / "slide.ome.tif", _gradient(rows, cols), pixel_size_um=0.25)
    level_bytes = rows * cols * 3
    tracemalloc.start()
    image = open_image(path)
    region = image.read_region(0, 3000, 2000, 224, 224)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert image.shape == (rows, cols) and image.n_levels == 3
    assert image.downsamples == [1.0, 2.0, 4.0]
    assert image.pixel_size_um == pytest.approx(0.25) and image.pixel_size_source == "OME metadata"
    np.testing.assert_array_equal(region, _gradient(rows, cols)[3000:3224, 2000:2224])
    assert peak < level_bytes / 20, (
        f"peak {peak / 1e6:.1f} MB suggests the full level ({level_bytes / 1e6:.0f} MB) was read"
    )


def test_read_region_pads_outside_white(tmp_path):
    path = write_ome_pyramid(tmp_path / "small.ome.tif", _gradient(600, 500), pixel_size_um=0.5)
    image = open_image(path)
    region = image.read_region(0, -50, 450, 100, 100)
    assert (region[:50] == 255).all() and (region[:, 50:] == 255).all()
    np.testing.assert_array_equal(region[50:, :50], _gradient(600, 500)[:50, 450:])
    assert image.level_for_downsample(3.0) == 1 and image.level_for_downsample(0.5) == 0


def test_svs_mpp_and_tiff_resolution_tags(tmp_path):
    pixels = _gradient(512, 512)
    svs = tmp_path / "scan.svs"
    tifffile.imwrite(svs, pixels, tile=(256, 256), photometric="rgb",
                     description="Aperio Image Library v12.0.15 \n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.2520")  # fmt: skip
    assert open_image(svs).pixel_size_um == pytest.approx(0.252)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, pixels, photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    image = open_image(plain)
    assert image.pixel_size_um == pytest.approx(0.5) and image.pixel_size_source == "TIFF resolution tags"
    unknown = tmp_path / "unknown.tif"
    tifffile.imwrite(unknown, pixels, photometric="rgb")
    assert open_image(unknown).pixel_size_um is None


def test_jpeg_becomes_a_cached_pyramid(tmp_path):
    from PIL import Image

    pixels = _gradient(2300, 1900)
    path = tmp_path / "section.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    image = open_image(path)
    assert image.shape == (2300, 1900) and image.n_levels == 3
    assert image.path == path and image.pixel_size_um is None
    decoded = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(image.read_region(0, 1000, 1000, 64, 64), decoded[1000:1064, 1000:1064])
    cached = sorted(cache_dir("pyramids").glob("section-*.tif"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    open_image(path)
    assert cached[0].stat().st_mtime_ns == stamp  # the second open reuses the pyramid


def test_grayscale_and_16bit_become_rgb(tmp_path):
    path = tmp_path / "gray16.tif"
    tifffile.imwrite(path, (np.arange(100 * 120).reshape(100, 120) % 65536).astype(np.uint16))
    image = open_image(path)
    region = image.read_region(0, 0, 0, 100, 120)
    assert region.shape == (100, 120, 3) and region.dtype == np.uint8


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "slide.xyz"
    path.write_bytes(b"not an image")
    with pytest.raises(InputError, match="unsupported image type"):
        open_image(path)


def test_tiffs_with_gigantic_tiles_are_refused(tmp_path):
    """One strip of 20000 × 20000 px would make every patch read decode 1.2 GB: refused up front."""
    import zarr

    from napari_spahgc.io.images import _check_chunks

    lazy = zarr.create_array(store={}, shape=(20000, 20000, 3), chunks=(20000, 20000, 3), dtype="uint8")
    with pytest.raises(InputError, match=r"strip.*tiles/strips are 20000 × 20000 × 3 \(1\.2 GB"):
        _check_chunks(lazy, tmp_path / "strip.tif")
    _check_chunks(
        zarr.create_array(store={}, shape=(20000, 20000, 3), chunks=(512, 512, 3), dtype="uint8"), tmp_path
    )
