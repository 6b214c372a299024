"""Cohort embedding through the CLI: serial against a local Dask cluster, on the HER2ST sections.

Prints wall time and slides/hour for a cold cache (every slide computed), serial and with
``--workers N``, and the time of a warm rerun with ``--workers N`` (every slide read from the cache).
Each run is a fresh ``spahgc embed`` process, as a user runs it.

    python benchmarks/bench_cluster.py [COHORT.csv] [N_WORKERS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COHORT = Path(__file__).resolve().parents[1] / "examples" / "her2st_cohort.csv"
SPAHGC = Path(sys.executable).with_name("spahgc")


def embed(cohort: Path, cache: Path, *extra: str) -> float:
    """Seconds of one ``spahgc embed`` run (it must succeed)."""
    started = time.perf_counter()
    subprocess.run([str(SPAHGC), "embed", str(cohort), "--cache", str(cache), *extra], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    cohort = Path(sys.argv[1]) if len(sys.argv) > 1 else COHORT
    workers = sys.argv[2] if len(sys.argv) > 2 else "2"
    n_slides = sum(1 for line in cohort.read_text().splitlines()[1:] if line.strip())
    print(f"{n_slides} slides of {cohort.name}; {len(os.sched_getaffinity(0))} cores; cold cache each run")
    with tempfile.TemporaryDirectory() as folder:
        runs = {
            "serial": embed(cohort, Path(folder, "serial")),
            f"--workers {workers}": embed(cohort, Path(folder, "cluster"), "--workers", workers),
        }
        warm = embed(cohort, Path(folder, "cluster"), "--workers", workers)
    for label, seconds in runs.items():
        print(f"{label:<14} {seconds:7.1f} s  {n_slides / seconds * 3600:7.0f} slides/hour")
    print(f"warm rerun --workers {workers}: {warm:.1f} s (every slide read from the cache)")


if __name__ == "__main__":
    main()
