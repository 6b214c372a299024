"""File helpers (_files.py): atomic writes, content fingerprints of large files, the cache folder."""

from __future__ import annotations

import os

import pytest

from napari_spahgc._files import atomic_path, cache_dir, file_fingerprint


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
