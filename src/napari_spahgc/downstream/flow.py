"""The downstream stage's flows: predictions (or measured values) → tissue domains (``domains``), and
a domain → its differential expression and the enrichment of its genes (``markers``). The CLI's
``spahgc domains`` / ``spahgc markers``, the Python API and the Domains widget all run these; they
import no torch (the widget runs them in napari's process, in a thread).

Bad input is found before any work and before anything is written: a layer the file lacks, a labels
file that matches no spot, too many domains, a GMT with no tested gene, an empty domain.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import prepare_output_folder, require_file, safe_name, write_csv, write_report
from napari_spahgc.base.progress import Progress
from napari_spahgc.downstream.domains import DomainOptions, domain_sizes, find_domains
from napari_spahgc.downstream.enrichment import enrich, read_gene_sets
from napari_spahgc.downstream.labels import agreement, labels_for, read_labels, score_line
from napari_spahgc.downstream.markers import DEFAULT_MIN_PCC, Comparison, differential_expression
from napari_spahgc.io.export import copy_with_obs, storable, write_h5ad

MEASURED = "measured"


@dataclass(frozen=True)
class DomainsRequest:
    """Find domains in ``predictions`` (an h5ad path or AnnData) from X (``layer`` None: the predicted
    values) or a layer (``"measured"``); score them against ``labels`` (a spot → label table) when
    given, and then also the measured layer's domains found the same way; write to ``out`` when given."""

    predictions: str | Path | ad.AnnData
    options: DomainOptions = field(default_factory=DomainOptions)
    layer: str | None = None
    labels: str | Path | None = None
    out: str | Path | None = None


@dataclass(frozen=True)
class DomainsResult:
    """Each spot's domain (and, with labels and a measured layer, the measured values' domains), the
    sizes table, the scores against the labels (``{"predicted" | "measured": {ari, nmi, …}}``) and the
    files written."""

    spot_ids: pd.Index
    domains: pd.Categorical
    sizes: pd.DataFrame
    scores: dict
    measured_domains: pd.Categorical | None = None
    files: dict[str, str] = field(default_factory=dict)

    def obs(self) -> pd.DataFrame:
        """The obs columns the result adds: ``domain`` (and ``domain_measured``)."""
        columns = {"domain": self.domains}
        if self.measured_domains is not None:
            columns["domain_measured"] = self.measured_domains
        return pd.DataFrame(columns, index=self.spot_ids)


def domains(request: DomainsRequest) -> Generator[Progress, None, DomainsResult]:
    """Domains of one slide's spots; yields a record per step."""
    out = None if request.out is None else prepare_output_folder(request.out)
    with opened(request.predictions) as (adata, source):
        if "spatial" not in adata.obsm:
            raise InputError(
                f"{source or 'the predictions'}: no obsm['spatial'] (spot centres) to place domains"
            )
        values = layer_values(adata, request.layer)
        labels = None
        if request.labels is not None:
            labels = labels_for(adata.obs_names, read_labels(request.labels), request.labels)
        coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        steps = 2 + (labels is not None)
        yield Progress(0, steps, "finding domains", "domains")
        found = find_domains(values, coords, request.options)
        scores, measured = {}, None
        if labels is not None:
            scores[request.layer or "predicted"] = agreement(found, labels)
            if request.layer is None and MEASURED in adata.layers:
                yield Progress(1, steps, "domains of the measured values", "domains")
                measured = find_domains(adata.layers[MEASURED], coords, request.options)
                scores[MEASURED] = agreement(measured, labels)
        result = DomainsResult(adata.obs_names.copy(), found, domain_sizes(found), scores, measured)
        if out is not None:
            yield Progress(steps - 1, steps, "writing", "domains")
            result = _write_domains(out, adata, source, result, request)
    yield Progress(steps, steps, "done", "domains", {"scores": scores, "n_domains": len(found.categories)})
    return result


@contextmanager
def opened(predictions: str | Path | ad.AnnData) -> Iterator[tuple[ad.AnnData, Path | None]]:
    """The AnnData (a file read backed: X stays on disk, closed at the end) and its path (None for
    one in memory)."""
    if isinstance(predictions, ad.AnnData):
        yield predictions, None
        return
    source = require_file(predictions, "predictions file")
    try:
        adata = ad.read_h5ad(source, backed="r")
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{source}: not a readable h5ad file ({error})") from None
    try:
        yield adata, source
    finally:
        adata.file.close()


def layer_values(adata: ad.AnnData, layer: str | None):
    """X or the named layer; a layer the file lacks is an error naming those it has."""
    if layer is None:
        if adata.X is None:
            raise InputError("the predictions file has no X (predicted values)")
        return adata.X
    if layer not in adata.layers:
        have = ", ".join(adata.layers) or "none"
        raise InputError(
            f"the file has no layer {layer!r} (its layers: {have}); X holds the predicted values"
        )
    return adata.layers[layer]


def _write_domains(
    out: Path, adata: ad.AnnData, source: Path | None, result: DomainsResult, request: DomainsRequest
) -> DomainsResult:
    """The h5ad copy with the domains in obs, the sizes CSV, the PNG over the H&E, the JSON record."""
    from napari_spahgc.view.figures import render_domains

    record = {
        "options": request.options.describe(),
        "layer": request.layer or "X (predicted)",
        "labels": None if request.labels is None else str(Path(request.labels).resolve()),
        "scores": result.scores,
        "sizes": result.sizes.to_dict(orient="records"),
    }
    name = source.stem if source is not None else safe_name(_slide_id(adata))
    h5ad = out / f"{name}.h5ad"
    obs = adata.obs.drop(columns=["domain", "domain_measured"], errors="ignore").join(result.obs())
    if source is not None:
        copy_with_obs(source, h5ad, obs, {"spahgc_domains": record})
    else:
        uns = {**adata.uns, "spahgc_domains": storable(record)}
        layers = dict(adata.layers)
        shared = ad.AnnData(adata.X, obs, adata.var, uns, dict(adata.obsm), dict(adata.varm), layers=layers)
        write_h5ad(shared, h5ad)  # the values shared, not copied
    sizes = write_csv(result.sizes, out / "domain_sizes.csv")
    png = render_domains(adata, result.domains, out / "domains.png", _title(adata, request, result))
    report = write_report(out, record, _markdown(record))
    return replace(
        result, files={"h5ad": str(h5ad), "sizes": str(sizes), "png": str(png), "report": str(report)}
    )


def _slide_id(adata: ad.AnnData) -> str:
    return str(next(iter(adata.uns.get("spatial", {})), "slide"))


def _title(adata: ad.AnnData, request: DomainsRequest, result: DomainsResult) -> str:
    what = "measured" if request.layer == MEASURED else "predicted"
    score = result.scores.get(request.layer or "predicted")
    tail = f", ARI {score['ari']:.2f} vs labels" if score else ""
    return f"{_slide_id(adata)} — {len(result.domains.categories)} domains of {what} expression{tail}"


def _markdown(record: dict) -> str:
    lines = ["# Tissue domains", "", f"- values: {record['layer']}", f"- options: {record['options']}"]
    lines += [f"- {score_line(layer, score)}" for layer, score in record["scores"].items()]
    lines += ["", "| domain | spots | share |", "|---|---|---|"]
    lines += [f"| {r['domain']} | {r['spots']} | {r['share']:.3f} |" for r in record["sizes"]]
    return "\n".join(lines)


@dataclass(frozen=True)
class MarkersRequest:
    """Differential expression of ``comparison`` in ``domains`` (an h5ad with ``obs['domain']``, or
    AnnData) on X or ``layer``, the predicted genes kept by ``min_pcc``; enrichment against
    ``gene_sets`` (a GMT path) when given; tables and a plot written to ``out`` when given."""

    domains: str | Path | ad.AnnData
    comparison: Comparison
    layer: str | None = None
    min_pcc: float | None = DEFAULT_MIN_PCC
    gene_sets: str | Path | None = None
    out: str | Path | None = None


@dataclass(frozen=True)
class MarkersResult:
    """The DE table, the enrichment table (None without gene sets) and the files written."""

    de: pd.DataFrame
    enrichment: pd.DataFrame | None
    files: dict[str, str] = field(default_factory=dict)


def markers(request: MarkersRequest) -> Generator[Progress, None, MarkersResult]:
    """DE, then enrichment; yields a record per step."""
    out = None if request.out is None else prepare_output_folder(request.out)
    with opened(request.domains) as (adata, _):
        layer_values(adata, request.layer)
        gene_sets = None if request.gene_sets is None else read_gene_sets(request.gene_sets)
        yield Progress(0, 2, f"differential expression {request.comparison.name}", "markers")
        de = differential_expression(adata, request.comparison, request.layer, request.min_pcc)
    table = None
    if gene_sets is not None:
        yield Progress(1, 2, "enrichment", "markers")
        table = enrich(de, gene_sets, source=request.gene_sets)
    files = {} if out is None else write_markers(out, request.comparison, de, table)
    yield Progress(2, 2, "done", "markers", {"tested": len(de)})
    return MarkersResult(de, table, files)


def write_markers(out: Path, comparison: Comparison, de: pd.DataFrame, table: pd.DataFrame | None) -> dict:
    """The DE table (and the enrichment table with its bar plot) of ``comparison`` in the folder ``out``."""
    from napari_spahgc.view.figures import render_enrichment

    stem = safe_name(comparison.name)
    files = {"de": write_csv(de, out / f"de_{stem}.csv")}
    if table is not None:
        files["enrichment"] = write_csv(table, out / f"enrichment_{stem}.csv")
        files["plot"] = render_enrichment(table, out / f"enrichment_{stem}.png", comparison.name)
    return {k: str(v) for k, v in files.items()}
