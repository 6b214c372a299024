"""Checkpoint files (weights.py): safetensors and weights-only torch files read without unpickling,
strict loading that names what does not fit, and the EfficientNet-PyTorch → timm renaming."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from checkpoints import random_state, write_checkpoint
from napari_spahgc import InputError
from napari_spahgc.embed.encoders import REGISTRY, create_encoder
from napari_spahgc.embed.weights import efficientnet_lite0_key, read_state_dict, sha256


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


@pytest.mark.parametrize("as_safetensors", [True, False])
def test_uni_from_a_local_checkpoint(scratch, as_safetensors):
    path = scratch / ("model.safetensors" if as_safetensors else "pytorch_model.bin")
    reference = write_checkpoint("uni", path, as_safetensors)
    encoder = create_encoder("uni", weights=path, device="cpu")
    assert encoder.dim == 1024 and encoder.mean == (0.485, 0.456, 0.406)
    loaded = encoder.model.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[key], tensor) for key, tensor in reference.items())
    out = encoder(np.full((1, 224, 224, 3), 200, np.uint8))
    assert out.shape == (1, 1024) and np.isfinite(out).all()


def test_wrong_architecture_is_refused(scratch):
    wrong = scratch / "resnet_like.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, str(wrong))
    with pytest.raises(
        InputError, match=r"resnet_like\.safetensors: checkpoint does not match the uni architecture"
    ):
        create_encoder("uni", weights=wrong, device="cpu")
    lite = scratch / "lite.safetensors"
    save_file(random_state("efficientnet-lite0"), str(lite))
    with pytest.raises(InputError, match="342 missing"):
        create_encoder("uni", weights=lite, device="cpu")
    uni = scratch / "uni.safetensors"
    write_checkpoint("uni", uni, as_safetensors=True)
    with pytest.raises(InputError, match=r"1 missing \(e\.g\. reg_token\); 342 wrong shape"):
        create_encoder("uni2-h", weights=uni, device="cpu")


def test_read_state_dict_reads_tensors_only(tmp_path):
    state = {"layer.weight": torch.arange(6.0).view(2, 3), "layer.bias": torch.zeros(2)}
    wrapped = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, wrapped)  # a training checkpoint around the tensors
    loaded = read_state_dict(wrapped)
    assert loaded.keys() == state.keys() and torch.equal(loaded["layer.weight"], state["layer.weight"])
    not_tensors = tmp_path / "not_tensors.pt"
    torch.save({"layer.weight": [1.0, 2.0]}, not_tensors)
    with pytest.raises(
        InputError, match=r"not_tensors\.pt: weights file does not hold a state dict of tensors"
    ):
        read_state_dict(not_tensors)
    pickled = tmp_path / "pickled.bin"
    torch.save({"layer.weight": torch.zeros(1), "extra": np.random.default_rng(0)}, pickled)
    with pytest.raises(InputError, match=r"pickled\.bin: cannot read weights: not a safetensors") as error:
        read_state_dict(pickled)  # an arbitrary object is never unpickled
    assert "weights_only" not in str(error.value) and "objects other than tensors are refused" in str(
        error.value
    )
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match=r"garbage\.safetensors: cannot read weights"):
        read_state_dict(garbage)
    assert sha256(wrapped) == hashlib.sha256(wrapped.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["random.bin", "random.pt", "random.safetensors"])
def test_unreadable_weights_get_our_message_not_torchs_advice(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError) as error:
        read_state_dict(path)
    message = str(error.value)
    assert message.startswith(str(path)) and "cannot read weights: not a safetensors or PyTorch" in message
    assert "weights_only" not in message and error.value.__cause__ is None
    assert error.value.__suppress_context__


def test_a_weights_directory_is_not_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="is a directory, not a weights file"):
        read_state_dict(tmp_path)
    with pytest.raises(InputError, match="weights file not found"):
        read_state_dict(tmp_path / "absent.safetensors")
