"""Encoder registry and weight loading: EfficientNet-Lite0 from its package, UNI / UNI2-h from
checkpoints the tests write (same architecture, random weights, the hub's key names)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_spahgc import InputError
from napari_spahgc.encoders import REGISTRY, create_encoder, list_encoders
from napari_spahgc.weights import efficientnet_lite0_key, read_state_dict


def test_registry():
    assert list_encoders() == ["efficientnet-lite0", "uni", "uni2-h"]
    with pytest.raises(InputError, match="unknown encoder 'resnet'"):
        create_encoder("resnet")


def test_efficientnet_lite0_loads_every_package_tensor():
    encoder = create_encoder("efficientnet-lite0", device="cpu")
    assert encoder.dim == 1280 and len(encoder.weights_checksum) == 64
    # the BatchNorm statistics are ImageNet's, not the initial ones
    bn = encoder.model.bn1
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    patches = np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
    out = encoder(patches)
    assert out.shape == (3, 1280) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, encoder(patches))


def test_every_package_tensor_has_its_own_timm_tensor(tmp_path):
    state = read_state_dict(REGISTRY["efficientnet-lite0"].packaged_weights())
    with torch.device("meta"):
        model = REGISTRY["efficientnet-lite0"].build()
    targets = [efficientnet_lite0_key(k, model) for k in state if not k.startswith("_fc.")]
    assert None not in targets and len(set(targets)) == len(targets) == len(model.state_dict())
    assert set(targets) == set(model.state_dict())
    assert efficientnet_lite0_key("_blocks.15._bn2.weight", model) == "blocks.6.0.bn3.weight"
    extra = tmp_path / "lite0_plus_one.safetensors"
    save_file(
        {**{k: v.contiguous() for k, v in state.items()}, "_blocks.16._bn0.weight": torch.ones(8)}, str(extra)
    )
    with pytest.raises(
        InputError, match=r"1 tensors have no place in EfficientNet-Lite0 \(e\.g\. _blocks\.16"
    ):
        create_encoder("efficientnet-lite0", weights=extra, device="cpu")


def _random_state(name: str) -> dict[str, torch.Tensor]:
    """Random tensors under the published architecture's key names (quicker than building the model)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in REGISTRY[name].build().state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in shapes.items()}


def _write_checkpoint(name: str, path, as_safetensors: bool) -> dict[str, torch.Tensor]:
    state = _random_state(name)
    if as_safetensors:
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("as_safetensors", [True, False])
def test_uni_from_a_local_checkpoint(tmp_path, as_safetensors):
    path = tmp_path / ("model.safetensors" if as_safetensors else "pytorch_model.bin")
    reference = _write_checkpoint("uni", path, as_safetensors)
    encoder = create_encoder("uni", weights=path, device="cpu")
    assert encoder.dim == 1024 and encoder.mean == (0.485, 0.456, 0.406)
    loaded = encoder.model.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[key], tensor) for key, tensor in reference.items())
    out = encoder(np.full((1, 224, 224, 3), 200, np.uint8))
    assert out.shape == (1, 1024) and np.isfinite(out).all()


def test_uni2h_from_a_local_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "uni2h.safetensors"
    _write_checkpoint("uni2-h", path, as_safetensors=True)
    monkeypatch.setenv("SPAHGC_UNI2H_WEIGHTS", str(path))
    encoder = create_encoder("uni2-h", device="cpu")
    assert encoder.dim == 1536
    assert encoder.model.num_prefix_tokens == 9  # class token + 8 registers, as published
    assert encoder(np.full((1, 224, 224, 3), 90, np.uint8)).shape == (1, 1536)


def test_wrong_architecture_is_refused(tmp_path):
    wrong = tmp_path / "resnet_like.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, str(wrong))
    with pytest.raises(
        InputError, match=r"resnet_like\.safetensors: checkpoint does not match the uni architecture"
    ):
        create_encoder("uni", weights=wrong, device="cpu")
    lite = tmp_path / "lite.safetensors"
    save_file(_random_state("efficientnet-lite0"), str(lite))
    with pytest.raises(InputError, match="342 missing"):
        create_encoder("uni", weights=lite, device="cpu")
    uni = tmp_path / "uni.safetensors"
    _write_checkpoint("uni", uni, as_safetensors=True)
    with pytest.raises(InputError, match=r"1 missing \(e\.g\. reg_token\); 342 wrong shape"):
        create_encoder("uni2-h", weights=uni, device="cpu")


def test_missing_uni_weights_say_how_to_get_them(monkeypatch):
    monkeypatch.delenv("SPAHGC_UNI_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"huggingface\.co/MahmoodLab/UNI.*--weights"):
        create_encoder("uni", device="cpu")
    with pytest.raises(InputError, match="weights file not found"):
        create_encoder("uni", weights="/nonexistent/pytorch_model.bin", device="cpu")


def test_real_her2st_patches_embed_deterministically(her2st_cohort):
    from napari_spahgc import read_cohort
    from napari_spahgc.patches import patch_batches

    slide = read_cohort(her2st_cohort)[0].load()
    batch = next(patch_batches(slide, batch_size=8))
    encoder = create_encoder("efficientnet-lite0", device="cpu")
    first, second = encoder(batch), encoder(batch)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    distances = np.linalg.norm(first[:, None] - first[None], axis=-1)
    assert (distances[~np.eye(8, dtype=bool)] > 1e-3).all()  # every spot looks different
