"""Checkpoint files: read tensors without unpickling, checksum, strict loading into a model built on
the meta device, and the EfficientNet-PyTorch → timm renaming of the offline encoder's package."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from napari_spahgc.base.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn


_UNREADABLE = (
    "cannot read weights: not a safetensors or PyTorch tensor checkpoint, or damaged "
    "(files are never unpickled; objects other than tensors are refused)"
)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file without unpickling arbitrary objects.

    A file that cannot be read gets our own message: torch's would advise ``weights_only=False``.
    """
    import torch

    if path.is_dir():
        raise InputError("is a directory, not a weights file", path)
    if not path.is_file():
        raise InputError("weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise InputError("cannot read weights: permission denied", path) from None
    except Exception:
        raise InputError(_UNREADABLE, path) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("weights file does not hold a state dict of tensors", path)
    return state


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """Give ``model`` (built on the meta device) every tensor of ``state``, or refuse with the reason.

    Keys and shapes are compared before anything is loaded, so a model is never half-loaded.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise InputError(f"checkpoint does not match the {what} architecture: {'; '.join(details)}", path)
    typed = {k: v.to(expected[k].dtype).contiguous() for k, v in state.items()}
    model.load_state_dict(typed, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RuntimeError(f"{what}: a tensor outside the state dict was left uninitialised")


# The package's tensors are named as in EfficientNet-PyTorch; these are their names in timm.
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_LITE0_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite0_key(key: str, model: nn.Module) -> str | None:
    """timm's name for one package tensor (``_blocks.N`` counts blocks across stages); None if it has none."""
    module, _, rest = key.partition(".")
    if module in _LITE0_TOP:
        return f"{_LITE0_TOP[module]}.{rest}"
    if module != "_blocks":
        return None
    index, _, rest = rest.partition(".")
    part, _, tensor = rest.partition(".")
    blocks = [(s, j, b) for s, stage in enumerate(model.blocks) for j, b in enumerate(stage)]
    if not index.isdigit() or int(index) >= len(blocks):
        return None
    stage, position, block = blocks[int(index)]
    names = _LITE0_INVERTED if hasattr(block, "conv_pwl") else _LITE0_DEPTHWISE
    return f"blocks.{stage}.{position}.{names[part]}.{tensor}" if part in names else None


def efficientnet_lite0_state(
    state: dict[str, torch.Tensor], model: nn.Module, path: Path
) -> dict[str, torch.Tensor]:
    """The package's tensors under timm's names; the ImageNet classifier ``_fc`` is not used."""
    renamed, unmapped = {}, []
    for key, tensor in state.items():
        if key.startswith("_fc."):
            continue
        target = efficientnet_lite0_key(key, model)
        if target is None:
            unmapped.append(key)
        else:
            renamed[target] = tensor
    if unmapped:
        raise InputError(
            f"{len(unmapped)} tensors have no place in EfficientNet-Lite0 (e.g. {', '.join(unmapped[:3])})",
            path,
        )
    return renamed
