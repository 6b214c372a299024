"""File helpers (_files.py): atomic writes, content fingerprints of large files, the cache folder."""

from __future__ import annotations

import os

import pytest

from napari_spahgc import InputError
from napari_spahgc.base.files import atomic_path, cache_dir, file_fingerprint


def test_atomic_path_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    final = tmp_path / "out" / "report.json"  # the folder is made
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        tmp.write_text("first")
        assert not final.exists()  # nobody sees the file before it is complete
    assert final.read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert final.read_text() == "first"  # the previous file is left untouched
    assert sorted(p.name for p in final.parent.iterdir()) == ["report.json"]  # no temporary file left


def test_fingerprint_follows_the_content_not_the_name(tmp_path):
    size = 5 << 20  # larger than the three 1 MiB samples
    data = bytearray(os.urandom(size))
    original = tmp_path / "slide.tif"
    original.write_bytes(data)
    copy = tmp_path / "renamed.tif"
    copy.write_bytes(data)
    assert file_fingerprint(original) == file_fingerprint(copy)
    for offset in (0, size // 2, size - 1):  # a change at the start, middle or end is seen
        changed = bytearray(data)
        changed[offset] ^= 0xFF
        copy.write_bytes(changed)
        assert file_fingerprint(copy) != file_fingerprint(original), offset
    copy.write_bytes(data + b"\x00")  # same samples but one more byte
    assert file_fingerprint(copy) != file_fingerprint(original)


def test_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAHGC_CACHE_DIR", str(tmp_path / "cache"))
    folder = cache_dir("embeddings")
    assert folder == tmp_path / "cache" / "embeddings" and folder.is_dir()


def test_safe_names_keep_good_ids_and_tame_the_rest(tmp_path):
    from napari_spahgc.base.files import safe_name, slide_file

    assert safe_name("C2") == "C2" and safe_name("P1 S1_a.b-c") == "P1 S1_a.b-c"
    for hostile in ("../../../x", "/etc/passwd", "P1/S1", "..", ".hidden", "a\\b", "a\x00b", "x" * 300, ""):
        name = safe_name(hostile)
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")
        assert len(name) <= 128 and slide_file(tmp_path, hostile, ".h5ad").parent == tmp_path
    assert safe_name("P1/S1") != safe_name("P1_S1")  # distinct ids stay distinct


def test_stale_parts_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from napari_spahgc.base.files import _HOST

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".out.h5ad.{_HOST}-{int(dead.stdout)}.x1y2.part"
    live = tmp_path / f".out.h5ad.{_HOST}-{os.getpid()}.a1b2.part"
    foreign = tmp_path / ".out.h5ad.otherhost-1.c3d4.part"
    for part in (stale, live, foreign):
        part.write_bytes(b"half")
    stale_store = tmp_path / f".out.zarr.{_HOST}-{int(dead.stdout)}.e5f6.part"  # a killed store write
    (stale_store / "tables").mkdir(parents=True)
    with atomic_path(tmp_path / "other.txt") as tmp:
        tmp.write_text("done")
    assert not stale.exists() and not stale_store.exists() and live.exists() and foreign.exists()
    assert (tmp_path / "other.txt").read_text() == "done"


def test_a_folder_is_replaced_only_when_complete(tmp_path):
    from napari_spahgc.base.files import atomic_folder

    with atomic_folder(tmp_path / "store.zarr") as tmp:
        (tmp / "a").write_text("first")
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "store.zarr") as tmp:
        (tmp / "b").write_text("half")
        raise RuntimeError("killed half-way")
    assert [p.name for p in (tmp_path / "store.zarr").iterdir()] == ["a"]
    with atomic_folder(tmp_path / "store.zarr") as tmp:
        (tmp / "c").write_text("second")
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]  # no temporary folder left
    assert [p.name for p in (tmp_path / "store.zarr").iterdir()] == ["c"]


def test_outputs_are_checked_before_work(tmp_path):
    from napari_spahgc.base.files import prepare_output_file, prepare_output_folder, read_text, require_file

    assert prepare_output_folder(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"file: is a file, not a folder"):
        prepare_output_folder(tmp_path / "file")
    with pytest.raises(InputError, match=r"cannot write the output folder here"):
        prepare_output_folder(tmp_path / "file" / "sub")
    with pytest.raises(InputError, match=r"cannot write the output folder here"):
        prepare_output_folder("/proc/napari-spahgc-test")
    with pytest.raises(InputError, match=r"is a directory, not a file"):
        prepare_output_file(tmp_path)
    with pytest.raises(InputError, match=r"is a directory, not a panel"):
        require_file(tmp_path, "panel")
    with pytest.raises(InputError, match=r"absent: panel not found"):
        require_file(tmp_path / "absent", "panel")
    (tmp_path / "latin1.txt").write_bytes("Gène\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt: panel is not UTF-8 text \(byte 1"):
        read_text(tmp_path / "latin1.txt", "panel")


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"1")
    finally:
        os.umask(umask)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o644
