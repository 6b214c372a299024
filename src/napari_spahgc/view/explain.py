"""Why this prediction: the K reference spots a spot's prediction drew on, read from a predictions
AnnData (:mod:`napari_spahgc.io.intervals` stores them) — their slide, spot id, cosine similarity,
CNAP's attention, measured value of a gene and, where the reference slide's image is reachable, a
patch of it. The napari panel, ``SpaHGCPredictor.explain`` and ``spahgc explain`` all use it."""

from __future__ import annotations

import difflib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import atomic_path
from napari_spahgc.io.intervals import ATTENTION, REFERENCES, SIMILARITY, has_intervals, prediction_interval

#: the side of a reference patch in a mosaic or panel (pixels of 112 µm fields)
PATCH_SIDE = 112


def spot_row(names, spot: str) -> int:
    """The row of spot id ``spot`` among ``names`` (an AnnData's obs names, a slide's spot ids), or
    an :class:`InputError` naming close matches."""
    names = pd.Index(np.asarray(names).astype(str))
    if str(spot) in names:
        return int(names.get_loc(str(spot)))
    close = difflib.get_close_matches(str(spot), list(names), n=5, cutoff=0.6)
    hint = f"; close: {', '.join(close)}" if close else ""
    raise InputError(f"no spot {spot!r} among the slide's {len(names)} spots{hint}")


def check_gene(genes, gene: str | None) -> str:
    """``gene`` if among the predicted ``genes`` (None: the first), else an :class:`InputError` with
    close matches."""
    genes = [str(g) for g in genes]
    if gene is None:
        return genes[0]
    if gene in genes:
        return gene
    close = difflib.get_close_matches(gene, genes, n=5, cutoff=0.6)
    raise InputError(f"gene {gene!r} was not predicted" + (f"; close: {', '.join(close)}" if close else ""))


def reference_table(adata: ad.AnnData, spot: str, gene: str | None = None) -> pd.DataFrame:
    """One row per reference of ``spot`` (most similar first): ``slide_id``, ``spot_id``,
    ``similarity``, ``attention`` (NaN without CNAP), ``measured`` (the reference's log1p CPM of
    ``gene``), ``x``, ``y`` (full-resolution centre). ``attrs``: the spot, the gene, its prediction,
    its interval (when stored) and its uncertainty."""
    if REFERENCES not in adata.obsm:
        raise InputError("these predictions do not record the reference spots (predicted before they were)")
    row, gene = spot_row(adata.obs_names, spot), check_gene(adata.var_names, gene)
    column = int(adata.var_names.get_loc(gene))
    table = adata.uns[REFERENCES]
    refs = np.asarray(adata.obsm[REFERENCES][row])
    n = len(refs)
    centers = np.asarray(table["centers_px"])[refs] if "centers_px" in table else np.full((n, 2), np.nan)
    frame = pd.DataFrame(
        {
            "slide_id": np.asarray(table["slide_id"])[refs].astype(str),
            "spot_id": np.asarray(table["spot_id"])[refs].astype(str) if "spot_id" in table else [""] * n,
            "similarity": np.asarray(adata.obsm[SIMILARITY][row]) if SIMILARITY in adata.obsm else np.nan,
            "attention": np.asarray(adata.obsm[ATTENTION][row]) if ATTENTION in adata.obsm else np.nan,
            "measured": np.asarray(table["expression"])[refs, column],
            "x": centers[:, 0],
            "y": centers[:, 1],
        },
        index=pd.RangeIndex(1, n + 1, name="rank"),
    )
    prediction = float(np.asarray(adata.X[row : row + 1])[0, column])
    frame.attrs.update(spot=str(spot), gene=gene, prediction=prediction)
    if "uncertainty" in adata.obs:
        frame.attrs["uncertainty"] = float(adata.obs["uncertainty"].iloc[row])
    if has_intervals(adata):
        lower, upper = prediction_interval(adata[row : row + 1], genes=[gene])
        frame.attrs["interval"] = (float(lower[0, 0]), float(upper[0, 0]))
    return frame


def reference_patches(
    adata: ad.AnnData, frame: pd.DataFrame, side: int = PATCH_SIDE
) -> tuple[list[np.ndarray | None], list[str]]:
    """A (side, side, 3) patch of the 112 µm field around each reference, read from its slide's
    image where the predictions recorded one and it is still there (None otherwise), and one note
    per slide whose image could not be read."""
    from napari_spahgc.io.images import open_image

    columns = adata.uns[REFERENCES].get("images", {}) if REFERENCES in adata.uns else {}
    images = {
        str(slide): (str(path), float(size))
        for slide, path, size in zip(
            columns.get("slide_id", []),
            columns.get("image", []),
            columns.get("pixel_size_um", []),
            strict=True,
        )
    }
    opened, notes = {}, []
    for slide in dict.fromkeys(frame["slide_id"]):
        path, pixel_size = images.get(slide, ("", 0.0))
        if not path or not pixel_size:
            notes.append(f"{slide}: the model did not record its image")
        elif not Path(path).is_file():
            notes.append(f"{slide}: its image is gone ({path})")
        else:
            try:
                opened[slide] = (open_image(path), pixel_size)
            except InputError as error:
                notes.append(f"{slide}: {error}")
    patches = []
    for slide, x, y in zip(frame["slide_id"], frame["x"], frame["y"], strict=True):
        if slide not in opened or np.isnan(x):
            patches.append(None)
            continue
        image, pixel_size = opened[slide]
        patches.append(image.patch((x, y), pixel_size, side, 112 / side))
    return patches, notes


def summary_line(frame: pd.DataFrame) -> str:
    """ "SPOT, GENE: predicted 4.21 (90 % interval 0.00–8.10), uncertainty 2.31"."""
    attrs = frame.attrs
    text = f"{attrs['spot']}, {attrs['gene']}: predicted {attrs['prediction']:.2f}"
    if "interval" in attrs:
        text += f" (interval {attrs['interval'][0]:.2f}–{attrs['interval'][1]:.2f})"
    if "uncertainty" in attrs:
        text += f", uncertainty {attrs['uncertainty']:.2f}"
    return text


def write_mosaic(path: str | Path, frame: pd.DataFrame, patches: list[np.ndarray | None]) -> Path:
    """A PNG of the references side by side, each with its slide, spot, similarity, attention and
    measured value (a grey square where its image is not reachable), titled by :func:`summary_line`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(frame), figsize=(1.9 * len(frame), 2.6), squeeze=False)
    for axis, patch, (_, ref) in zip(axes[0], patches, frame.iterrows(), strict=True):
        axis.imshow(patch if patch is not None else np.full((8, 8, 3), 200, np.uint8))
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{ref.slide_id} {ref.spot_id}", fontsize=7)
        axis.set_xlabel(
            f"sim {ref.similarity:.2f}  att {ref.attention:.2f}\n{frame.attrs['gene']} {ref.measured:.2f}",
            fontsize=7,
        )
    figure.suptitle(summary_line(frame), fontsize=8)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path
