"""Small file helpers shared by every writer: atomic writes, content fingerprints, cache folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from platformdirs import user_cache_dir

from napari_spahgc.base.errors import InputError

_FINGERPRINT_SAMPLE = 1 << 20  # bytes read from the start, middle and end of a file
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
#: what a slide id may be to serve as a file name as it is
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,+=@ -]{0,127}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    Readers never see a half-written file: after an error the temporary file is removed and any
    previous ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(final.parent)
    fd, tmp = tempfile.mkstemp(**_part_name(final))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """:func:`atomic_path` for a folder (a zarr store): yield an empty temporary folder beside
    ``final``; only if the block succeeds does it take ``final``'s place (a previous ``final`` is
    removed after the swap). After an error the temporary folder is removed and ``final`` untouched."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(final.parent)
    tmp_path = Path(tempfile.mkdtemp(**_part_name(final)))
    try:
        yield tmp_path
        tmp_path.chmod(0o777 & ~_umask())
        if final.exists():
            old = Path(tempfile.mkdtemp(**_part_name(final)))
            os.replace(final, old / final.name)
            os.replace(tmp_path, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp_path, final)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise


def _part_name(final: Path) -> dict:
    """Where and how a temporary twin of ``final`` is named: beside it, ``.NAME.HOST-PID.*.part``,
    the names :func:`remove_stale_parts` recognises."""
    return {"prefix": f".{final.name}.{_HOST}-{os.getpid()}.", "suffix": ".part", "dir": final.parent}


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def remove_stale_parts(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that killed runs on this machine left in ``folder``
    (their process is gone); return them. Those of running processes and of other machines are left."""
    import shutil

    removed = []
    for part in Path(folder).glob(".*.part"):
        match = re.search(rf"\.{re.escape(_HOST)}-(\d+)\.[^.]*\.part$", part.name)
        if match and not _process_alive(int(match.group(1))):
            if part.is_dir() and not part.is_symlink():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a readable file; else an error saying "not found" or "is a directory"."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"is a directory, not a {what}", path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    return path


def read_text(path: str | os.PathLike, what: str) -> str:
    """A text file's content as UTF-8 (BOM allowed), or an error naming the file and the problem."""
    path = require_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{what} is not UTF-8 text (byte {err.start}: {err.reason})", path) from None
    except OSError as err:
        raise InputError(f"cannot read {what} ({err.strerror})", path) from None


def safe_name(slide_id: str) -> str:
    """A file-name form of ``slide_id``: the id itself when it is one (letters, digits, ``_.,+=@ -``,
    not starting with a dot), else its safe characters plus a short hash, so distinct ids stay distinct
    and no name can climb out of its folder or create sub-folders."""
    slide_id = str(slide_id)
    if _SAFE_NAME.fullmatch(slide_id):
        return slide_id
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", slide_id).strip("._")[:64] or "slide"
    return f"{readable}-{hashlib.sha256(slide_id.encode()).hexdigest()[:8]}"


def slide_file(folder: str | os.PathLike, slide_id: str, suffix: str) -> Path:
    """``folder / (safe_name(slide_id) + suffix)``, guaranteed to lie directly in ``folder``."""
    folder = Path(folder)
    path = folder / f"{safe_name(slide_id)}{suffix}"
    if path.resolve().parent != folder.resolve():
        raise InputError(f"slide id {slide_id!r} cannot name a file in {folder}")
    return path


def prepare_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (a folder) and prove it writable before long work starts, so no run is lost at
    its end; an existing file, an unwritable place or a non-folder parent is an error naming it."""
    path = Path(path)
    problem = _folder_problem(path)
    if problem == "file":
        raise InputError(f"is a file, not a folder (the {what} must be a folder)", path)
    if problem:
        raise InputError(f"cannot write the {what} here ({problem})", path)
    remove_stale_parts(path)
    return path


def prepare_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file (its folder is made and proven writable); the
    error names the file, and what is wrong with its folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"is a directory, not a file (the {what} must be a file name)", path)
    problem = _folder_problem(path.parent)
    if problem == "file":
        raise InputError(f"cannot write the {what}: {path.parent} is a file, not a folder", path)
    if problem:
        raise InputError(f"cannot write the {what} in {path.parent} ({problem})", path)
    remove_stale_parts(path.parent)
    return path


def _folder_problem(path: Path) -> str | None:
    """None when ``path`` is a writable folder (made now if missing); ``"file"`` when a file is in the
    way; else why it cannot be written."""
    if path.exists() and not path.is_dir():
        return "file"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def write_report(out_dir: str | os.PathLike, record: dict, markdown: str) -> Path:
    """``report.json`` (the record) and ``report.md`` (for people) in ``out_dir``, each atomically;
    returns the markdown file."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(markdown.rstrip("\n") + "\n")
    return out_dir / "report.md"


def write_csv(frame, path: str | os.PathLike) -> Path:
    """A pandas table as CSV at ``path`` (no index), atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


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
    return prepare_output_folder(Path(root) / kind, f"cache folder ({kind})")
