"""Cohort tables (io/cohort.py): paths resolved against the table's folder, empty optional columns,
every slide loaded, and what ``open_slides`` makes of what a user points at."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_ome_pyramid
from napari_spahgc.io.cohort import is_cohort_table, load_cohort, open_slides, read_cohort


@pytest.fixture
def cohort(tmp_path):
    """Two slides under data/, their table under tables/ naming them relatively (with spaces)."""
    data = tmp_path / "data"
    data.mkdir()
    for name, size in (("A", 0.5), ("B", None)):
        write_ome_pyramid(data / f"{name}.ome.tif", np.full((400, 500, 3), 200, np.uint8), pixel_size_um=size)
        (data / f"{name}_spots.csv").write_text("spot_id,x,y\ns1,100,100\ns2,200,100\ns3,300,200\n")
    (data / "A_counts.csv").write_text(",GENE1,GENE2\ns1,1,2\ns3,0,4\n")  # s2 has no counts
    table = tmp_path / "tables" / "cohort.csv"
    table.parent.mkdir()
    table.write_text(
        "slide_id, image, spots, counts, pixel_size_um, patient\n"
        "A, ../data/A.ome.tif, ../data/A_spots.csv, ../data/A_counts.csv, , P1\n"
        f"B, {data / 'B.ome.tif'}, ../data/B_spots.csv, , 0.25, \n"
    )
    return table


def test_read_cohort_resolves_paths_against_its_folder(cohort):
    a, b = read_cohort(cohort)
    data = cohort.parents[1] / "data"
    assert (a.slide_id, a.image, a.spots, a.counts) == (
        "A",
        data / "A.ome.tif",
        data / "A_spots.csv",
        data / "A_counts.csv",
    )
    assert a.pixel_size_um is None and a.patient == "P1"
    assert (
        b.image == data / "B.ome.tif" and b.counts is None and b.pixel_size_um == 0.25 and b.patient is None
    )


def test_load_cohort_builds_every_slide(cohort):
    a, b = load_cohort(cohort)
    assert list(a.spot_ids) == ["s1", "s3"]  # the spots the counts have
    assert a.expression.X.toarray().tolist() == [[1, 2], [0, 4]]
    assert a.pixel_size_um == 0.5 and a.pixel_size_source == "OME metadata" and a.patient == "P1"
    assert list(b.spot_ids) == ["s1", "s2", "s3"] and b.expression is None
    assert b.pixel_size_um == 0.25 and b.pixel_size_source == "given by the user"
    spots_only = read_cohort(cohort)[0].load(with_expression=False)
    assert spots_only.expression is None and list(spots_only.spot_ids) == ["s1", "s3"]


def test_open_slides_tells_a_cohort_table_from_a_spot_table(cohort):
    data = cohort.parents[1] / "data"
    assert is_cohort_table(cohort) and not is_cohort_table(data / "A_spots.csv")
    assert not is_cohort_table(data / "absent.csv")
    assert [s.slide_id for s in open_slides(cohort)] == ["A", "B"]
    (single,) = open_slides(data / "A_spots.csv", image=data / "A.ome.tif")
    assert single.slide_id == "A_spots" and single.n_spots == 3 and single.pixel_size_um == 0.5
