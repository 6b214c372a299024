"""Where torch runs (embed/device.py): ``auto``, an explicit device, ``cuda`` without a GPU; CPU threads."""

from __future__ import annotations

import os

import pytest
import torch

from napari_spahgc import InputError
from napari_spahgc.embed.device import default_threads, resolve_device


def test_auto_is_cuda_only_when_a_gpu_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="device 'cuda' was asked for but no CUDA GPU is available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_default_threads_are_the_cores_this_process_may_use():
    threads = default_threads()
    assert threads >= 1
    if hasattr(os, "sched_getaffinity"):
        assert threads == len(os.sched_getaffinity(0))
