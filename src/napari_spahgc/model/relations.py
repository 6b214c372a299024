"""The graph's relations, in one table: each edge type's name, source and destination node types,
how its edges are found, and the operator that passes its messages. ``graph.build_graph`` builds
every relation's edges from the table, ``batch.GraphBatch`` offsets them by their node types and
``model.HeteroLayer`` runs each one's operator; adding an edge type is one entry here.

Node types: ``target`` (the slide's spots; features = patch embeddings) and ``reference`` (spots of
*other* slides; features = [embedding ‖ expression]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_spahgc.base.spatial import spatial_neighbours
from napari_spahgc.model.config import GraphOptions, ModelOptions
from napari_spahgc.model.neighbours import CosineIndex, DistinctRows, unit_rows


@dataclass(frozen=True)
class GraphInputs:
    """What the relations' edges are found from: the target slide's spot coordinates, the
    reference nodes' embeddings and (standardised) expression, and each target's retrieved
    references as reference-node indices ``(n_target, k)``, most similar first."""

    target_coords: np.ndarray
    reference_embeddings: np.ndarray | DistinctRows
    reference_expression: np.ndarray
    retrieved: np.ndarray
    options: GraphOptions


@dataclass(frozen=True)
class Relation:
    """Edges ``source → destination`` named ``name``. ``neighbours`` gives, per destination node, the
    source nodes it receives from as an ``(n_destination, m)`` table; ``operator`` names the message
    passing (``model.OPERATORS``); ``both_ways`` runs a second operator of the same kind on the reversed
    edges; ``switches`` are the ``ModelOptions`` flags that must all be on for the encoder to use it."""

    name: str
    source: str
    destination: str
    neighbours: Callable[[GraphInputs], np.ndarray]
    operator: str
    both_ways: bool = False
    switches: tuple[str, ...] = ()

    @property
    def edge_type(self) -> tuple[str, str, str]:
        return (self.source, self.name, self.destination)

    def used_by(self, options: ModelOptions) -> bool:
        return all(getattr(options, switch) for switch in self.switches)


def joint_features(embeddings: np.ndarray | DistinctRows, expression: np.ndarray) -> np.ndarray:
    """[embedding ‖ expression] with each block L2-normalised, so both weigh equally in a cosine;
    float32, filled ``_JOINT_ROWS`` rows at a time (no float32 copy of either block)."""
    width = embeddings.shape[1]
    joint = np.empty((len(expression), width + expression.shape[1]), np.float32)
    for start in range(0, len(joint), _JOINT_ROWS):
        rows = slice(start, start + _JOINT_ROWS)
        joint[rows, :width] = unit_rows(embeddings[rows])
        joint[rows, width:] = unit_rows(expression[rows])
    return joint


_JOINT_ROWS = 1 << 14


def _nearest_spots(inputs: GraphInputs) -> np.ndarray:
    return spatial_neighbours(inputs.target_coords, inputs.options.q)


def _similar_peers(inputs: GraphInputs) -> np.ndarray:
    features = joint_features(inputs.reference_embeddings, inputs.reference_expression)
    # every row its own key: a joint row repeats only where a spot's embedding and expression both do
    index = CosineIndex(DistinctRows(features, np.arange(len(features))), inputs.options.search())
    return index.search(features, inputs.options.k_rs, exclude_self=True)[0]


def _retrieved(inputs: GraphInputs) -> np.ndarray:
    return inputs.retrieved


RELATIONS: tuple[Relation, ...] = (
    # TS: each spot receives from its Q nearest spots in the same slide (GraphSAGE)
    Relation("ts", "target", "target", _nearest_spots, "sage", switches=("use_ts",)),
    # RS: each reference receives from its top-K most similar peers on the joint features, no self loops
    Relation("rs", "reference", "reference", _similar_peers, "sage", switches=("use_rs",)),
    # CS: each target receives from its top-K cosine-similar references; CNDA attends both ways, and
    # CNAP pools over the same references
    Relation("cs", "reference", "target", _retrieved, "attention", True, ("use_cs", "use_cnda")),
)
BY_NAME = {relation.name: relation for relation in RELATIONS}
TS, RS, CS = (BY_NAME[name].edge_type for name in ("ts", "rs", "cs"))  # CS edges are CNAP's table too
