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
from .graph import CS, RS, TS, FeatureScale, GraphOptions, ReferenceBank, build_graph
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

    Early stopping, member by member: every ``eval_every`` epochs each member still training predicts
    its held-out slides; a member stops once ``patience`` epochs pass without a better validation PCC
    (``None``: never) and keeps its best epoch's weights. Training ends when every member has stopped.
    """

    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    alpha: float = 0.8
    beta: float = 0.9
    masking: str = "complementary"
    mse_weight: float = 1.0
    pcc_weight: float = 3.0
    con_target_weight: float = 1.0
    con_reference_weight: float = 1.0
    eval_every: int = 5
    patience: int | None = 15
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
    validation_pcc: float | None = None  # mean over the members evaluated at this epoch
    member_pcc: list[float | None] | None = None  # per member; None for members that have stopped


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


def pearson_per_gene(pred: Tensor, truth: Tensor, mask: Tensor | None = None) -> Tensor:
    """Differentiable Pearson correlation of each gene (last axis) across spots (second-to-last axis),
    over the rows where ``mask`` (``(…, n, 1)``) is 1, for the training loss (the metric itself is
    :func:`napari_spahgc.evaluate.gene_pcc`); constant columns give NaN."""
    if mask is None:
        mask = torch.ones_like(pred[..., :1])
    count = mask.sum(-2, keepdim=True)
    pred = (pred - (pred * mask).sum(-2, keepdim=True) / count) * mask
    truth = (truth - (truth * mask).sum(-2, keepdim=True) / count) * mask
    denominator = pred.norm(dim=-2) * truth.norm(dim=-2)
    return torch.where(denominator > 1e-8, (pred * truth).sum(-2) / denominator.clamp_min(1e-8), torch.nan)


class SpaHGCPredictor:
    """A trained SpaHGC: the ensemble network, its reference bank (standardised embeddings and
    expression), the expression and embedding scales, and its metadata."""

    def __init__(
        self,
        network: SpaHGC,
        bank: ReferenceBank,
        scale: FeatureScale,
        embedding_scale: FeatureScale,
        graph_options: GraphOptions,
        train_options: TrainOptions,
        metadata: ModelMetadata,
    ) -> None:
        self.network = network.eval()
        self.bank, self.scale, self.embedding_scale = bank, scale, embedding_scale
        self.graph_options, self.train_options, self.metadata = graph_options, train_options, metadata

    @property
    def genes(self) -> list[str]:
        return self.metadata.genes

    @torch.inference_mode()
    def predict(self, slide: SlideData, device: str = "cpu") -> np.ndarray:
        """Predicted log1p-CPM (n_spots, n_genes), the mean of the ensemble members; deterministic:
        no masking, no dropout."""
        if slide.embeddings.shape[1] != self.metadata.embedding_dim:
            raise InputError(
                f"slide {slide.slide_id!r} has {slide.embeddings.shape[1]}-d embeddings but the model was "
                f"trained on {self.metadata.embedding_dim}-d ({self.metadata.encoder.get('name', '?')})"
            )
        bank = self.bank
        if np.any(bank.slide_ids == slide.slide_id):  # never retrieve a slide's own spots
            keep = bank.slide_ids != slide.slide_id
            bank = ReferenceBank(bank.embeddings[keep], bank.expression[keep], bank.slide_ids[keep])
        graph = build_graph(_standardised(slide, self.embedding_scale), bank, self.graph_options)
        target = resolve_device(device)
        network = self.network.to(target).eval()
        batch = GraphBatch.from_graphs([graph] * network.options.members, target)
        return self.scale.inverse(network(*batch.inputs).mean(0).float().cpu().numpy())

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
        if "members" not in config.get("model_options", {}) or "embedding_scale.mean" not in tensors:
            raise InputError(
                f"this model folder was written by napari-spahgc {config.get('package_version', '?')}, "
                "in an earlier model format (before ensembles and standardised embeddings); train it "
                "again with this version",
                folder,
            )
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
        scale = FeatureScale(tensors["scale.mean"].numpy(), tensors["scale.sd"].numpy())
        embedding_scale = FeatureScale(
            tensors["embedding_scale.mean"].numpy(), tensors["embedding_scale.sd"].numpy()
        )
        return cls(
            network,
            bank,
            scale,
            embedding_scale,
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
    """Fit SpaHGC as a cross-validated ensemble on training slides.

    The slides are split (seeded) into ``members`` groups; member i holds group i out and chooses its
    epoch on it, training on the others. All members train at once in one batched network, each on
    its own graphs: one gradient step per training slide and epoch (in a seeded random order), the
    slide as target against a bank of the member's *other* training slides; every ``eval_every``
    epochs each member predicts its held-out slides against its training slides, and its best epoch's
    weights are kept. Prediction averages the members. With two slides there is a single member
    trained on both, with no validation (final epoch). The final bank holds every training slide.
    """

    def __init__(
        self,
        slides: Sequence[SlideData],
        genes: Sequence[str],
        graph_options: GraphOptions = GraphOptions(),
        model_options: ModelOptions = ModelOptions(),
        train_options: TrainOptions = TrainOptions(),
        metadata: ModelMetadata | None = None,
    ) -> None:
        if len(slides) < 2:
            raise InputError("SpaHGC needs at least two training slides (each is a reference for the other)")
        self.embedding_scale = (
            FeatureScale.fit(slides, "embeddings")
            if graph_options.standardize_embeddings
            else FeatureScale.identity(slides[0].embeddings.shape[1])
        )
        self.slides = [_standardised(s, self.embedding_scale) for s in slides]
        self.held_out = validation_groups(len(self.slides), model_options.members, train_options.seed)
        self.graph_options, self.options = graph_options, train_options
        self.model_options = replace(model_options, members=len(self.held_out))
        self.scale = FeatureScale.fit(self.slides)
        self.bank = ReferenceBank.from_slides(self.slides, self.scale)
        self.metadata = metadata or ModelMetadata(
            genes=list(genes), embedding_dim=slides[0].embeddings.shape[1]
        )
        self.metadata.training_slides = [s.slide_id for s in self.slides]
        self.metadata.preprocessing["embeddings"] = (
            "standardised per feature on the training slides"
            if graph_options.standardize_embeddings
            else "as encoded"
        )
        self.metadata.validation_slides = [[self.slides[i].slide_id for i in g] for g in self.held_out]
        self.result: SpaHGCPredictor | None = None

    def steps(self) -> Iterator[TrainingProgress]:
        """Train; yields after every epoch. Stop iterating to cancel (``result`` stays None)."""
        o = self.options
        torch.manual_seed(o.seed)
        generator = torch.Generator().manual_seed(o.seed)  # slide order
        mask_rng = np.random.default_rng(o.seed)  # feature masks
        device = resolve_device(o.device)
        network = SpaHGC(self.metadata.embedding_dim, len(self.metadata.genes), self.model_options).to(device)
        optimiser = torch.optim.AdamW(  # fused: one kernel per weight on CPU and CUDA
            network.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=True
        )
        member_slides = [[s for i, s in enumerate(self.slides) if i not in group] for group in self.held_out]
        graphs = [[self._graph(s, train, with_truth=True) for s in train] for train in member_slides]
        validation = self._validation_rounds(member_slides)
        n_steps = max(len(g) for g in graphs)

        members = self.model_options.members
        active = list(range(members))  # members still training
        best_scores, best_epochs = np.full(members, -np.inf), np.zeros(members, dtype=int)
        trained = np.zeros(members, dtype=int)  # epochs each member trained for
        best_gene_pcc: list[np.ndarray | None] = [None] * members
        best_weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
        for epoch in range(1, o.epochs + 1):
            network.train()
            orders = [_order(len(g), n_steps, generator) for g in graphs]
            losses = []
            with network.members_only(active):
                for step in range(n_steps):
                    batch = GraphBatch.from_graphs([graphs[m][orders[m][step]] for m in active], device)
                    losses.append(self._step(network, optimiser, batch, mask_rng))
            trained[active] = epoch
            progress = TrainingProgress(epoch, o.epochs, float(np.mean(losses)))
            if validation and (epoch % o.eval_every == 0 or epoch == o.epochs):
                per_gene = self._validate(network, validation, active, device)
                scores = {m: float(np.nanmean(values)) for m, values in per_gene.items()}
                for m, score in scores.items():
                    if score > best_scores[m]:
                        best_scores[m], best_epochs[m], best_gene_pcc[m] = score, epoch, per_gene[m]
                        for name, value in network.state_dict().items():
                            best_weights[name][m] = value[m]
                    if o.patience and epoch - best_epochs[m] >= o.patience:
                        active.remove(m)  # early stopping, member by member
                progress.validation_pcc = float(np.mean(list(scores.values())))
                progress.member_pcc = [scores.get(m) for m in range(members)]
            yield progress
            if not active:
                break

        self.metadata.validation = {"epochs_run": epoch}
        if validation:
            network.load_state_dict(best_weights)
            self.metadata.validation.update(
                pcc=float(best_scores.mean()),
                members=[
                    {
                        "validation_slides": slides,
                        "pcc": float(s),
                        "best_epoch": int(e),
                        "epochs_trained": int(t),
                    }
                    for slides, s, e, t in zip(
                        self.metadata.validation_slides, best_scores, best_epochs, trained, strict=True
                    )
                ],
                gene_pcc=[
                    None if np.isnan(v) else round(float(v), 5)
                    for v in _nanmean_columns(np.stack(best_gene_pcc))
                ],
            )
        self.result = SpaHGCPredictor(
            network.cpu().eval(),
            self.bank,
            self.scale,
            self.embedding_scale,
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

    def _step(self, network: SpaHGC, optimiser, batch: GraphBatch, mask_rng: np.random.Generator) -> float:
        """One gradient step of every member on its graph: supervised + contrastive loss on two
        masked views. The loss is the sum of the members' losses, so each member's gradient is the
        one it would get trained alone."""
        o = self.options
        views = self._views(batch.target_x, batch.reference_x, mask_rng)
        target, reference = network.encode(views[0], views[1], batch.edges)
        prediction = network.predict_genes(target, reference, batch.retrieved)
        rows = batch.target_mask
        mse = ((prediction - batch.truth) ** 2 * rows).sum((1, 2)) / (rows.sum((1, 2)) * prediction.shape[-1])
        pcc = torch.nanmean(pearson_per_gene(prediction, batch.truth, rows), dim=-1)
        loss = o.mse_weight * mse + o.pcc_weight * (1 - pcc)
        if o.masking != "none":
            with torch.no_grad():
                target_2, reference_2 = network.encode(views[2], views[3], batch.edges)
            loss = loss + o.con_target_weight * _contrastive(target, target_2, rows.squeeze(-1))
            loss = loss + o.con_reference_weight * _contrastive(
                reference, reference_2, batch.reference_mask.squeeze(-1)
            )
        loss = loss.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return float(loss.detach()) / len(prediction)

    def _graph(
        self, target: SlideData, references: Sequence[SlideData], with_truth: bool = False
    ) -> HeteroData:
        others = [s for s in references if s.slide_id != target.slide_id]
        graph = build_graph(target, ReferenceBank.from_slides(others, self.scale), self.graph_options)
        if with_truth:
            graph["target"].y = torch.from_numpy(self.scale.transform(target.expression))
        return graph

    def _validation_rounds(self, member_slides) -> list[list[tuple[HeteroData, np.ndarray | None]]]:
        """Validation rounds: in round r each member predicts its r-th held-out slide (graph, truth);
        members with fewer held-out slides repeat their last one, unscored (truth None)."""
        if not any(self.held_out):
            return []
        rounds = []
        for r in range(max(len(g) for g in self.held_out)):
            picks = [(group[min(r, len(group) - 1)], r < len(group)) for group in self.held_out]
            rounds.append(
                [
                    (self._graph(self.slides[i], train), self.slides[i].expression if scored else None)
                    for (i, scored), train in zip(picks, member_slides, strict=True)
                ]
            )
        return rounds

    @torch.no_grad()
    def _validate(self, network: SpaHGC, rounds, members: list[int], device) -> dict[int, np.ndarray]:
        """Per listed member, the per-gene PCC on its held-out slides (unmasked, eval mode; mean over
        its slides; constant genes are NaN)."""
        network.eval()
        scores: dict[int, list[np.ndarray]] = {m: [] for m in members}
        with network.members_only(members):
            for graphs in rounds:
                batch = GraphBatch.from_graphs([graphs[m][0] for m in members], device)
                predictions = batch.split(network(*batch.inputs).cpu().numpy())
                for m, prediction in zip(members, predictions, strict=True):
                    truth = graphs[m][1]
                    if truth is not None:
                        scores[m].append(gene_pcc(truth, self.scale.inverse(prediction)))
        return {m: _nanmean_columns(np.stack(values)) for m, values in scores.items()}

    def _views(self, x_t: Tensor, x_r: Tensor, rng: np.random.Generator) -> tuple[Tensor, ...]:
        """The two masked views of the target and reference features: (target 1, reference 1,
        target 2, reference 2), each view rescaled by 1 / (its keep ratio)."""
        o = self.options
        if o.masking == "none":
            return x_t, x_r, x_t, x_r
        views = []
        for x, keep in ((x_t, o.alpha), (x_r, o.beta)):
            first = _bernoulli(x.shape, keep, rng).to(x.device)
            second = (
                ~first if o.masking == "complementary" else _bernoulli(x.shape, 1 - keep, rng).to(x.device)
            )
            views.append((_masked(x, first, keep), _masked(x, second, 1 - keep)))
        (t1, t2), (r1, r2) = views
        return t1, r1, t2, r2


@dataclass
class GraphBatch:
    """One graph per ensemble member, padded to common node counts: features ``(members, n, d)``,
    edges indexing the flattened ``members × n`` rows (each member's graph a disjoint block), each
    target's CS references as a ``(members, n_target, k)`` table, and masks of the real rows."""

    target_x: Tensor
    reference_x: Tensor
    edges: dict
    retrieved: Tensor
    n_targets: list[int]
    target_mask: Tensor
    reference_mask: Tensor
    truth: Tensor | None = None

    @property
    def inputs(self) -> tuple[Tensor, Tensor, dict, Tensor]:
        return self.target_x, self.reference_x, self.edges, self.retrieved

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """Per member, its real target rows of a ``(members, n, …)`` array."""
        return [values[m, :n] for m, n in enumerate(self.n_targets)]

    @classmethod
    def from_graphs(cls, graphs: Sequence[HeteroData], device: torch.device | str = "cpu") -> GraphBatch:
        n_t = max(g["target"].num_nodes for g in graphs)
        n_r = max(g["reference"].num_nodes for g in graphs)
        ks = {g[CS].edge_index.shape[1] // max(g["target"].num_nodes, 1) for g in graphs}
        if len(ks) > 1:
            raise InputError("every member's bank must offer the same number K of CS references")
        k = ks.pop()
        edges: dict = {TS: [], CS: [], RS: []}
        retrieved = torch.empty(len(graphs), n_t, k, dtype=torch.long)
        for m, g in enumerate(graphs):
            t0, r0 = m * n_t, m * n_r
            edges[TS].append(g[TS].edge_index + t0)
            edges[RS].append(g[RS].edge_index + r0)
            edges[CS].append(g[CS].edge_index + torch.tensor([[r0], [t0]]))
            retrieved[m] = r0  # padded targets point at the member's first reference; never scored
            retrieved[m, : g["target"].num_nodes] = g[CS].edge_index[0].view(-1, k) + r0
        has_truth = all("y" in g["target"] for g in graphs)
        return cls(
            target_x=_pad([g["target"].x for g in graphs], n_t).to(device),
            reference_x=_pad([g["reference"].x for g in graphs], n_r).to(device),
            edges={relation: torch.cat(e, dim=1).to(device) for relation, e in edges.items()},
            retrieved=retrieved.to(device),
            n_targets=[g["target"].num_nodes for g in graphs],
            target_mask=_pad([torch.ones(g["target"].num_nodes, 1) for g in graphs], n_t).to(device),
            reference_mask=_pad([torch.ones(g["reference"].num_nodes, 1) for g in graphs], n_r).to(device),
            truth=_pad([g["target"].y for g in graphs], n_t).to(device) if has_truth else None,
        )


def _pad(tensors: Sequence[Tensor], rows: int) -> Tensor:
    """Stack 2-d tensors along a new first axis, zero-padding their rows to ``rows``."""
    out = tensors[0].new_zeros(len(tensors), rows, tensors[0].shape[1])
    for m, t in enumerate(tensors):
        out[m, : len(t)] = t
    return out


def _order(n_graphs: int, n_steps: int, generator: torch.Generator) -> list[int]:
    """A seeded random order of a member's graphs for one epoch, extended by random draws when the
    member has fewer graphs than the epoch has steps."""
    order = torch.randperm(n_graphs, generator=generator).tolist()
    extra = torch.randint(n_graphs, (n_steps - n_graphs,), generator=generator).tolist()
    return order + extra


def _standardised(slide: SlideData, scale: FeatureScale) -> SlideData:
    """A copy of ``slide`` with standardised embeddings."""
    return replace(slide, embeddings=scale.transform(slide.embeddings))


def _bernoulli(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> Tensor:
    """A boolean mask, each entry True with probability ``p`` (to 1/65536): drawn as 16-bit integers
    by numpy's PCG64, about 3× faster than torch's CPU generator for these millions of entries."""
    draws = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    return torch.from_numpy(draws < round(p * (1 << 16)))


def _masked(x: Tensor, kept: Tensor, keep_ratio: float) -> Tensor:
    """``x`` where ``kept``, 0 elsewhere, rescaled by 1 / ``keep_ratio`` (one pass; the bool mask is
    never converted to floats, which is slow on the CPU)."""
    return torch.where(kept, x * (1 / torch.tensor(keep_ratio, dtype=x.dtype)), 0.0)


def _nanmean_columns(values: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN (NaN where a column has no value), without a warning."""
    counts = np.sum(~np.isnan(values), axis=0)
    return np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)


def _contrastive(online: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Asymmetric contrastive term 2 − 2·cos(online, stop-gradient target), averaged over nodes (the
    real ones where ``mask`` is given; one value per leading index)."""
    term = 2 - 2 * torch.nn.functional.cosine_similarity(online, target.detach(), dim=-1)
    if mask is None:
        return term.mean(-1)
    return (term * mask).sum(-1) / mask.sum(-1)


def validation_groups(n_slides: int, members: int, seed: int) -> list[list[int]]:
    """The held-out slide indices of each ensemble member: the slides in a seeded order, split into
    min(members, n_slides) groups; with ``members=1`` one slide is held out; with fewer than three
    slides a single member holds nothing out."""
    if n_slides < 3:
        return [[]]
    order = np.random.default_rng(seed).permutation(n_slides)
    if members <= 1:
        return [[int(order[0])]]
    return [sorted(int(i) for i in part) for part in np.array_split(order, min(members, n_slides))]


def fit_predict_fold(
    train: Sequence[SlideData],
    test: SlideData,
    seed: int = 0,
    device: str = "auto",
    genes: Sequence[str] | None = None,
    **options,
) -> np.ndarray:
    """One benchmark fold: train the cross-validated ensemble on ``train`` (epochs chosen on held-out
    training slides only), predict ``test`` against a bank of every training slide.

    ``options`` are fields of :class:`TrainOptions`, :class:`GraphOptions` or :class:`ModelOptions`.
    """
    if any(s.slide_id == test.slide_id for s in train):
        raise ValueError(f"test slide {test.slide_id!r} is among the training slides")
    graph_options, model_options, train_options = split_options(options, seed=seed, device=device)
    genes = list(genes) if genes is not None else [str(i) for i in range(train[0].expression.shape[1])]
    trainer = Trainer(train, genes, graph_options, model_options, train_options)
    return trainer.fit().predict(test, device=device)


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
