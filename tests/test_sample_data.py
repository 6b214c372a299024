"""HER2ST sample data: where the files come from, their checksums, and napari's Open Sample."""

from __future__ import annotations

import hashlib
import shutil

import pandas as pd
import pooch.core
import pytest
from napari.layers import Image, Points

from conftest import HER2ST, REPO, SECTIONS
from napari_spahgc import InputError
from napari_spahgc.io.cohort import COHORT_COLUMNS
from napari_spahgc.io.her2st import (
    BASE_URL,
    REGISTRY,
    her2st_cohort_table,
    her2st_folder,
    her2st_slides,
    upstream_path,
)
from napari_spahgc.view.sample_data import her2st_all_sections

UPSTREAM = {
    *(f"ST-cnts/{s}.tsv.gz" for s in SECTIONS),
    *(f"ST-spotfiles/{s}_selection.tsv" for s in SECTIONS),
    "ST-imgs/C/C2/5714_HE_BT_C2.jpg", "ST-imgs/C/C3/5714_HE_BT_D1.jpg", "ST-imgs/C/C4/5714_HE_BT_D2.jpg",
    "ST-imgs/C/C5/5714_HE_BT_E1.jpg", "ST-imgs/C/C6/5714_HE_BT_E2.jpg",
}  # fmt: skip


@pytest.fixture
def at_repo_root(monkeypatch):
    if not HER2ST.is_dir():
        pytest.skip("the HER2ST sections are not beside the checkout (../shared/data/her2st)")
    monkeypatch.delenv("SPAHGC_DATA", raising=False)
    monkeypatch.chdir(REPO)  # ../shared/data/her2st is beside the checkout


@pytest.fixture
def offline_place(monkeypatch, tmp_path):
    """No SPAHGC_DATA, no ../shared beside the working directory, an empty cache."""
    monkeypatch.delenv("SPAHGC_DATA", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("SPAHGC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _serve(monkeypatch, source, calls):
    """Let pooch "download" from a local copy of the upstream tree (hash checks stay pooch's own)."""

    def download(url, output_file, _pooch):
        calls.append(url)
        assert url.startswith(BASE_URL)
        shutil.copyfile(source(url[len(BASE_URL) :]), output_file)

    monkeypatch.setattr(pooch.core, "choose_downloader", lambda url, progressbar=False: download)


def test_the_registry_checksums_are_those_of_the_files(at_repo_root):
    folder = her2st_folder(download=False)
    assert folder == HER2ST.resolve()
    assert {upstream_path(name) for name in REGISTRY} == UPSTREAM
    for name, known_hash in REGISTRY.items():
        assert known_hash == "sha256:" + hashlib.sha256((folder / name).read_bytes()).hexdigest(), name


def test_spahgc_data_wins_and_must_be_complete(at_repo_root, monkeypatch, tmp_path):
    copy = tmp_path / "her2st"
    for name in REGISTRY:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).symlink_to(HER2ST / name)
    monkeypatch.setenv("SPAHGC_DATA", str(copy))
    assert her2st_folder(download=False) == copy.resolve() != HER2ST.resolve()
    (copy / "ST-cnts" / "C4.tsv.gz").unlink()
    with pytest.raises(InputError, match=r"lacks 1 of 15 files, e\.g\. ST-cnts/C4\.tsv\.gz"):
        her2st_folder()


def test_offline_without_data_says_where_it_looked(offline_place):
    with pytest.raises(InputError) as caught:
        her2st_folder(download=False)
    message = str(caught.value)
    assert str(offline_place / "shared" / "data" / "her2st") in message
    assert "SPAHGC_DATA is not set" in message and "Set SPAHGC_DATA" in message


def test_a_failed_download_is_an_input_error(offline_place, monkeypatch):
    def no_network(url, output_file, _pooch):
        raise OSError("network is unreachable")

    monkeypatch.setattr(pooch.core, "choose_downloader", lambda url, progressbar=False: no_network)
    with pytest.raises(
        InputError, match=r"downloading https://github.com/almaan/her2st/raw/master/data/.* failed"
    ):
        her2st_folder()


def test_the_download_lays_files_out_like_the_local_copy(at_repo_root, offline_place, monkeypatch):
    calls: list[str] = []
    _serve(monkeypatch, lambda upstream: HER2ST / upstream.replace("ST-imgs/C/", "ST-imgs/"), calls)
    folder = her2st_folder()
    assert folder == offline_place / "cache" / "her2st" and len(calls) == 15
    for name in REGISTRY:
        assert (folder / name).read_bytes() == (HER2ST / name).read_bytes(), name
    assert her2st_folder() == folder and len(calls) == 15  # verified files are not fetched again
    entry = pd.read_csv(her2st_cohort_table(folder, sections=("C3",))).iloc[0]
    assert entry["image"] == str(folder / "ST-imgs" / "C3" / "5714_HE_BT_D1.jpg")

    (folder / "ST-spotfiles" / "C6_selection.tsv").write_text("changed upstream\n")
    _serve(monkeypatch, lambda upstream: folder / "ST-spotfiles" / "C6_selection.tsv", calls)
    with pytest.raises(InputError, match=r"C6_selection\.tsv failed \(ValueError"):  # the checksum refuses it
        her2st_folder()


def test_the_cohort_table_loads_five_sections(at_repo_root):
    path = her2st_cohort_table(her2st_folder(download=False))
    table = pd.read_csv(path, dtype=str)
    assert tuple(table.columns) == (*COHORT_COLUMNS, "labels") and list(table["slide_id"]) == list(SECTIONS)
    assert set(table["pixel_size_um"]) == {"0.735"} and set(table["patient"]) == {"C"}
    for column in ("image", "spots", "counts", "labels"):
        assert all(
            p.startswith("/") and (HER2ST.resolve() / p.split("/her2st/")[1]).is_file() for p in table[column]
        )

    slides = her2st_slides()
    assert [s.slide_id for s in slides] == list(SECTIONS)
    for slide in slides:
        assert slide.n_spots > 100 and slide.n_genes > 10_000 and slide.pixel_size_um == 0.735
        assert slide.image is not None and slide.patient == "C"
    assert sum(s.n_spots for s in slides) > 850
    with pytest.raises(InputError, match="unknown HER2ST section"):
        her2st_cohort_table(sections=("Z9",))

    layers = her2st_all_sections()
    assert [layer_type for *_, layer_type in layers] == ["image", "points"] * 5
    assert [meta["visible"] for _, meta, _ in layers] == [True, True] + [False] * 8


def test_open_sample_in_napari(at_repo_root, make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open_sample("napari-spahgc", "her2st_section")
    assert sorted(type(layer).__name__ for layer in layers) == ["Image", "Points"]
    spots = next(layer for layer in layers if isinstance(layer, Points))
    assert len(spots.data) == 187 and spots.features["spot_id"].str.fullmatch(r"\d+x\d+").all()
    assert "ERBB2" in spots.features
    image = next(layer for layer in layers if isinstance(layer, Image))
    assert image.rgb and image.metadata["napari_spahgc"]["slide_id"] == "C2"
    assert all(layer in viewer.layers for layer in layers)
