"""Run a measured command in a child process: its exit status, wall time and its own peak RSS.

Light on purpose (standard library only): a child forked from a heavy parent would count the parent's
pages in its peak (``ru_maxrss`` survives exec), so a benchmark's parent imports little else.
"""

from __future__ import annotations

import os
import subprocess
import time


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
