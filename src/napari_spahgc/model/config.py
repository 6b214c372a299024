"""SpaHGC's settings in one place: how graphs are built, the architecture, training — and
:class:`SpaHGCConfig`, the one object that holds them, which the CLI (``--set NAME=VALUE``), the
widgets, the benchmark and saved models use."""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from napari_spahgc.base.errors import InputError
from napari_spahgc.model.neighbours import SearchOptions

MASKINGS = ("complementary", "random", "none")
TRAINING_BANKS = ("member", "all")
REFERENCE_NODES = ("retrieved", "bank")


@dataclass(frozen=True)
class GraphOptions:
    """How a graph is built. ``reference_nodes``: ``"retrieved"`` keeps only the union of the
    references retrieved for the slide's spots (as the authors' code does; small, fast), ``"bank"``
    keeps every reference spot. ``standardize_embeddings``: the trainer standardises every embedding
    feature on the training slides before graphs are built (retrieval and node features).
    ``smoothing``: predictions are mixed with the mean of each spot's Q nearest spots,
    (1 − smoothing) · own + smoothing · neighbours (0: none); training chooses it (``tune_smoothing``).
    ``prior_k``: each target spot also gets a retrieval prior, the mean standardised expression of its
    ``prior_k`` cosine-nearest reference spots, and the network predicts the residual over it (0: none).
    ``ann_*``: the CS search runs over distinct keys (RS over every reference node's joint features),
    exactly below ``ann_min_keys`` keys and approximately above (:class:`~napari_spahgc.model.neighbours.SearchOptions`, whose
    fields these are)."""

    q: int = 5
    k: int = 7
    k_rs: int = 7
    reference_nodes: str = "retrieved"
    standardize_embeddings: bool = True
    smoothing: float = 0.0
    prior_k: int = 0
    ann_min_keys: int = SearchOptions.min_keys
    ann_m: int = SearchOptions.m
    ann_ef_construction: int = SearchOptions.ef_construction
    ann_ef_search: int = SearchOptions.ef_search
    ann_candidates: int = SearchOptions.candidates

    def __post_init__(self) -> None:
        _one_of("reference_nodes", self.reference_nodes, REFERENCE_NODES)

    def search(self) -> SearchOptions:
        """The options of the CS and RS searches."""
        return SearchOptions(
            min_keys=self.ann_min_keys,
            m=self.ann_m,
            ef_construction=self.ann_ef_construction,
            ef_search=self.ann_ef_search,
            candidates=self.ann_candidates,
        )


@dataclass(frozen=True)
class ModelOptions:
    """Architecture; ``members`` independent networks form the ensemble; ``use_*`` switches exist for
    ablations (``use_cs=False`` drops every CS edge, so neither CNDA nor CNAP runs and the references
    are not used)."""

    hidden: int = 192
    layers: int = 4
    heads: int = 4
    cnap_heads: int = 4
    dropout: float = 0.1
    members: int = 4
    use_ts: bool = True
    use_rs: bool = True
    use_cs: bool = True
    use_cnda: bool = True
    use_cnap: bool = True


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation, masking and loss weights.

    Masking: for every step a mask M is drawn per feature entry; the supervised view keeps an entry
    with probability ``alpha`` (targets) or ``beta`` (references), the other view keeps exactly the
    complement 1 − M; each view is rescaled by 1 / (its keep ratio). ``masking="random"`` draws the
    second view's mask independently (ablation), ``"none"`` disables masking and the contrastive terms.

    Mini-batches: a training slide with more than ``batch_spots`` spots is split into spatially
    compact blocks (:func:`~napari_spahgc.model.neighbours.spatial_blocks`), each its own graph against the
    member's bank and its own gradient step; TS edges stay inside a block. Memory is bounded by the
    block, whatever the slide size. A step runs the members in groups whose padded graphs hold at most
    ``step_nodes`` nodes together (at least one member a group) and sums their gradients before the
    optimiser steps: the same step as all members at once, with one group's working set.

    Early stopping, member by member: every ``eval_every`` epochs each member still training predicts
    its held-out slides; a member stops once ``patience`` epochs pass without a better validation PCC
    (``None``: never) and keeps its best epoch's weights. Training ends when every member has stopped.
    ``hold_out=False``: no member holds a slide out; each trains on every training slide for all the
    epochs and keeps its final epoch (the paper's protocol). ``tune_smoothing``: after training, the
    members' held-out slides choose the prediction smoothing (``GraphOptions.smoothing``) among
    ``base.spatial.SELF_WEIGHTS``; without held-out slides it stays as given.

    ``training_bank``: the references of a member's training graphs. ``"member"``: the member's other
    training slides; ``"all"``: every other training slide, the member's held-out slides included (their
    expression as references only, never as targets), so members train against the bank they predict
    with. Validation graphs always use the member's training slides alone.
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
    batch_spots: int = 4096
    step_nodes: int = 8192
    eval_every: int = 5
    patience: int | None = 15
    hold_out: bool = True
    tune_smoothing: bool = True
    training_bank: str = "member"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        _one_of("masking", self.masking, MASKINGS)
        _one_of("training_bank", self.training_bank, TRAINING_BANKS)
        if not (0 < self.alpha < 1 and 0 < self.beta < 1):
            raise InputError("alpha and beta must lie strictly between 0 and 1")


@dataclass(frozen=True)
class SpaHGCConfig:
    """Every SpaHGC setting: graph, model and training options."""

    graph: GraphOptions = field(default_factory=GraphOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainOptions = field(default_factory=TrainOptions)

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any] | None = None, preset: str = "default", **overrides: Any
    ) -> SpaHGCConfig:
        """A config from a :data:`PRESETS` entry, then flat ``{name: value}`` options (fields of any of
        the three option classes) on top; an unknown name or preset is an error."""
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        options = {**PRESETS[preset], **(options or {}), **overrides}
        unknown = sorted(set(options) - set(option_types()))
        if unknown:
            raise InputError(
                f"unknown SpaHGC option(s): {', '.join(unknown)}; known: {', '.join(sorted(option_types()))}"
            )
        parts = {
            name: kind(**{k: v for k, v in options.items() if k in _field_names(kind)})
            for name, kind in _PARTS.items()
        }
        return cls(**parts)

    def to_dict(self) -> dict[str, dict]:
        return {name: asdict(getattr(self, name)) for name in _PARTS}

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name (the names ``--set`` takes)."""
        return {k: v for part in self.to_dict().values() for k, v in part.items()}

    def changes(self, base: SpaHGCConfig) -> dict[str, Any]:
        """The flat options whose values differ from ``base``'s."""
        theirs = base.flat()
        return {k: v for k, v in self.flat().items() if theirs[k] != v}

    def with_preset(self, preset: str) -> SpaHGCConfig:
        """The ``preset``'s config with this one's seed and device."""
        return SpaHGCConfig.from_options(preset=preset, seed=self.train.seed, device=self.train.device)


_PARTS = {"graph": GraphOptions, "model": ModelOptions, "train": TrainOptions}

#: Named starting points of a config (``--preset``); options given with it apply on top. ``paper``:
#: the published configuration — one model trained on every training slide for 200 epochs, final
#: epoch, AdamW lr 1e-4 and weight decay 1e-4, loss weights 1/1/1/1, Q = 5, K = 7, α = 0.8, β = 0.9;
#: no prediction smoothing; what the paper does not fix (widths, dropout, embedding standardisation)
#: stays at our defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {
        "members": 1,
        "hold_out": False,
        "tune_smoothing": False,
        "patience": None,
        "epochs": 200,
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "mse_weight": 1.0,
        "pcc_weight": 1.0,
        "con_target_weight": 1.0,
        "con_reference_weight": 1.0,
        "q": 5,
        "k": 7,
        "alpha": 0.8,
        "beta": 0.9,
    },
}


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {choices}")


def _field_names(kind: type) -> set[str]:
    return {f.name for f in fields(kind)}


def option_types() -> dict[str, Any]:
    """Every flat option name with its declared type."""
    return {name: hint for kind in _PARTS.values() for name, hint in typing.get_type_hints(kind).items()}


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` strings as typed options, each value read as its field's declared type
    (``true``/``false`` for booleans, ``none`` where a field may be None)."""
    types, settings = option_types(), {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        name, text = name.strip(), text.strip()
        if not text:
            raise InputError(f"expected NAME=VALUE, got {pair!r}")
        if name not in types:
            raise InputError(f"unknown SpaHGC option {name!r}; known: {', '.join(sorted(types))}")
        settings[name] = _parse(name, text, types[name])
    return settings


def _parse(name: str, text: str, hint: Any) -> Any:
    kinds = typing.get_args(hint) or (hint,)
    lowered = text.lower()
    if type(None) in kinds and lowered in ("none", "null"):
        return None
    for kind in kinds:
        if kind is bool and lowered in ("true", "false"):
            return lowered == "true"
        if kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
        if kind is str:
            return text
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
    raise InputError(f"option {name}={text!r}: expected {expected}")
