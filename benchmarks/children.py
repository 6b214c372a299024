"""Run a measured command in a child process: its exit status, wall time and its own peak RSS.

Light on purpose (standard library only): a child forked from a heavy parent would count the parent's
pages in its peak (``ru_maxrss`` survives exec), so a benchmark's parent imports little else.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def run_child(command: list[str], timeout: float, **popen) -> tuple[int | None, dict]:
    """Run ``command``; its exit status (None: killed after ``timeout`` s) and its wall time and peak
    RSS (``os.wait4``: that child's own ``ru_maxrss``), with ``skipped`` saying why it has no result."""
    started = time.perf_counter()
    child = subprocess.Popen(command, **popen)
    deadline, killed = time.monotonic() + timeout, False
    while not (done := os.wait4(child.pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            child.kill()
            done, killed = os.wait4(child.pid, 0), True
            break
        time.sleep(0.2)
    status = None if killed else os.waitstatus_to_exitcode(done[1])
    child.returncode = status
    measured = {"wall_s": time.perf_counter() - started, "peak_rss_gb": done[2].ru_maxrss / 1e6}
    if status is None:
        measured["skipped"] = f"over {timeout} s"
    elif status != 0:
        measured["skipped"] = f"failed (status {status})"
    return status, measured


def prepared_arguments(
    script: str, description: str, work: Path, prepare: Callable[[Path, int], object], argv: list[str] | None
) -> argparse.Namespace | None:
    """The options of an HD-size benchmark (``--spots``, ``--work``, ``--timeout``, ``--out``), its
    inputs made by ``prepare(work, spots)`` in a process of its own (``script --prepare-only``): a
    measured child forked from the parent that held them would count their pages in its peak RSS
    (``ru_maxrss`` survives exec). None when this process is that preparation."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spots", type=int, default=700_000)
    parser.add_argument("--work", type=Path, default=work)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the records")
    parser.add_argument("--prepare-only", action="store_true", help="make the inputs and stop")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare_only:
        prepare(args.work, args.spots)
        return None
    command = [sys.executable, script, "--spots", str(args.spots), "--work", str(args.work), "--prepare-only"]
    subprocess.run(command, check=True)
    return args


def reported(name: str, spots: int, measured: dict) -> dict:
    """Print one measured run as a line (name, bins, wall time, peak RSS, why it has no result) and
    return it as a record."""
    skipped = f"  ({measured['skipped']})" if "skipped" in measured else ""
    print(
        f"{name:<26} {spots:>9,} bins  {measured['wall_s']:8.1f} s  {measured['peak_rss_gb']:6.2f} GB{skipped}",
        flush=True,
    )
    return {"run": name, "spots": spots, **measured}
