"""Every bad input named in the foundation issue gets a clear error naming the file and the problem."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import write_ome_pyramid
from napari_spahgc import InputError, build_slide, open_image, read_cohort, read_counts

COHORT_HEADER = "slide_id,image,spots,counts,pixel_size_um,patient\n"


@pytest.fixture
def image(tmp_path):
    return write_ome_pyramid(
        tmp_path / "he.ome.tif", np.full((500, 600, 3), 180, np.uint8), pixel_size_um=0.5
    )


@pytest.fixture
def spots(tmp_path):
    path = tmp_path / "spots.csv"
    path.write_text("spot_id,x,y\n1x1,100,100\n1x2,200,100\n2x1,100,200\n")
    return path


def _counts(tmp_path, body: str, name: str = "counts.tsv.gz"):
    path = tmp_path / name
    with gzip.open(path, "wt") as handle:
        handle.write("\tGENE1\tGENE2\n" + body)
    return path


def test_missing_files(tmp_path, spots):
    with pytest.raises(InputError, match=r"nope\.tif: image file not found"):
        open_image(tmp_path / "nope.tif")
    with pytest.raises(InputError, match=r"nope\.csv: spot file not found"):
        build_slide("s", tmp_path / "nope.csv")
    with pytest.raises(InputError, match=r"nope\.tsv: counts file not found"):
        read_counts(tmp_path / "nope.tsv")
    with pytest.raises(InputError, match=r"cohort\.csv: cohort table not found"):
        read_cohort(tmp_path / "cohort.csv")


def test_unreadable_and_truncated_images(tmp_path, image):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(InputError, match=r"garbage\.tif: cannot read image"):
        open_image(garbage)
    data = image.read_bytes()
    truncated = tmp_path / "truncated.ome.tif"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated\.ome\.tif: .*(truncated|cannot read)"):
        open_image(truncated)
    from PIL import Image

    jpeg = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:5000])
    with pytest.raises(InputError, match=r"cut\.jpg: cannot decode image"):
        open_image(jpeg)


def test_spot_table_without_coordinates(tmp_path):
    path = tmp_path / "ids_only.csv"
    path.write_text("spot_id,cluster\nA,1\nB,2\n")
    with pytest.raises(InputError, match=r"ids_only\.csv: spot table has no coordinates"):
        build_slide("s", path)


def test_spots_outside_the_image(tmp_path, image):
    some = tmp_path / "some_outside.csv"
    some.write_text("spot_id,x,y\nA,100,100\nB,5000,100\nC,100,-3\nD,300,300\n")
    with pytest.warns(UserWarning, match=r"some_outside\.csv: dropped 2 of 4 spots outside the image"):
        slide = build_slide("s", some, image=image)
    assert list(slide.spot_ids) == ["A", "D"]
    none = tmp_path / "all_outside.csv"
    none.write_text("spot_id,x,y\nA,-100,100\nB,5000,100\n")
    with pytest.raises(InputError, match=r"all_outside\.csv: none of the 2 spots lie inside the image"):
        build_slide("s", none, image=image)


def test_duplicate_spot_ids(tmp_path):
    path = tmp_path / "dups.csv"
    path.write_text("spot_id,x,y\nA,1,1\nA,2,2\nB,3,3\n")
    with pytest.raises(InputError, match=r"dups\.csv: duplicate spot ids: A"):
        build_slide("s", path)
    counts = _counts(tmp_path, "A\t1\t2\nA\t3\t4\n", "dup_counts.tsv.gz")
    with pytest.raises(InputError, match=r"dup_counts\.tsv\.gz: duplicate spot ids in counts: A"):
        read_counts(counts)


def test_counts_and_spots_without_common_ids(tmp_path, spots):
    counts = _counts(tmp_path, "9x9\t1\t2\n8x8\t0\t4\n")
    with pytest.raises(InputError, match=r"counts\.tsv\.gz: counts and spots share no spot ids"):
        build_slide("s", spots, counts=counts)


@pytest.mark.parametrize(("body", "problem"), [("1x1\t-1\t2\n", "negative"), ("1x1\tnan\t2\n", "NaN")])
def test_negative_or_nan_counts(tmp_path, body, problem):
    with pytest.raises(InputError, match=rf"counts\.tsv\.gz: counts contain {problem}"):
        read_counts(_counts(tmp_path, body))


def test_cohort_missing_column_and_duplicate_ids(tmp_path, spots, image):
    missing = tmp_path / "missing.csv"
    missing.write_text("slide_id,image,spots\nA,he.ome.tif,spots.csv\n")
    with pytest.raises(
        InputError, match=r"missing\.csv: cohort table lacks column\(s\) counts, pixel_size_um, patient"
    ):
        read_cohort(missing)
    duplicate = tmp_path / "duplicate.csv"
    duplicate.write_text(COHORT_HEADER + "A,he.ome.tif,spots.csv,,,\nA,he.ome.tif,spots.csv,,,\n")
    with pytest.raises(InputError, match=r"duplicate\.csv: duplicate slide_id in cohort table: A"):
        read_cohort(duplicate)
    bad_size = tmp_path / "bad_size.csv"
    bad_size.write_text(COHORT_HEADER + "A,he.ome.tif,spots.csv,,-1,\n")
    with pytest.raises(
        InputError, match=r"bad_size\.csv: slide 'A': pixel_size_um must be a positive number"
    ):
        read_cohort(bad_size)
    good = tmp_path / "good.csv"
    good.write_text(COHORT_HEADER + "A,he.ome.tif,spots.csv,,,\n")
    (entry,) = read_cohort(good)
    assert entry.image == image and entry.spots == spots and entry.counts is None and entry.patient is None


def test_pixel_size_needed_but_unknown(tmp_path, spots):
    from PIL import Image

    jpeg = tmp_path / "no_metadata.jpg"
    Image.fromarray(np.full((400, 400, 3), 200, np.uint8)).save(jpeg)
    slide = build_slide("s", spots, image=jpeg)
    assert slide.pixel_size_um is None
    with pytest.raises(
        InputError, match=r"no_metadata\.jpg: slide 's' has no known pixel size.*pixel_size_um"
    ):
        slide.require_pixel_size()


def test_cli_reports_bad_input_without_traceback(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "napari_spahgc.cli", "info", str(tmp_path / "absent.csv")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "absent.csv: cohort table not found" in result.stderr and "Traceback" not in result.stderr
