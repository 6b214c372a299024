"""A trained SpaHGC and its folder: ``model.safetensors`` (weights, reference bank, scales) and
``config.json`` (genes, options, provenance); the folder is signed on save and verified as a whole on
load (:mod:`napari_spahgc.model.folder`); no pickle anywhere."""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from safetensors.torch import save_file

from napari_spahgc.base.conformal import DEFAULT_LEVEL, LEVELS, Calibration, spot_uncertainty
from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import atomic_path
from napari_spahgc.base.progress import Progress, run_to_end
from napari_spahgc.base.spatial import spatial_neighbours
from napari_spahgc.embed.device import resolve_device
from napari_spahgc.embed.weights import sha256
from napari_spahgc.io.intervals import store_intervals, store_references, summarise_intervals
from napari_spahgc.model.blocks import predict_blocks
from napari_spahgc.model.config import GraphOptions, ModelOptions, SpaHGCConfig, TrainOptions
from napari_spahgc.model.folder import (
    CONFIG_DIGEST_KEY,
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    config_digest,
    config_path,
    field_names,
    matches,
    read_config,
    typed,
    verified_tensors,
)
from napari_spahgc.model.graph import ReferenceBank, graph_parts, reference_features
from napari_spahgc.model.neighbours import DistinctRows
from napari_spahgc.model.network import SpaHGC
from napari_spahgc.model.slide_data import FeatureScale, SlideData
from napari_spahgc.view.explain import check_gene, reference_table, spot_row

_OUTPUT_WEIGHT = "network.head.3.weight"  # SpaHGC's last layer: (members, hidden, genes)
BLOCK_SPOTS = 8192  # target spots per block of prediction
_OPTION_PARTS = {"graph": GraphOptions, "model": ModelOptions, "train": TrainOptions}


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
    #: the prediction intervals' calibration (``Calibration.record``); empty: none (an earlier model,
    #: or one trained without held-out slides)
    calibration: dict = field(default_factory=dict)
    #: per training slide, where its image was and its pixel size (``{"image": path, "pixel_size_um":
    #: µm}``): the reference patches a prediction drew on are read from there
    reference_images: dict = field(default_factory=dict)

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


@dataclass
class SlideReferences:
    """Each spot's K retrieved reference spots, most similar first: ``rows`` (n, K) index the
    references used, with the spot's cosine ``similarity`` to each and CNAP's ``attention`` over them
    (the members' mean over heads; None without CNAP). The references are rows ``bank_rows`` of the
    model's bank: ``slide_ids``, ``spot_ids`` and full-resolution ``centers_px`` (None in models saved
    before they were recorded), measured ``expression`` (log1p CPM, references × genes)."""

    rows: np.ndarray
    similarity: np.ndarray
    attention: np.ndarray | None
    bank_rows: np.ndarray
    slide_ids: np.ndarray
    spot_ids: np.ndarray | None
    centers_px: np.ndarray | None
    expression: np.ndarray


@dataclass
class Predicted:
    """A slide's prediction (``values``: an array, or the ``out`` it was written to) and the references
    it drew on."""

    values: np.ndarray
    references: SlideReferences


class SpaHGCPredictor:
    """A trained SpaHGC: the ensemble network, its reference bank (standardised embeddings and
    expression), the expression and embedding scales, its metadata and, when its training had held-out
    slides, the calibration of its prediction intervals."""

    def __init__(
        self,
        network: SpaHGC,
        bank: ReferenceBank,
        scale: FeatureScale,
        embedding_scale: FeatureScale,
        config: SpaHGCConfig,
        metadata: ModelMetadata,
        folder: Path | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.network = network.eval()
        self.bank, self.scale, self.embedding_scale = bank, scale, embedding_scale
        self.config, self.metadata = config, metadata
        self.folder = folder  # the model folder it was loaded from; None when built in memory
        self.calibration = calibration

    @property
    def genes(self) -> list[str]:
        return self.metadata.genes

    def predict(self, slide: SlideData, device: str = "cpu", block_spots: int = BLOCK_SPOTS) -> np.ndarray:
        """Predicted log1p-CPM (n_spots, n_genes): the mean of the ensemble members, mixed with the
        spots' Q nearest neighbours by the chosen smoothing; deterministic: no masking, no dropout.
        Computed in blocks of ``block_spots`` rows (:mod:`~napari_spahgc.model.blocks`)."""
        return run_to_end(self.predict_steps(slide, device, block_spots)).values

    def predict_steps(
        self, slide: SlideData, device: str = "cpu", block_spots: int = BLOCK_SPOTS, out=None
    ) -> Generator[Progress, None, Predicted]:
        """:meth:`predict` as a generator: yields after every block (stop iterating to cancel),
        returns the prediction and the references it drew on. ``out``: where the blocks go, anything
        that takes row-range assignment (an array, or an h5py dataset to stream a large slide to
        disk); a new array if None."""
        if slide.embeddings.shape[1] != self.metadata.embedding_dim:
            raise InputError(
                f"slide {slide.slide_id!r} has {slide.embeddings.shape[1]}-d embeddings but the model was "
                f"trained on {self.metadata.embedding_dim}-d ({self.metadata.encoder.get('name', '?')})"
            )
        kept = self._bank_rows_without(slide.slide_id)
        bank = self._bank_without(slide.slide_id)
        yield Progress(0, 1, f"{slide.slide_id}: retrieving references", "predict")
        parts = graph_parts(slide, bank, self.config.graph, self.embedding_scale)
        target = resolve_device(device)
        network = self.network.to(target).eval()
        parts.edges = {edge_type: e.to(target) for edge_type, e in parts.edges.items()}

        def embeddings(start: int, stop: int) -> torch.Tensor:
            return torch.from_numpy(self.embedding_scale.transform(slide.embeddings[start:stop])).to(target)

        def references(start: int, stop: int) -> torch.Tensor:
            return reference_features(bank, parts.nodes[start:stop]).to(target)

        def prior(rows: np.ndarray) -> torch.Tensor | None:
            values = parts.prior(bank, rows)
            return None if values is None else values.to(target)

        q, smoothing = self.config.graph.q, self.config.graph.smoothing
        neighbours = spatial_neighbours(slide.coords, q) if smoothing else np.empty((slide.n_spots, 0))
        mix = (neighbours, smoothing) if neighbours.shape[1] else None

        shape = (slide.n_spots, len(self.genes))
        prediction = np.empty(shape, dtype=np.float32) if out is None else out
        if tuple(prediction.shape) != shape:
            raise ValueError(f"out has shape {tuple(prediction.shape)}, expected {shape}")
        blocks = predict_blocks(
            network,
            parts,
            embeddings,
            references,
            prior,
            block_spots,
            mix,
        )
        attention = np.zeros(parts.retrieved.shape, np.float32) if network.pooling is not None else None
        for done, total, result in blocks:
            if result is not None:  # the members' mean, a group's share at a time (affine scale)
                start, stop, share, attention_share, first = result
                share = share.float().cpu().numpy()
                if first:
                    prediction[start:stop] = self.scale.inverse(share)
                else:
                    prediction[start:stop] = prediction[start:stop] + share * self.scale.sd
                if attention is not None:
                    attention[start:stop] += attention_share.float().cpu().numpy()
            yield Progress(done, total, f"{slide.slide_id}: block {done}/{total}", "predict")
        nodes = parts.nodes
        references = SlideReferences(
            rows=parts.retrieved.astype(np.int32),
            similarity=parts.similarity,
            attention=attention,
            bank_rows=kept[nodes],
            slide_ids=bank.slide_ids[nodes],
            spot_ids=None if bank.spot_ids is None else bank.spot_ids[nodes],
            centers_px=None if bank.centers_px is None else bank.centers_px[nodes],
            expression=self.scale.inverse(bank.expression[nodes]).astype(np.float32),
        )
        return Predicted(prediction, references)

    def annotate(self, adata: AnnData, predicted: Predicted, level: float = DEFAULT_LEVEL) -> None:
        """Add a slide's references and uncertainty to its predictions ``adata`` and, when the model is
        calibrated, the quantiles of its intervals at every stored level and ``level`` with each gene's
        mean width and coverage there (:mod:`napari_spahgc.io.intervals`)."""
        references = predicted.references
        uncertainty = spot_uncertainty(predicted.values, references.rows, references.expression)
        store_references(adata, references, uncertainty, self.metadata.reference_images)
        if self.calibration is not None:
            levels = sorted({*LEVELS, round(level, 6)})
            quantiles = self.calibration.quantiles(levels)
            store_intervals(adata, quantiles, levels, level, self.calibration.mix, self.calibration.record())
            summarise_intervals(adata, predicted.values)

    def explain(
        self, slide: SlideData, spot: str, gene: str | None = None, device: str = "cpu"
    ) -> pd.DataFrame:
        """The reference spots the prediction of ``spot`` (and ``gene``; None: the first) drew on, one
        row each (:func:`napari_spahgc.view.explain.reference_table`); predicts the slide to know them."""
        adata = AnnData(
            obs=pd.DataFrame(index=pd.Index(np.asarray(slide.spot_ids).astype(str))),
            var=pd.DataFrame(index=pd.Index(self.genes)),
        )
        spot_row(adata.obs_names, spot)  # before predicting: a typo fails at once
        check_gene(self.genes, gene)
        predicted = run_to_end(self.predict_steps(slide, device))
        adata.X = predicted.values
        self.annotate(adata, predicted)
        return reference_table(adata, spot, gene)

    def _bank_rows_without(self, slide_id: str) -> np.ndarray:
        """The rows of the bank that are not ``slide_id``'s spots."""
        return np.flatnonzero(self.bank.slide_ids != slide_id)

    def _bank_without(self, slide_id: str) -> ReferenceBank:
        """The reference bank without ``slide_id``'s spots: a slide never retrieves its own spots."""
        bank = self.bank
        if not np.any(bank.slide_ids == slide_id):
            return bank
        return bank.rows(bank.slide_ids != slide_id)

    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` (weights, bank, scales; the header records config.json's digest),
        then ``config.json`` (with the weights' SHA-256 as its manifest), each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = json.loads(json.dumps(self._config()))  # exactly what a reader parses back
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(
                self._tensors(), str(tmp), metadata={"format": "pt", CONFIG_DIGEST_KEY: config_digest(config)}
            )
            config["manifest"] = {WEIGHTS_FILE: {"sha256": sha256(tmp)}}
        with atomic_path(folder / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(config, indent=2))
        return folder

    def _tensors(self) -> dict[str, torch.Tensor]:
        """Everything model.safetensors holds: the network's weights, the bank and both scales."""
        tensors = {
            f"network.{k}": v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()
        }
        arrays = {
            "bank.embeddings": self.bank.embeddings.distinct,
            "bank.embedding_rows": self.bank.embeddings.row_of,
            "bank.expression": self.bank.expression,
            "scale.mean": self.scale.mean,
            "scale.sd": self.scale.sd,
            "embedding_scale.mean": self.embedding_scale.mean,
            "embedding_scale.sd": self.embedding_scale.sd,
        }
        if self.calibration is not None:
            arrays["calibration.scores"] = self.calibration.scores
        if self.bank.centers_px is not None:
            arrays["bank.centers_px"] = self.bank.centers_px.astype(np.float32)
        graph = self.bank.search_index(self.config.graph.search()).graph()  # built here if never searched
        if graph is not None:  # an approximate search index: saved, not rebuilt for every prediction
            arrays |= {f"bank.search_graph.{name}": values for name, values in graph.items()}
        return tensors | {  # a loaded bank's memory-mapped (read-only) expression is read here
            name: torch.from_numpy(np.require(array, requirements=("C", "W")))
            for name, array in arrays.items()
        }

    def _config(self) -> dict:
        """config.json's content without its manifest."""
        from napari_spahgc import __version__

        return {
            "format": FORMAT,
            "package_version": __version__,
            **asdict(self.metadata),
            "bank_slide_ids": self.bank.slide_ids.tolist(),
            **({} if self.bank.spot_ids is None else {"bank_spot_ids": [str(i) for i in self.bank.spot_ids]}),
            **{f"{part}_options": options for part, options in self.config.to_dict().items()},
        }

    @classmethod
    def load(cls, folder: str | Path) -> SpaHGCPredictor:
        """A model folder, verified as a whole first: manifest, config digest, options, shapes."""
        folder = Path(folder)
        config = read_config(config_path(folder))
        tensors = verified_tensors(folder, config, mapped=("bank.expression",))
        _refuse_earlier_format(config, tensors, folder)
        metadata, options, slide_ids = _settings(config, folder)
        _check_shapes(metadata, options.model, len(slide_ids), tensors, folder)
        network = _network(metadata, options.model, tensors, folder / WEIGHTS_FILE)
        spot_ids = config.get("bank_spot_ids")
        if spot_ids is not None and not (matches(spot_ids, list[str]) and len(spot_ids) == len(slide_ids)):
            raise InputError("config.json: bank_spot_ids is not one spot name per reference spot", folder)
        embeddings = tensors["bank.embeddings"].numpy()
        if "bank.embedding_rows" in tensors:  # the distinct rows, and which one each spot is
            embeddings = DistinctRows(embeddings, tensors["bank.embedding_rows"].numpy())
        bank = ReferenceBank(
            embeddings,
            tensors["bank.expression"],
            np.asarray(slide_ids, dtype=object),
            None if spot_ids is None else np.asarray(spot_ids, dtype=object),
            tensors["bank.centers_px"].numpy() if "bank.centers_px" in tensors else None,
        )
        _restore_search_index(bank, options.graph, tensors, folder)
        scale = FeatureScale(tensors["scale.mean"].numpy(), tensors["scale.sd"].numpy())
        embedding_scale = FeatureScale(
            tensors["embedding_scale.mean"].numpy(), tensors["embedding_scale.sd"].numpy()
        )
        return cls(
            network, bank, scale, embedding_scale, options, metadata, folder, _calibration(metadata, tensors)
        )

    def check_embeddings(self, encoder_info: dict) -> None:
        """:meth:`check_compatible` with an encoder's info (``name``, ``weights_checksum``,
        ``embedding_mode``) as embedding returns it."""
        self.check_compatible(
            encoder_info.get("name", ""),
            encoder_info.get("weights_checksum"),
            encoder_info.get("embedding_mode"),
        )

    def check_compatible(
        self, encoder_name: str, weights_checksum: str | None = None, mode: str | dict | None = None
    ) -> None:
        """Refuse embeddings from another encoder (or other weights, or the other embedding mode:
        dense and per-spot embeddings are different feature spaces) than the model was trained on."""
        trained = self.metadata.encoder
        if (
            isinstance(mode, str)
            and isinstance(trained.get("embedding_mode"), str)
            and mode != trained["embedding_mode"]
        ):
            raise InputError(
                f"the model was trained on {trained['embedding_mode']} embeddings, not {mode} ones "
                f"(embed with --mode {trained['embedding_mode']}, or that Mode in the Embed widget)",
                self.folder,
            )
        if trained.get("name") and trained["name"] != encoder_name:
            raise InputError(
                f"the model was trained on {trained['name']!r} embeddings, not {encoder_name!r}", self.folder
            )
        if weights_checksum and trained.get("weights_checksum") not in (None, weights_checksum):
            raise InputError(
                f"the model was trained with other {encoder_name!r} weights "
                f"(checksum {trained['weights_checksum'][:12]}…, given {weights_checksum[:12]}…)",
                self.folder,
            )


def _network(metadata: ModelMetadata, options: ModelOptions, tensors: dict, weights_path: Path) -> SpaHGC:
    """The network the config describes, with the folder's weights (an error if they do not fit)."""
    try:
        network = SpaHGC(metadata.embedding_dim, len(metadata.genes), options)
    except (ValueError, RuntimeError) as error:  # e.g. hidden not divisible by heads
        raise InputError(
            f"config.json: model_options describe no network ({error})", weights_path.parent
        ) from None
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


def _calibration(metadata: ModelMetadata, tensors: dict) -> Calibration | None:
    """The folder's calibration (None for a model without one)."""
    record = metadata.calibration
    if not record or "calibration.scores" not in tensors:
        return None
    return Calibration(tensors["calibration.scores"].numpy(), record["mix"], record["spots"], record["inner"])


def _restore_search_index(bank: ReferenceBank, options: GraphOptions, tensors: dict, folder: Path) -> None:
    """The bank's approximate search index from the folder's saved graph (``bank.search_graph.*``),
    checked against the bank's embeddings; a folder without one builds it at the first search."""
    prefix = "bank.search_graph."
    graph = {k[len(prefix) :]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
    if not graph:
        return
    try:
        index = bank.search_index(options.search(), graph)
    except (KeyError, ValueError) as error:
        raise InputError(f"{WEIGHTS_FILE}: {error}", folder) from None
    if not index.approximate:
        raise InputError(f"{WEIGHTS_FILE}: a search graph for a bank its options search exactly", folder)


def _refuse_earlier_format(config: dict, tensors: dict, folder: Path) -> None:
    """Refuse a folder of the format before ensembles and standardised embeddings."""
    model_options = config.get("model_options")
    if isinstance(model_options, dict) and "members" in model_options and "embedding_scale.mean" in tensors:
        return
    raise InputError(
        f"this model folder was written by napari-spahgc {config.get('package_version', '?')}, "
        "in an earlier model format (before ensembles and standardised embeddings); train it "
        "again with this version",
        folder,
    )


def _settings(config: dict, folder: Path) -> tuple[ModelMetadata, SpaHGCConfig, list[str]]:
    """The metadata, options and bank slide ids config.json records, each checked for its type."""
    metadata_fields = {k: v for k, v in config.items() if k in field_names(ModelMetadata)}
    metadata = typed(ModelMetadata, metadata_fields, "config.json", folder)
    options = {
        part: typed(kind, config.get(f"{part}_options"), f"config.json {part}_options", folder)
        for part, kind in _OPTION_PARTS.items()
    }
    slide_ids = config.get("bank_slide_ids")
    if not matches(slide_ids, list[str]):
        raise InputError("config.json: bank_slide_ids is not a list of slide names", folder)
    return metadata, SpaHGCConfig(**options), slide_ids


def _check_shapes(
    metadata: ModelMetadata, options: ModelOptions, bank_rows: int, tensors: dict, folder: Path
) -> None:
    """Refuse tensors whose shapes disagree with config.json's genes, embedding size and bank slides."""
    genes, dim = len(metadata.genes), metadata.embedding_dim
    expected = {
        _OUTPUT_WEIGHT: (options.members, options.hidden, genes),
        "bank.embeddings": (bank_rows, dim),
        "bank.expression": (bank_rows, genes),
        "scale.mean": (genes,),
        "scale.sd": (genes,),
        "embedding_scale.mean": (dim,),
        "embedding_scale.sd": (dim,),
    }
    if metadata.calibration:
        expected["calibration.scores"] = (metadata.calibration.get("kept_spots"), genes)
    if "bank.centers_px" in tensors:
        expected["bank.centers_px"] = (bank_rows, 2)
    rows = tensors.get("bank.embedding_rows")
    if rows is not None:  # the bank's distinct embeddings, and which one each reference spot has
        expected["bank.embedding_rows"] = (bank_rows,)
        expected["bank.embeddings"] = (len(tensors["bank.embeddings"]), dim)
    wrong = [
        f"{name} is {tuple(tensors[name].shape) if name in tensors else 'missing'}, not {shape}"
        for name, shape in expected.items()
        if name not in tensors or tuple(tensors[name].shape) != shape
    ]
    if (
        rows is not None
        and len(rows)
        and not 0 <= int(rows.min()) <= int(rows.max()) < len(tensors["bank.embeddings"])
    ):
        wrong.append("bank.embedding_rows names rows bank.embeddings does not have")
    if wrong:
        raise InputError(
            f"{WEIGHTS_FILE} does not fit config.json ({genes} genes, {dim}-d embeddings, {bank_rows} "
            f"reference spots): {'; '.join(wrong)}",
            folder,
        )
