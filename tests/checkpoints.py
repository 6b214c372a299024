"""Checkpoints the encoder and weights tests write: the published architectures' key names and
shapes, random values (no download, no gated weights)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from napari_spahgc.embed.encoders import REGISTRY


def random_state(name: str) -> dict[str, torch.Tensor]:
    """Random tensors under the published architecture's key names (quicker than building the model)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in REGISTRY[name].build().state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in shapes.items()}


def write_checkpoint(name: str, path, as_safetensors: bool) -> dict[str, torch.Tensor]:
    state = random_state(name)
    if as_safetensors:
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state
