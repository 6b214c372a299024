"""Training and prediction of SpaHGC; a trained model is a folder of safetensors + JSON (no pickle).

Training is a generator (:meth:`Trainer.steps`) that yields one :class:`TrainingProgress` per epoch,
so the CLI shows a progress bar and the napari widget can cancel between epochs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch_geometric.data import HeteroData

from ._device import resolve_device
from ._files import atomic_path
from .dataset import SlideData
from .errors import InputError
from .evaluate import gene_pcc
from .graph import CS, RS, TS, ExpressionScale, GraphOptions, ReferenceBank, build_graph
from .model import ModelOptions, SpaHGC

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MASKINGS = ("complementary", "random", "none")


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation, masking and loss weights.

    Masking: for every step a mask M is drawn per feature entry; the supervised view keeps an entry
    with probability ``alpha`` (targets) or ``beta`` (references), the other view keeps exactly the
    complement 1 − M; each view is rescaled by 1 / (its keep ratio). ``masking="random"`` draws the
    second view's mask independently (ablation), ``"none"`` disables masking and the contrastive terms.
    """

    epochs: int = 200
    lr: float = 1e-4
    weight_decay: float = 1e-4
    alpha: float = 0.8
    beta: float = 0.9
    masking: str = "complementary"
    mse_weight: float = 1.0
    pcc_weight: float = 3.0
    con_target_weight: float = 1.0
    con_reference_weight: float = 1.0
    eval_every: int = 5
    patience: int | None = 50
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}")
        if not (0 < self.alpha < 1 and 0 < self.beta < 1):
            raise ValueError("alpha and beta must lie strictly between 0 and 1")


@dataclass
class TrainingProgress:
    epoch: int
    total: int
    loss: float
    validation_pcc: float | None = None


@dataclass
class ModelMetadata:
    """What a model folder records besides weights (written to config.json)."""

    genes: list[str]
    embedding_dim: int
    encoder: dict = field(default_factory=dict)
    patch: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=lambda: {"normalize": "counts / spot total × 1e6, log1p"})
    training_slides: list[str] = field(default_factory=list)
    validation_slide: str | None = None
    validation: dict = field(default_factory=dict)


def pearson_per_gene(pred: Tensor, truth: Tensor) -> Tensor:
    """Differentiable Pearson correlation of each gene (column) across spots, for the training loss
    (the metric itself is :func:`napari_spahgc.evaluate.gene_pcc`); constant columns give NaN."""
    pred = pred - pred.mean(0)
    truth = truth - truth.mean(0)
    denominator = pred.norm(dim=0) * truth.norm(dim=0)
    return torch.where(denominator > 1e-8, (pred * truth).sum(0) / denominator.clamp_min(1e-8), torch.nan)


class SpaHGCPredictor:
    """A trained SpaHGC: the network, its reference bank and expression scale, and its metadata."""

    def __init__(
        self,
        network: SpaHGC,
        bank: ReferenceBank,
        scale: ExpressionScale,
        graph_options: GraphOptions,
        train_options: TrainOptions,
        metadata: ModelMetadata,
    ) -> None:
        self.network = network.eval()
        self.bank, self.scale = bank, scale
        self.graph_options, self.train_options, self.metadata = graph_options, train_options, metadata

    @property
    def genes(self) -> list[str]:
        return self.metadata.genes

    @torch.inference_mode()
    def predict(self, slide: SlideData, device: str = "cpu") -> np.ndarray:
        """Predicted log1p-CPM (n_spots, n_genes); deterministic: no masking, no dropout."""
        if slide.embeddings.shape[1] != self.metadata.embedding_dim:
            raise InputError(
                f"slide {slide.slide_id!r} has {slide.embeddings.shape[1]}-d embeddings but the model was "
                f"trained on {self.metadata.embedding_dim}-d ({self.metadata.encoder.get('name', '?')})"
            )
        bank = self.bank
        if np.any(bank.slide_ids == slide.slide_id):  # never retrieve a slide's own spots
            keep = bank.slide_ids != slide.slide_id
            bank = ReferenceBank(bank.embeddings[keep], bank.expression[keep], bank.slide_ids[keep])
        graph = build_graph(slide, bank, self.graph_options)
        target = resolve_device(device)
        network = self.network.to(target).eval()
        x_t, x_r, edges = _inputs(graph, target)
        return self.scale.inverse(network(x_t, x_r, edges).float().cpu().numpy())

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
            }
        )
        config = {
            "format": "napari-spahgc model",
            "package_version": __version__,
            **asdict(self.metadata),
            "bank_slide_ids": self.bank.slide_ids.tolist(),
            "model_options": self.network.options.to_dict(),
            "graph_options": asdict(self.graph_options),
            "train_options": asdict(self.train_options),
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
        metadata = ModelMetadata(**{k: config[k] for k in ModelMetadata.__dataclass_fields__ if k in config})
        network = SpaHGC(metadata.embedding_dim, len(metadata.genes), ModelOptions(**config["model_options"]))
        network.load_state_dict(
            {k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")}
        )
        bank = ReferenceBank(
            tensors["bank.embeddings"].numpy(),
            tensors["bank.expression"].numpy(),
            np.asarray(config["bank_slide_ids"], dtype=object),
        )
        scale = ExpressionScale(tensors["scale.mean"].numpy(), tensors["scale.sd"].numpy())
        return cls(
            network,
            bank,
            scale,
            GraphOptions(**config["graph_options"]),
            TrainOptions(**config["train_options"]),
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


class Trainer:
    """Fit SpaHGC on training slides, choosing the epoch on a validation slide (also a training slide).

    Each epoch takes one gradient step per ``train`` slide (in a seeded random order), the slide as
    target against a bank of the *other* ``train`` slides. The validation slide is predicted against the ``train`` slides every ``eval_every`` epochs;
    the best epoch's weights are kept. The final bank holds every training slide, validation included.
    """

    def __init__(
        self,
        train: Sequence[SlideData],
        validation: SlideData | None,
        genes: Sequence[str],
        graph_options: GraphOptions = GraphOptions(),
        model_options: ModelOptions = ModelOptions(),
        train_options: TrainOptions = TrainOptions(),
        metadata: ModelMetadata | None = None,
    ) -> None:
        if len(train) < 2:
            raise InputError("SpaHGC needs at least two training slides (each is a reference for the other)")
        self.train, self.validation = list(train), validation
        self.graph_options, self.model_options, self.options = graph_options, model_options, train_options
        everything = [*self.train, *([validation] if validation is not None else [])]
        self.scale = ExpressionScale.fit(everything)
        self.bank = ReferenceBank.from_slides(everything, self.scale)
        self.metadata = metadata or ModelMetadata(
            genes=list(genes), embedding_dim=train[0].embeddings.shape[1]
        )
        self.metadata.training_slides = [s.slide_id for s in everything]
        self.metadata.validation_slide = validation.slide_id if validation is not None else None
        self.result: SpaHGCPredictor | None = None

    def steps(self) -> Iterator[TrainingProgress]:
        """Train; yields after every epoch. Stop iterating to cancel (``result`` stays None)."""
        o = self.options
        torch.manual_seed(o.seed)
        generator = torch.Generator().manual_seed(o.seed)
        device = resolve_device(o.device)
        network = SpaHGC(self.metadata.embedding_dim, len(self.metadata.genes), self.model_options).to(device)
        optimiser = torch.optim.AdamW(network.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        graphs = [
            (*_inputs(self._graph(slide, self.train), device), self._truth(slide, device))
            for slide in self.train
        ]
        validation = self._validation_inputs(device)

        best = (-np.inf, 0, None, None)
        for epoch in range(1, o.epochs + 1):
            network.train()
            losses = []
            for index in torch.randperm(len(graphs), generator=generator).tolist():
                losses.append(self._step(network, optimiser, *graphs[index], generator))
            loss = float(np.mean(losses))

            score = None
            if validation is not None and (epoch % o.eval_every == 0 or epoch == o.epochs):
                per_gene = self._validate(network, validation)
                score = float(np.nanmean(per_gene))
                if score > best[0]:
                    weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
                    best = (score, epoch, weights, per_gene)
            yield TrainingProgress(epoch, o.epochs, loss, score)
            if o.patience and best[2] is not None and epoch - best[1] >= o.patience:
                break

        if best[2] is not None:
            network.load_state_dict(best[2])
            self.metadata.validation = {
                "pcc": float(best[0]),
                "best_epoch": int(best[1]),
                "epochs_run": epoch,
                "gene_pcc": [None if np.isnan(v) else round(float(v), 5) for v in best[3]],
            }
        else:
            self.metadata.validation = {"epochs_run": epoch}
        self.result = SpaHGCPredictor(
            network.cpu().eval(),
            self.bank,
            self.scale,
            self.graph_options,
            replace(o, epochs=epoch),
            self.metadata,
        )

    def fit(self) -> SpaHGCPredictor:
        for _ in self.steps():
            pass
        assert self.result is not None
        return self.result

    # ----------------------------------------------------------------------------------------- internals

    def _step(self, network, optimiser, x_t, x_r, edges, truth, generator) -> float:
        """One gradient step on one slide graph: supervised + contrastive loss on two masked views."""
        o = self.options
        masks = self._masks(x_t, x_r, generator)
        target, reference = network.encode(x_t * masks[0], x_r * masks[1], edges)
        prediction = network.predict_genes(target, reference, edges)
        loss = o.mse_weight * torch.nn.functional.mse_loss(prediction, truth)
        loss = loss + o.pcc_weight * (1 - torch.nanmean(pearson_per_gene(prediction, truth)))
        if o.masking != "none":
            with torch.no_grad():
                target_2, reference_2 = network.encode(x_t * masks[2], x_r * masks[3], edges)
            loss = loss + o.con_target_weight * _contrastive(target, target_2)
            loss = loss + o.con_reference_weight * _contrastive(reference, reference_2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    def _truth(self, slide: SlideData, device: torch.device) -> Tensor:
        return torch.from_numpy(self.scale.transform(slide.expression)).to(device)

    def _graph(self, target: SlideData, references: Sequence[SlideData]) -> HeteroData:
        others = [s for s in references if s.slide_id != target.slide_id]
        return build_graph(target, ReferenceBank.from_slides(others, self.scale), self.graph_options)

    def _validation_inputs(self, device: torch.device):
        if self.validation is None:
            return None
        graph = self._graph(self.validation, self.train)
        return (*_inputs(graph, device), self.validation.expression)

    @torch.no_grad()
    def _validate(self, network: SpaHGC, validation) -> np.ndarray:
        """Per-gene PCC on the validation slide (unmasked, eval mode; constant genes are NaN)."""
        x_t, x_r, edges, truth = validation
        network.eval()
        return gene_pcc(truth, self.scale.inverse(network(x_t, x_r, edges).cpu().numpy()))

    def _masks(self, x_t: Tensor, x_r: Tensor, generator: torch.Generator) -> tuple[Tensor, ...]:
        o = self.options
        if o.masking == "none":
            ones_t, ones_r = torch.ones_like(x_t), torch.ones_like(x_r)
            return ones_t, ones_r, ones_t, ones_r
        views = []
        for x, keep in ((x_t, o.alpha), (x_r, o.beta)):
            first = (torch.rand(x.shape, generator=generator) < keep).to(x.device)
            if o.masking == "complementary":
                second = ~first
            else:
                second = (torch.rand(x.shape, generator=generator) < 1 - keep).to(x.device)
            views.append((first / keep, second / (1 - keep)))
        (t1, t2), (r1, r2) = views
        return t1, r1, t2, r2


def _inputs(graph: HeteroData, device: torch.device) -> tuple[Tensor, Tensor, dict]:
    edges = {relation: graph[relation].edge_index.to(device) for relation in (TS, CS, RS)}
    return graph["target"].x.to(device), graph["reference"].x.to(device), edges


def _contrastive(online: Tensor, target: Tensor) -> Tensor:
    """Asymmetric contrastive term 2 − 2·cos(online, stop-gradient target), averaged over nodes."""
    cosine = torch.nn.functional.cosine_similarity(online, target.detach(), dim=-1)
    return (2 - 2 * cosine).mean()


def fit_predict_fold(
    train: Sequence[SlideData],
    test: SlideData,
    seed: int = 0,
    device: str = "auto",
    genes: Sequence[str] | None = None,
    **options,
) -> np.ndarray:
    """One benchmark fold: hold out one training slide (chosen by ``seed``) for epoch selection,
    train on the rest, predict ``test`` against a bank of every training slide.

    ``options`` are fields of :class:`TrainOptions`, :class:`GraphOptions` or :class:`ModelOptions`.
    """
    if any(s.slide_id == test.slide_id for s in train):
        raise ValueError(f"test slide {test.slide_id!r} is among the training slides")
    graph_options, model_options, train_options = split_options(options, seed=seed, device=device)
    train, validation = split_validation(train, seed)
    genes = list(genes) if genes is not None else [str(i) for i in range(train[0].expression.shape[1])]
    trainer = Trainer(train, validation, genes, graph_options, model_options, train_options)
    return trainer.fit().predict(test, device=device)


def split_validation(slides: Sequence[SlideData], seed: int) -> tuple[list[SlideData], SlideData | None]:
    """Hold out one slide (drawn with ``seed``) for epoch selection when at least three are given."""
    slides = list(slides)
    if len(slides) < 3:
        return slides, None
    validation = slides.pop(int(np.random.default_rng(seed).integers(len(slides))))
    return slides, validation


def split_options(options: dict, **overrides) -> tuple[GraphOptions, ModelOptions, TrainOptions]:
    """Sort keyword options into the three option dataclasses (unknown names are an error)."""
    options = {**options, **overrides}
    groups = []
    for kind in (GraphOptions, ModelOptions, TrainOptions):
        fields = set(kind.__dataclass_fields__)
        groups.append(kind(**{k: v for k, v in options.items() if k in fields}))
    unknown = set(options) - set().union(
        *(k.__dataclass_fields__ for k in (GraphOptions, ModelOptions, TrainOptions))
    )
    if unknown:
        raise ValueError(f"unknown SpaHGC option(s): {', '.join(sorted(unknown))}")
    return tuple(groups)
