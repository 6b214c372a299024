"""A trained SpaHGC and its folder format: ``model.safetensors`` (weights, reference bank, scales) and
``config.json`` (genes, options, provenance); no pickle anywhere."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ._device import resolve_device
from ._files import atomic_path
from .batch import GraphBatch
from .dataset import FeatureScale, SlideData
from .errors import InputError
from .graph import ReferenceBank, build_graph
from .model import SpaHGC
from .neighbours import spatial_mix, spatial_neighbours
from .options import GraphOptions, ModelOptions, SpaHGCConfig, TrainOptions

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class ModelMetadata:
    """What a model folder records besides weights (written to config.json)."""

    genes: list[str]
    embedding_dim: int
    encoder: dict = field(default_factory=dict)
    patch: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=lambda: {"normalize": "counts / spot total × 1e6, log1p"})
    training_slides: list[str] = field(default_factory=list)
    validation_slides: list[list[str]] = field(default_factory=list)
    validation: dict = field(default_factory=dict)

    def validation_summary(self) -> str:
        """One sentence on how the epochs were chosen and how the members validated."""
        members = self.validation.get("members")
        if not members:
            return f"one model trained on every slide for {self.validation.get('epochs_run', '?')} epochs (no validation slide)"
        parts = "; ".join(
            f"{'+'.join(m['validation_slides'])}: PCC {m['pcc']:.3f} at epoch {m['best_epoch']}"
            + (f" of {m['epochs_trained']}" if "epochs_trained" in m else "")
            for m in members
        )
        return (
            f"ensemble of {len(members)} member(s), each choosing its epoch on held-out training slides ({parts}); "
            f"mean validation PCC {self.validation['pcc']:.3f}"
        )


class SpaHGCPredictor:
    """A trained SpaHGC: the ensemble network, its reference bank (standardised embeddings and
    expression), the expression and embedding scales, and its metadata."""

    def __init__(
        self,
        network: SpaHGC,
        bank: ReferenceBank,
        scale: FeatureScale,
        embedding_scale: FeatureScale,
        config: SpaHGCConfig,
        metadata: ModelMetadata,
    ) -> None:
        self.network = network.eval()
        self.bank, self.scale, self.embedding_scale = bank, scale, embedding_scale
        self.config, self.metadata = config, metadata

    @property
    def genes(self) -> list[str]:
        return self.metadata.genes

    @torch.inference_mode()
    def predict(self, slide: SlideData, device: str = "cpu") -> np.ndarray:
        """Predicted log1p-CPM (n_spots, n_genes): the mean of the ensemble members, mixed with the
        spots' Q nearest neighbours by the chosen smoothing; deterministic: no masking, no dropout."""
        if slide.embeddings.shape[1] != self.metadata.embedding_dim:
            raise InputError(
                f"slide {slide.slide_id!r} has {slide.embeddings.shape[1]}-d embeddings but the model was "
                f"trained on {self.metadata.embedding_dim}-d ({self.metadata.encoder.get('name', '?')})"
            )
        bank = self.bank
        if np.any(bank.slide_ids == slide.slide_id):  # never retrieve a slide's own spots
            keep = bank.slide_ids != slide.slide_id
            bank = ReferenceBank(bank.embeddings[keep], bank.expression[keep], bank.slide_ids[keep])
        graph = build_graph(slide.standardised(self.embedding_scale), bank, self.config.graph)
        target = resolve_device(device)
        network = self.network.to(target).eval()
        batch = GraphBatch.from_graphs([graph] * network.options.members, target)
        prediction = self.scale.inverse(network(*batch.inputs).mean(0).float().cpu().numpy())
        smoothing = self.config.graph.smoothing
        if smoothing:
            prediction = spatial_mix(
                prediction, spatial_neighbours(slide.coords, self.config.graph.q), 1 - smoothing
            )
        return prediction

    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` (weights, bank, scale) and ``config.json`` atomically."""
        from . import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"network.{k}": v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()
        }
        tensors.update(
            {
                "bank.embeddings": torch.from_numpy(self.bank.embeddings),
                "bank.expression": torch.from_numpy(self.bank.expression),
                "scale.mean": torch.from_numpy(self.scale.mean),
                "scale.sd": torch.from_numpy(self.scale.sd),
                "embedding_scale.mean": torch.from_numpy(self.embedding_scale.mean),
                "embedding_scale.sd": torch.from_numpy(self.embedding_scale.sd),
            }
        )
        config = {
            "format": "napari-spahgc model",
            "package_version": __version__,
            **asdict(self.metadata),
            "bank_slide_ids": self.bank.slide_ids.tolist(),
            **{f"{part}_options": options for part, options in self.config.to_dict().items()},
        }
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(folder / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(config, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SpaHGCPredictor:
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise InputError(
                f"not a napari-spahgc model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})", folder
            )
        config = json.loads(config_path.read_text())
        if config.get("format") != "napari-spahgc model":
            raise InputError("config.json is not a napari-spahgc model description", config_path)
        tensors = load_file(str(weights_path))
        if "members" not in config.get("model_options", {}) or "embedding_scale.mean" not in tensors:
            raise InputError(
                f"this model folder was written by napari-spahgc {config.get('package_version', '?')}, "
                "in an earlier model format (before ensembles and standardised embeddings); train it "
                "again with this version",
                folder,
            )
        metadata = ModelMetadata(**{k: config[k] for k in ModelMetadata.__dataclass_fields__ if k in config})
        network = _network(metadata, ModelOptions(**config["model_options"]), tensors, weights_path)
        bank = ReferenceBank(
            tensors["bank.embeddings"].numpy(),
            tensors["bank.expression"].numpy(),
            np.asarray(config["bank_slide_ids"], dtype=object),
        )
        scale = FeatureScale(tensors["scale.mean"].numpy(), tensors["scale.sd"].numpy())
        embedding_scale = FeatureScale(
            tensors["embedding_scale.mean"].numpy(), tensors["embedding_scale.sd"].numpy()
        )
        return cls(
            network,
            bank,
            scale,
            embedding_scale,
            SpaHGCConfig(
                GraphOptions(**config["graph_options"]),
                network.options,
                TrainOptions(**config["train_options"]),
            ),
            metadata,
        )

    def check_compatible(self, encoder_name: str, weights_checksum: str | None = None) -> None:
        """Refuse embeddings from another encoder (or other weights) than the model was trained on."""
        trained = self.metadata.encoder
        if trained.get("name") and trained["name"] != encoder_name:
            raise InputError(f"the model was trained on {trained['name']!r} embeddings, not {encoder_name!r}")
        if weights_checksum and trained.get("weights_checksum") not in (None, weights_checksum):
            raise InputError(
                f"the model was trained with other {encoder_name!r} weights "
                f"(checksum {trained['weights_checksum'][:12]}…, given {weights_checksum[:12]}…)"
            )


def _network(metadata: ModelMetadata, options: ModelOptions, tensors: dict, weights_path: Path) -> SpaHGC:
    """The network the config describes, with the folder's weights (an error if they do not fit)."""
    network = SpaHGC(metadata.embedding_dim, len(metadata.genes), options)
    try:
        network.load_state_dict(
            {k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")}
        )
    except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
        raise InputError(
            f"the weights do not fit the network its config.json describes (an earlier model format?): "
            f"{str(error).splitlines()[0]} — train it again",
            weights_path,
        ) from None
    return network
