"""Encoder registry and the encoders it builds: EfficientNet-Lite0 from its package, UNI2-h from a
checkpoint the test writes (same architecture, random weights, the hub's key names), where UNI's
weights come from, and real HER2ST patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoints import write_checkpoint
from napari_spahgc import InputError
from napari_spahgc.embed.encoders import create_encoder, list_encoders


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


def test_uni2h_from_a_local_checkpoint(scratch, monkeypatch):
    path = scratch / "uni2h.safetensors"
    write_checkpoint("uni2-h", path, as_safetensors=True)
    monkeypatch.setenv("SPAHGC_UNI2H_WEIGHTS", str(path))
    encoder = create_encoder("uni2-h", device="cpu")
    assert encoder.dim == 1536
    assert encoder.model.num_prefix_tokens == 9  # class token + 8 registers, as published
    assert encoder(np.full((1, 224, 224, 3), 90, np.uint8)).shape == (1, 1536)


def test_missing_uni_weights_say_how_to_get_them(monkeypatch):
    monkeypatch.delenv("SPAHGC_UNI_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"huggingface\.co/MahmoodLab/UNI.*--weights"):
        create_encoder("uni", device="cpu")
    with pytest.raises(InputError, match="weights file not found"):
        create_encoder("uni", weights="/nonexistent/pytorch_model.bin", device="cpu")


def test_real_her2st_patches_embed_deterministically(her2st_cohort):
    from napari_spahgc import read_cohort
    from napari_spahgc.embed.patches import patch_batches

    slide = read_cohort(her2st_cohort)[0].load()
    batch = next(patch_batches(slide, batch_size=8))
    encoder = create_encoder("efficientnet-lite0", device="cpu")
    first, second = encoder(batch), encoder(batch)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    distances = np.linalg.norm(first[:, None] - first[None], axis=-1)
    assert (distances[~np.eye(8, dtype=bool)] > 1e-3).all()  # every spot looks different
