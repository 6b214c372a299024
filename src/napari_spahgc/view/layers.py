"""Turn slides into napari layer data tuples (Qt-free: plain data, no napari import).

World coordinates are µm when the pixel size is known (layers carry ``scale`` = µm/px), so the
scale bar reads true; point and image data stay in full-resolution pixels.
"""

from __future__ import annotations

from enum import Enum
from functools import partial

import numpy as np
import pandas as pd
from scipy import sparse

from napari_spahgc.io.expression import log_cpm
from napari_spahgc.io.slide import Slide, spot_grid, spot_pitch

#: Gene columns put into a Points layer's ``features`` at most (napari copies features; 15k columns
#: take seconds to build). The most expressed genes — those with the best-measured maps — are kept;
#: the full counts stay with the slide.
MAX_FEATURE_GENES = 2000
#: From this many spots on a square grid, gene maps are raster images (Points redraw too slowly).
RASTER_MIN_SPOTS = 50_000
METADATA_KEY = "napari_spahgc"


class LayerKind(str, Enum):
    """What a layer shows, kept in ``metadata[METADATA_KEY]["kind"]`` (equal to its plain-string value).

    Not napari's layer type (``"image"``, ``"points"``): the third element of a layer data tuple.
    """

    IMAGE = "image"  #: a slide's H&E
    SPOTS = "spots"  #: a slide's spots, nothing measured
    MEASURED = "measured"  #: a slide's spots coloured by their measured counts
    PREDICTED = "predicted"  #: predicted spots of one gene over the H&E
    MEASURED_BESIDE_PREDICTION = "measured beside prediction"  #: measured spots of that gene, beside
    IMAGE_BESIDE_PREDICTION = "image beside prediction"  #: the H&E under them
    DOMAINS = "domains"  #: the slide's spots coloured by tissue domain

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


def slide_layers(slide: Slide, visible: bool = True) -> list[tuple]:
    """Layer data for one slide: its H&E as a (multiscale) Image layer and its spots as Points."""
    layers = []
    if slide.image is not None:
        layers.append(image_layer(slide, visible))
    layers.append(spots_layer(slide, visible))
    return layers


def image_layer(slide: Slide, visible: bool = True) -> tuple:
    image = slide.image
    assert image is not None
    pixel = slide.pixel_size_um or 1.0
    step = pixel * image.downsamples[0]
    data = image.levels if image.n_levels > 1 else image.levels[0]
    meta = {
        "name": f"{slide.slide_id} H&E",
        "rgb": True,
        "multiscale": image.n_levels > 1,
        "scale": (step, step),
        "units": _units(slide),
        "visible": visible,
        "metadata": {METADATA_KEY: _slide_metadata(slide, LayerKind.IMAGE)},
    }
    return data, meta, "image"


def spots_layer(slide: Slide, visible: bool = True) -> tuple:
    """Spots at the spot diameter; features hold ``spot_id`` (and measured log1p-CPM genes)."""
    features = pd.DataFrame({"spot_id": slide.spot_ids.to_numpy(dtype=object)})
    meta: dict = {
        "name": f"{slide.slide_id} spots" + (" (measured)" if slide.has_expression else ""),
        "scale": (slide.pixel_size_um or 1.0,) * 2,
        "units": _units(slide),
        "size": slide.spot_diameter_px or _default_spot_size(slide.centers_px),
        "border_width": 0.05,
        "border_color": "white",
        "face_color": "transparent",
        "opacity": 0.8,
        "visible": visible,
    }
    kind = LayerKind.MEASURED if slide.has_expression else LayerKind.SPOTS
    metadata = _slide_metadata(slide, kind)
    if slide.has_expression:
        genes = measured_features(slide)
        metadata["feature_genes"] = f"{genes.shape[1]} of {slide.n_genes} measured genes (log1p CPM)"
        features = pd.concat([features, genes.reset_index(drop=True)], axis=1)
        features["total_counts"] = np.asarray(slide.expression.X.sum(axis=1)).ravel()
        meta.update(face_color="total_counts", face_colormap="viridis", border_width=0)
    meta["features"] = features
    meta["metadata"] = {METADATA_KEY: metadata}
    return slide.centers_px[:, ::-1].copy(), meta, "points"


def measured_features(slide: Slide, max_genes: int = MAX_FEATURE_GENES) -> pd.DataFrame:
    """log1p-CPM of the measured genes as columns; the ``max_genes`` most expressed when there are more."""
    normalized = log_cpm(slide.expression)
    values = normalized.X
    names = normalized.var_names
    if values.shape[1] > max_genes:
        keep = np.sort(np.argsort(values.mean(axis=0))[::-1][:max_genes])
        values, names = values[:, keep], names[keep]
    return pd.DataFrame(values, columns=list(names))


def _slide_metadata(slide: Slide, kind: LayerKind) -> dict:
    """What a layer knows of its slide; ``slide`` lets the widgets adopt slides opened by the reader."""
    return {
        "slide": slide,
        "slide_id": slide.slide_id,
        "kind": kind,
        "pixel_size_um": slide.pixel_size_um,
        "pixel_size_source": slide.pixel_size_source,
        "spot_diameter_px": slide.spot_diameter_px,
        "sources": dict(slide.sources),
    }


def _units(slide: Slide) -> tuple[str, str]:
    return ("micrometer",) * 2 if slide.pixel_size_um else ("pixel",) * 2


def _default_spot_size(centers: np.ndarray) -> float:
    """Without a known diameter, draw spots at half the median nearest-neighbour distance."""
    if len(centers) < 2:
        return 10.0
    return spot_pitch(centers) / 2


# ------------------------------------------------------------------------------------- predictions
def prediction_layers(slide: Slide, prediction, gene: str, colormap: str = "viridis") -> list[tuple]:
    """Layers that show one gene: predicted spots over the H&E and, when the slide has counts, to its
    right (shifted by 1.05 image widths, cameras shared) the H&E again under the measured spots.

    ``prediction`` is the AnnData of :func:`napari_spahgc.predict.flow.predict`; both spot layers take
    the same contrast limits (:func:`shared_limits`).
    """
    has_measured = "measured" in prediction.layers
    limits = shared_limits(*gene_values(prediction, gene))
    grid = spot_grid(slide.centers_px) if slide.n_spots >= RASTER_MIN_SPOTS else None
    gene_layer = _gene_points if grid is None else partial(_gene_raster, grid=grid)
    layers = [gene_layer(slide, prediction.X, prediction, gene, LayerKind.PREDICTED, limits, colormap)]
    if has_measured:
        shift = (0.0, _side_by_side_offset(slide))
        if slide.image is not None:
            data, meta, layer_type = image_layer(slide)
            meta.update(name=f"{slide.slide_id} H&E (measured side)", translate=shift)
            meta["metadata"][METADATA_KEY]["kind"] = LayerKind.IMAGE_BESIDE_PREDICTION
            layers.append((data, meta, layer_type))
        measured = prediction.layers["measured"]
        data, meta, layer_type = gene_layer(
            slide, measured, prediction, gene, LayerKind.MEASURED_BESIDE_PREDICTION, limits, colormap
        )
        meta["translate"] = shift
        layers.append((data, meta, layer_type))
    return layers


def domain_layer(slide: Slide, domains: pd.Categorical, what: str = "predicted") -> tuple:
    """The slide's spots coloured by domain (the PNG's colours, :func:`~napari_spahgc.view.figures.domain_colours`):
    Points with a ``domain`` feature, or for binned slides a Labels raster (label = domain code + 1)."""
    from napari_spahgc.view.figures import domain_colours

    colours = domain_colours(len(domains.categories))
    name = f"{slide.slide_id} domains ({what})"
    metadata = _slide_metadata(slide, LayerKind.DOMAINS)
    metadata["domains"] = list(domains.categories)
    grid = spot_grid(slide.centers_px) if slide.n_spots >= RASTER_MIN_SPOTS else None
    if grid is not None:
        index, pitch, origin = grid
        labels = np.zeros(tuple(index.max(axis=0) + 1), dtype=np.int32)
        labels[index[:, 0], index[:, 1]] = domains.codes + 1
        metadata["grid_index"] = index
        meta = {
            "name": name,
            "colormap": {
                None: (0, 0, 0, 0),
                0: (0, 0, 0, 0),
                **{i + 1: tuple(c) for i, c in enumerate(colours)},
            },
            **_grid_placement(slide, pitch, origin),
            "metadata": {METADATA_KEY: metadata},
        }
        return labels, meta, "labels"
    data, meta, _ = spots_layer(slide)
    features = pd.DataFrame({"spot_id": slide.spot_ids.to_numpy(dtype=object), "domain": domains})
    meta.update(
        name=name,
        features=features,
        face_color=colours[domains.codes],
        border_width=0,
        opacity=1.0,
        metadata={METADATA_KEY: metadata},
    )
    return data, meta, "points"


def gene_values(prediction, gene: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted and (when present) measured values of ``gene`` across the slide's spots."""
    column = prediction.var_names.get_loc(gene)
    measured = _column(prediction.layers["measured"], column) if "measured" in prediction.layers else None
    return _column(prediction.X, column), measured


def _column(values, column: int) -> np.ndarray:
    """One gene's values as a dense vector (``values`` dense, or sparse CSR as HD measured layers are)."""
    if sparse.issparse(values):
        return values[:, [column]].toarray().ravel()
    return np.asarray(values[:, column])


def shared_limits(
    *values: np.ndarray | None, percentiles: tuple[float, float] = (1, 99)
) -> tuple[float, float]:
    """One colour scale for several value arrays: the given percentiles of all finite values together."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values if v is not None] or [np.zeros(1)])
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, percentiles)
    return (float(low), float(high)) if high > low else (float(low), float(low) + 1.0)


def layer_name(slide_id: str, gene: str, kind: LayerKind) -> str:
    return f"{slide_id} {gene} {'predicted' if kind == LayerKind.PREDICTED else 'measured'}"


def _gene_points(slide, values, prediction, gene, kind, limits, colormap) -> tuple:
    data, meta, _ = spots_layer(slide)
    features = pd.DataFrame(
        values.toarray() if sparse.issparse(values) else np.asarray(values, dtype=np.float32),
        columns=list(map(str, prediction.var_names)),
    )
    features.insert(0, "spot_id", slide.spot_ids.to_numpy(dtype=object))
    metadata = _slide_metadata(slide, kind)
    metadata["units"] = "log1p(counts / spot total × 1e6)"
    meta.update(
        name=layer_name(slide.slide_id, gene, kind),
        features=features,
        face_color=gene,
        face_colormap=colormap,
        face_contrast_limits=limits,
        border_width=0,
        opacity=1.0,
        metadata={METADATA_KEY: metadata},
    )
    return data, meta, "points"


def _gene_raster(slide, values, prediction, gene, kind, limits, colormap, grid) -> tuple:
    """Binned spots (e.g. Visium HD) as one image pixel per bin: a gene switch refills one array."""
    index, pitch, origin = grid
    column = prediction.var_names.get_loc(gene)
    metadata = _slide_metadata(slide, kind)
    metadata.update(units="log1p(counts / spot total × 1e6)", grid_index=index)
    meta = {
        "name": layer_name(slide.slide_id, gene, kind),
        "colormap": colormap,
        "contrast_limits": limits,
        **_grid_placement(slide, pitch, origin),
        "metadata": {METADATA_KEY: metadata},
    }
    return gene_raster(_column(values, column), index), meta, "image"


def _grid_placement(slide: Slide, pitch: float, origin: np.ndarray) -> dict:
    """Where a raster of binned spots (one pixel per bin, :func:`spot_grid`) lies in world units."""
    pixel = slide.pixel_size_um or 1.0
    return {"scale": (pitch * pixel,) * 2, "translate": tuple(origin[::-1] * pixel), "units": _units(slide)}


def gene_raster(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(rows, cols) float32 image of per-spot values on the grid ``index``; NaN where no spot is."""
    raster = np.full(tuple(index.max(axis=0) + 1), np.nan, dtype=np.float32)
    raster[index[:, 0], index[:, 1]] = values
    return raster


def _side_by_side_offset(slide: Slide) -> float:
    width_px = slide.image.shape[1] if slide.image is not None else np.ptp(slide.centers_px[:, 0]) * 1.2
    return float(width_px * 1.05 * (slide.pixel_size_um or 1.0))
