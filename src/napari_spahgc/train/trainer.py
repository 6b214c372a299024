"""Training SpaHGC as a cross-validated ensemble: a generator (:meth:`Trainer.steps`) that yields one
:class:`~napari_spahgc.base.progress.Progress` per epoch (its loss and validation PCC in ``values``), so
a progress bar moves and a widget can cancel between epochs. The training flow
(:func:`napari_spahgc.train.flow.train`) is the one place that drives it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.progress import Progress
from napari_spahgc.embed.device import resolve_device
from napari_spahgc.model.config import SpaHGCConfig
from napari_spahgc.model.graph import ReferenceBank, graph_parts
from napari_spahgc.model.neighbours import spatial_blocks
from napari_spahgc.model.network import SpaHGC
from napari_spahgc.model.predictor import ModelMetadata, SpaHGCPredictor
from napari_spahgc.model.slide_data import FeatureScale, SlideData
from napari_spahgc.train.batch import GraphBatch, TableRows
from napari_spahgc.train.losses import bernoulli_mask, contrastive, masked, pearson_per_gene
from napari_spahgc.train.model_selection import (
    BestEpochs,
    calibrate,
    choose_smoothing,
    held_out_predictions,
    nanmean_columns,
    validate,
    validation_groups,
)


class Trainer:
    """Fit SpaHGC as a cross-validated ensemble on training slides.

    The slides are split (seeded) into ``members`` groups; member i holds group i out and chooses its
    epoch on it, training on the others. All members train at once in one batched network, each on
    its own graphs: one gradient step per training slide (or per block of ``batch_spots`` spots of a
    larger slide) and epoch, in a seeded random order, the slide as target against a bank of the
    member's *other* training slides; every ``eval_every``
    epochs each member predicts its held-out slides against its training slides, and its best epoch's
    weights are kept. Prediction averages the members. With two slides there is a single member
    trained on both, with no validation (final epoch). The final bank holds every training slide.
    """

    def __init__(
        self,
        slides: Sequence[SlideData],
        genes: Sequence[str],
        config: SpaHGCConfig = SpaHGCConfig(),
        metadata: ModelMetadata | None = None,
    ) -> None:
        if len(slides) < 2:
            raise InputError("SpaHGC needs at least two training slides (each is a reference for the other)")
        graph_options = config.graph
        self.embedding_scale = (
            FeatureScale.fit(slides, "embeddings")
            if graph_options.standardize_embeddings
            else FeatureScale.identity(slides[0].embeddings.shape[1])
        )
        self.scale = FeatureScale.fit(slides)
        #: every training spot's features, held once: standardised embeddings (their distinct rows) and
        #: expression, in the embeddings' float type; the final bank, each member's bank and every
        #: graph's nodes are rows of it
        self.bank = ReferenceBank.from_slides(slides, self.scale, self.embedding_scale)
        first = np.cumsum([0, *(s.n_spots for s in slides)])
        self._rows = {s.slide_id: slice(a, a + s.n_spots) for s, a in zip(slides, first, strict=False)}
        self.slides = [
            replace(s, embeddings=self.bank.embeddings.take(self._rows[s.slide_id]), expression=None)
            for s in slides
        ]
        self.held_out = validation_groups(
            len(self.slides), config.model.members, config.train.seed, config.train.hold_out
        )
        self.graph_options, self.options = graph_options, config.train
        self.model_options = replace(config.model, members=len(self.held_out))
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
        #: the members' smoothed predictions of their own held-out training slides, by slide id
        #: (empty without held-out slides): inner validation for what is chosen after training
        self.held_out_predictions: dict[str, np.ndarray] = {}
        self._bank: tuple[tuple[str, ...], ReferenceBank, np.ndarray] | None = None  # the last one built

    def steps(self) -> Iterator[Progress]:
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
        member_slides = self.member_slides()
        graphs = self._training_graphs(member_slides)
        validation = self._validation_rounds(member_slides)
        self._bank = None  # the graphs hold what they need
        best = BestEpochs.start(network, self.model_options.members)
        for epoch in range(1, o.epochs + 1):
            loss = self._epoch(network, optimiser, graphs, best.active, generator, mask_rng, device)
            best.trained[best.active] = epoch
            values: dict = {"loss": loss, "validation_pcc": None, "member_pcc": None}
            if validation and (epoch % o.eval_every == 0 or epoch == o.epochs):
                per_gene = validate(network, validation, best.active, self.scale, device)
                scores = best.update(epoch, per_gene, network, o.patience)
                values["validation_pcc"] = float(np.mean(list(scores.values())))
                # per member; None for members that have stopped
                values["member_pcc"] = [scores.get(m) for m in range(self.model_options.members)]
            yield Progress(epoch, o.epochs, _epoch_text(epoch, o.epochs, values), "train", values)
            if not best.active:
                break
        self.result = self._finish(network, best, epoch, validation, device)

    def member_slides(self) -> list[list[SlideData]]:
        """Each member's training slides: every training slide but the ones it holds out."""
        return [[s for i, s in enumerate(self.slides) if i not in group] for group in self.held_out]

    # ----------------------------------------------------------------------------------------- internals

    def _epoch(self, network, optimiser, graphs, active, generator, mask_rng, device) -> float:
        """One epoch of the active members: as many steps as the largest member has graphs, each
        member's graphs in a seeded random order; returns the mean loss."""
        network.train()
        n_steps = max(len(g) for g in graphs)
        orders = [_order(len(g), n_steps, generator) for g in graphs]
        losses = []
        for step in range(n_steps):
            chosen = {m: graphs[m][orders[m][step]] for m in active}
            optimiser.zero_grad()
            loss = 0.0
            for group in member_groups(chosen, self.options.step_nodes):
                with network.members_only(group):
                    batch = GraphBatch.from_graphs([chosen[m] for m in group], device)
                    loss += self._backward(network, batch, mask_rng)
            optimiser.step()
            losses.append(loss / len(active))
        return float(np.mean(losses))

    def _finish(
        self, network: SpaHGC, best: BestEpochs, epochs_run: int, validation, device
    ) -> SpaHGCPredictor:
        """The trained model: every member at its best epoch and the smoothing its held-out slides
        chose (when validated), with its metadata."""
        self.metadata.validation = {"epochs_run": epochs_run}
        graph_options = self.graph_options
        if validation:
            network.load_state_dict(best.weights)
            self.metadata.validation.update(
                pcc=float(best.scores.mean()),
                members=[
                    {
                        "validation_slides": slides,
                        "pcc": float(s),
                        "best_epoch": int(e),
                        "epochs_trained": int(t),
                    }
                    for slides, s, e, t in zip(
                        self.metadata.validation_slides, best.scores, best.epochs, best.trained, strict=True
                    )
                ],
                gene_pcc=[
                    None if np.isnan(v) else round(float(v), 5)
                    for v in nanmean_columns(np.stack(best.gene_pcc))
                ],
            )
            if self.options.tune_smoothing:
                smoothing, means = choose_smoothing(
                    network, validation, self.scale, self.graph_options.q, device
                )
                graph_options = replace(graph_options, smoothing=smoothing)
                self.metadata.validation["smoothing_pcc"] = means
        calibration = None
        if validation:  # the intervals: calibrated on the held-out slides, as the model now predicts
            predictions = held_out_predictions(
                network, validation, self.scale, graph_options.q, graph_options.smoothing, device
            )
            calibration = calibrate(predictions, self.scale, self.options.seed)
            self.metadata.calibration = calibration.record()
            self.held_out_predictions = self._by_slide(predictions)
        config = SpaHGCConfig(graph_options, self.model_options, replace(self.options, epochs=epochs_run))
        return SpaHGCPredictor(
            network.cpu().eval(),
            self.bank,
            self.scale,
            self.embedding_scale,
            config,
            self.metadata,
            calibration=calibration,
        )

    def _by_slide(self, predictions) -> dict[str, np.ndarray]:
        """Each held-out training slide's prediction (the mean over the members that held it out)."""
        by_slide: dict[str, list[np.ndarray]] = {}
        for r, m, _, prediction in predictions:
            by_slide.setdefault(self.slides[self.held_out[m][r]].slide_id, []).append(prediction)
        return {slide_id: np.mean(values, axis=0) for slide_id, values in by_slide.items()}

    def _backward(self, network: SpaHGC, batch: GraphBatch, mask_rng: np.random.Generator) -> float:
        """Back-propagate the loss of every member in ``batch`` on its graph: supervised + contrastive
        loss on two masked views. The loss is the sum of the members' losses, so each member's gradient
        is the one it would get trained alone. Returns that sum."""
        o = self.options
        views = self._views(batch.target_x, batch.reference_x, mask_rng)
        target, reference = network.encode(views[0], views[1], batch.edges)
        prediction = network.predict_genes(target, reference, batch.retrieved, batch.prior)
        rows = batch.target_mask
        mse = ((prediction - batch.truth) ** 2 * rows).sum((1, 2)) / (rows.sum((1, 2)) * prediction.shape[-1])
        pcc = torch.nanmean(pearson_per_gene(prediction, batch.truth, rows), dim=-1)
        loss = o.mse_weight * mse + o.pcc_weight * (1 - pcc)
        if o.masking != "none":
            with torch.no_grad():
                target_2, reference_2 = network.encode(views[2], views[3], batch.edges)
            loss = loss + o.con_target_weight * contrastive(target, target_2, rows.squeeze(-1))
            loss = loss + o.con_reference_weight * contrastive(
                reference, reference_2, batch.reference_mask.squeeze(-1)
            )
        loss = loss.sum()
        loss.backward()
        return float(loss.detach())

    def _training_graphs(self, member_slides: list[list[SlideData]]) -> list[list[HeteroData]]:
        """Each member's training graphs: every block of its training slides, against the member's
        training slides or, with ``training_bank="all"``, every training slide (the target's excepted)."""
        every = self.options.training_bank == "all"
        return [
            [
                self._graph(s, self.slides if every else train, rows, True)
                for s in train
                for rows in self._blocks(s)
            ]
            for train in member_slides
        ]

    def _blocks(self, slide: SlideData) -> list[np.ndarray | None]:
        """The slide's training blocks of at most ``batch_spots`` spots as row arrays (None: the whole
        slide, when small)."""
        if slide.n_spots <= self.options.batch_spots:
            return [None]
        return spatial_blocks(slide.coords, self.options.batch_spots)

    def _graph(
        self,
        target: SlideData,
        references: Sequence[SlideData],
        rows: np.ndarray | None = None,
        with_truth: bool = False,
    ) -> HeteroData:
        """The graph of training slide ``target`` (its spots ``rows``; None: all) against the other
        ``references``. Its nodes are row numbers into the table of every training spot (``bank``),
        read when a batch is made (:class:`~napari_spahgc.train.batch.TableRows`), not copies."""
        others = tuple(s.slide_id for s in references if s.slide_id != target.slide_id)
        if self._bank is None or self._bank[0] != others:  # a slide's blocks come in a row: one bank
            bank_rows = np.concatenate([np.arange(self._rows[i].start, self._rows[i].stop) for i in others])
            contiguous = len(others) == 1 or np.all(np.diff(bank_rows) == 1)
            keep = slice(bank_rows[0], bank_rows[-1] + 1) if contiguous else bank_rows  # a view when it can
            self._bank = others, self.bank.rows(keep), bank_rows
        _, bank, bank_rows = self._bank
        own = np.arange(target.n_spots) if rows is None else rows
        graph = graph_parts(target if rows is None else target.subset(rows), bank, self.graph_options)
        graph = graph.hetero_data(bank)
        truth = {"y": TableRows(self.bank, "expression")} if with_truth else {}
        _share_rows(
            graph["target"],
            self._rows[target.slide_id].start + own,
            x=TableRows(self.bank, "embeddings"),
            **truth,
        )
        _share_rows(
            graph["reference"],
            bank_rows[graph["reference"].bank_index.numpy()],
            x=TableRows(self.bank, "joint"),
            y=TableRows(self.bank, "expression"),
        )
        return graph

    def _validation_rounds(self, member_slides) -> list[list[tuple[HeteroData, np.ndarray | None]]]:
        """Validation rounds: in round r each member predicts its r-th held-out slide (graph, truth, spot
        coordinates); members with fewer held-out slides repeat their last one, unscored (truth None)."""
        if not any(self.held_out):
            return []
        rounds = []
        for r in range(max(len(g) for g in self.held_out)):
            picks = [(group[min(r, len(group) - 1)], r < len(group)) for group in self.held_out]
            rounds.append(
                [
                    (
                        self._graph(self.slides[i], train),
                        self.scale.inverse(self.bank.expression[self._rows[self.slides[i].slide_id]])
                        if scored
                        else None,
                        self.slides[i].coords,
                    )
                    for (i, scored), train in zip(picks, member_slides, strict=True)
                ]
            )
        return rounds

    def _views(self, x_t: Tensor, x_r: Tensor, rng: np.random.Generator) -> tuple[Tensor, ...]:
        """The two masked views of the target and reference features: (target 1, reference 1,
        target 2, reference 2), each view rescaled by 1 / (its keep ratio)."""
        o = self.options
        if o.masking == "none":
            return x_t, x_r, x_t, x_r
        views = []
        for x, keep in ((x_t, o.alpha), (x_r, o.beta)):
            first = bernoulli_mask(x.shape, keep, rng).to(x.device)
            second = (
                ~first
                if o.masking == "complementary"
                else bernoulli_mask(x.shape, 1 - keep, rng).to(x.device)
            )
            views.append((masked(x, first, keep), masked(x, second, 1 - keep)))
        (t1, t2), (r1, r2) = views
        return t1, r1, t2, r2


def _share_rows(store, rows: np.ndarray, **tables: TableRows) -> None:
    """A node store's features as its row numbers (``bank_index``) into the shared table
    (``shared_<name>``: what to read of it), read by :class:`~napari_spahgc.train.batch.GraphBatch`."""
    store.num_nodes = len(rows)
    store.bank_index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    for name, table in tables.items():
        if name in store:
            del store[name]
        store[f"shared_{name}"] = table


def member_groups(graphs: dict[int, HeteroData], step_nodes: int) -> list[list[int]]:
    """The members of one step (``graphs``: member → its graph) in consecutive groups whose padded
    batch (members × (the group's most targets + most references)) holds at most ``step_nodes``
    nodes; a member whose graph alone is larger forms its own group."""
    groups: list[tuple[list[int], np.ndarray]] = []
    for member, graph in graphs.items():
        size = np.array([graph["target"].num_nodes, graph["reference"].num_nodes])
        if groups and (len(groups[-1][0]) + 1) * np.maximum(groups[-1][1], size).sum() <= step_nodes:
            groups[-1] = (groups[-1][0] + [member], np.maximum(groups[-1][1], size))
        else:
            groups.append(([member], size))
    return [members for members, _ in groups]


def _epoch_text(epoch: int, epochs: int, values: dict) -> str:
    """ "epoch 3/200: loss 1.234, validation PCC 0.210" (the PCC averages the members still training)."""
    score = values["validation_pcc"]
    return f"epoch {epoch}/{epochs}: loss {values['loss']:.3f}" + (
        "" if score is None else f", validation PCC {score:.3f}"
    )


def _order(n_graphs: int, n_steps: int, generator: torch.Generator) -> list[int]:
    """A seeded random order of a member's graphs for one epoch, extended by random draws when the
    member has fewer graphs than the epoch has steps."""
    order = torch.randperm(n_graphs, generator=generator).tolist()
    extra = torch.randint(n_graphs, (n_steps - n_graphs,), generator=generator).tolist()
    return order + extra
