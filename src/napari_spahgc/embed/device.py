"""Where torch runs: device choice and CPU threads (light: no graph or model imports; here, in the first
stage that runs torch, so that nothing below it imports torch)."""

from __future__ import annotations

import os

import torch

from napari_spahgc.base.errors import InputError


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(device)


def default_threads() -> int:
    """Threads for torch on CPU: ``OMP_NUM_THREADS`` when set (a cluster worker's share), else the cores
    this process may use."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
