"""Small file helpers shared by every writer: atomic writes, content fingerprints, cache folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from platformdirs import user_cache_dir

_FINGERPRINT_SAMPLE = 1 << 20  # bytes read from the start, middle and end of a file


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    Readers never see a half-written file: after an error the temporary file is removed and any
    previous ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_report(out_dir: str | os.PathLike, record: dict, markdown: str) -> Path:
    """``report.json`` (the record) and ``report.md`` (for people) in ``out_dir``, each atomically;
    returns the markdown file."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(markdown.rstrip("\n") + "\n")
    return out_dir / "report.md"


def file_fingerprint(path: str | os.PathLike) -> str:
    """A content identity for a (possibly huge) file: size plus a hash of three 1 MiB samples.

    Cheap for multi-GB slides, and it changes when a file is replaced or re-exported even if the
    name stays the same.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as handle:
        for offset in sorted(
            {0, max(0, size // 2 - _FINGERPRINT_SAMPLE // 2), max(0, size - _FINGERPRINT_SAMPLE)}
        ):
            handle.seek(offset)
            digest.update(handle.read(_FINGERPRINT_SAMPLE))
    return digest.hexdigest()


def cache_dir(kind: str) -> Path:
    """Folder for derived files of one kind (``SPAHGC_CACHE_DIR`` overrides the user cache folder)."""
    root = os.environ.get("SPAHGC_CACHE_DIR") or user_cache_dir("napari-spahgc")
    folder = Path(root) / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder
