"""Tissue domains in the benchmark: how well each method's predictions of a held-out slide keep the
tissue's domains, as the adjusted Rand index (and NMI) of domains found in them
(:func:`~napari_spahgc.downstream.domains.find_domains`, KMeans) against the slide's labels.

Nested like everything else: the number of domains is the most common number of labels of the fold's
training slides, and the spatial weight is chosen per method and fold among
:data:`~napari_spahgc.downstream.domains.SPATIAL_WEIGHTS` by the mean ARI of domains found in the
method's own inner-validation predictions of its training slides (SpaHGC: its members' predictions of
their held-out slides; a baseline: its refits' predictions of the inner validation slides) against
those slides' labels. The held-out slide's labels are read only by the scorer. The same is done with
the held-out slide's measured expression (spatial weight chosen on the training slides' measured
values): what the labels allow at best with this domain method.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from napari_spahgc.downstream.domains import SPATIAL_WEIGHTS, DomainOptions, find_domains
from napari_spahgc.downstream.labels import agreement, labels_for, read_labels
from napari_spahgc.io.slide import Slide
from napari_spahgc.model.slide_data import SlideData

DOMAIN_METRICS = ("domain_ari", "domain_nmi")
PROTOCOL = (
    "KMeans on the first 20 principal components of the z-scored genes, each spot's mixed with its 6 "
    "nearest spots' by a spatial weight; the number of domains: the most common number of labels of the "
    "training slides; the spatial weight (0, 0.25, 0.5, 0.75, 1) chosen per method and fold by the mean "
    "ARI of the method's inner-validation predictions of its training slides against their labels"
)


def slide_labels(slides: Sequence[Slide]) -> dict[str, pd.Series]:
    """Each slide's labels (by spot id) where it names a labels file; read now, so a bad file stops
    the benchmark before any training."""
    return {s.slide_id: labels_for(s.spot_ids, read_labels(s.labels), s.labels) for s in slides if s.labels}


def domain_scores(
    prediction: np.ndarray,
    inner: Mapping[str, np.ndarray],
    train: Sequence[SlideData],
    test: SlideData,
    labels: Mapping[str, pd.Series],
) -> dict:
    """The fold record's domain entries for one method's prediction of ``test``: ``domain_ari``,
    ``domain_nmi``, ``domain_spatial_weight``, the inner ARI it was chosen by and ``domain_count``
    (empty without labels for the test slide or for a training slide the method predicted in inner
    validation)."""
    inner_slides = [(s, inner[s.slide_id]) for s in train if s.slide_id in inner]
    return {f"domain_{k}": v for k, v in _nested(prediction, inner_slides, train, test, labels).items()}


def measured_scores(train: Sequence[SlideData], test: SlideData, labels: Mapping[str, pd.Series]) -> dict:
    """The same domain method on the held-out slide's measured values, its weight chosen on the
    training slides' measured values."""
    return _nested(test.expression, [(s, s.expression) for s in train], train, test, labels)


def _nested(
    values: np.ndarray,
    inner: Sequence[tuple[SlideData, np.ndarray]],
    train: Sequence[SlideData],
    test: SlideData,
    labels: Mapping[str, pd.Series],
) -> dict:
    """ARI and NMI of ``test``'s domains found in ``values``, the spatial weight chosen on the ``inner``
    (training slide, its values) pairs that have labels: ``ari``, ``nmi``, ``spatial_weight``,
    ``inner_ari``, ``count`` (empty when there is nothing to choose on or to score)."""
    inner = [(s, v) for s, v in inner if s.slide_id in labels]
    if test.slide_id not in labels or not inner:
        return {}
    n_domains = domain_count(train, labels)
    weight, inner_ari = choose_weight(inner, labels, n_domains)
    score = _score(values, test, labels, DomainOptions(n_domains=n_domains, spatial_weight=weight))
    return {
        "ari": score["ari"],
        "nmi": score["nmi"],
        "spatial_weight": weight,
        "inner_ari": inner_ari,
        "count": n_domains,
    }


def domain_count(train: Sequence[SlideData], labels: Mapping[str, pd.Series]) -> int:
    """The most common number of distinct labels of the training slides (ties: the larger)."""
    counts = Counter(int(labels[s.slide_id].nunique()) for s in train if s.slide_id in labels)
    return max(counts, key=lambda n: (counts[n], n))


def choose_weight(
    slides: Sequence[tuple[SlideData, np.ndarray]], labels: Mapping[str, pd.Series], n_domains: int
) -> tuple[float, dict[str, float]]:
    """The spatial weight with the best mean ARI over ``slides`` (slide, values) against their labels
    (ties: the smaller weight), and every weight's mean."""
    means = {}
    for weight in SPATIAL_WEIGHTS:
        options = DomainOptions(n_domains=n_domains, spatial_weight=weight)
        means[weight] = float(np.mean([_score(values, s, labels, options)["ari"] for s, values in slides]))
    best = max(means, key=lambda w: (means[w], -w))
    return best, {f"{w:g}": round(v, 4) for w, v in means.items()}


def _score(
    values: np.ndarray, slide: SlideData, labels: Mapping[str, pd.Series], options: DomainOptions
) -> dict:
    if len(values) != slide.n_spots:
        raise ValueError(f"{slide.slide_id}: {len(values)} predicted rows for {slide.n_spots} spots")
    found = find_domains(values, slide.coords, options)
    return agreement(found, labels[slide.slide_id].reindex(pd.Index(slide.spot_ids.astype(str))))
