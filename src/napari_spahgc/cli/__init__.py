"""The ``spahgc`` command line: every command runs the same Qt-free core as the napari widgets."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from napari_spahgc.base.conformal import check_level
from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import prepare_output_file, prepare_output_folder, safe_name
from napari_spahgc.base.interrupts import StopSignals
from napari_spahgc.cli.drive import drive, load_slides, runner_for, written
from napari_spahgc.cli.options import (
    AggregateOpt,
    BatchOpt,
    CacheOpt,
    CohortArg,
    DeviceOpt,
    EncoderOpt,
    EpochsOpt,
    GenesOpt,
    HvgOpt,
    JobsOpt,
    LevelOpt,
    MethodsOpt,
    ModeOpt,
    PredictModeOpt,
    PresetOpt,
    RetriesOpt,
    SchedulerOpt,
    SeedOpt,
    SetOpt,
    WeightsOpt,
    WorkersOpt,
    gene_choice,
    spahgc_config,
)
from napari_spahgc.downstream.domains import DEFAULT_SPATIAL_WEIGHT
from napari_spahgc.downstream.markers import DEFAULT_MIN_PCC
from napari_spahgc.embed.cache import DEFAULT_MODE
from napari_spahgc.embed.encoders import DEFAULT_ENCODER
from napari_spahgc.embed.flow import EmbedRequest
from napari_spahgc.embed.flow import embed as embed_flow
from napari_spahgc.run.runners import InProcess

app = typer.Typer(
    name="spahgc",
    help=(
        "Predict spatial gene expression from H&E histology with SpaHGC.\n\n"
        "Most commands take a COHORT table: a CSV with the columns slide_id, image, spots, counts, "
        "pixel_size_um, patient (counts, pixel_size_um and patient may be empty; relative paths are "
        "relative to the table). See examples/her2st_cohort.csv."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def info(
    cohort: CohortArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of records and nothing else.")
    ] = False,
) -> None:
    """Describe each slide of a cohort: spots, genes, image size, pixel size, pyramid levels, patient."""
    from napari_spahgc.io.cohort import read_cohort

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = [entry.load().summary() for entry in read_cohort(cohort)]
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    header = ("slide_id", "n_spots", "n_genes", "image_shape", "pixel_size_um", "n_levels", "patient")
    rows = [[_cell(record[key]) for key in header] for record in records]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    for record in records:
        if record["pixel_size_um"] is None:
            typer.echo(
                f"note: {record['slide_id']} has no known pixel size; fill pixel_size_um in the cohort table.",
                err=True,
            )


@app.command()
def embed(
    cohort: CohortArg,
    encoder: EncoderOpt = DEFAULT_ENCODER,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    cache: CacheOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    retries: RetriesOpt = 0,
    mode: ModeOpt = DEFAULT_MODE,
) -> None:
    """Embed every spot's field (224 px at 0.5 µm/px; densely, or per spot with --mode spot) and cache the
    embeddings per slide (on a Dask cluster with --scheduler or --workers: one task per slide)."""
    slides = load_slides(cohort, with_expression=False)  # the spots are all embedding needs
    request = EmbedRequest(slides, encoder, weights, device, batch_size, cache, mode)
    result = drive(runner_for(scheduler, workers, retries), embed_flow, request)
    written(result.files, slides)
    typer.echo(
        "Load one with numpy.load(path): arrays embeddings, spot_ids, centers_px, key (docs/embeddings.md)."
    )


@app.command()
def train(
    cohort: CohortArg,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    encoder: EncoderOpt = DEFAULT_ENCODER,
    weights: WeightsOpt = None,
    genes: GenesOpt = None,
    n_hvg: HvgOpt = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    cache: CacheOpt = None,
    preset: PresetOpt = "default",
    settings: SetOpt = None,
    mode: ModeOpt = DEFAULT_MODE,
    aggregate: AggregateOpt = 1,
) -> None:
    """Train SpaHGC on every slide of the cohort (by default a cross-validated ensemble: each member holds
    slides out to choose its epoch; --preset paper: one model, final epoch) and save it."""
    from napari_spahgc.io.bins import aggregate_bins
    from napari_spahgc.train.flow import TrainRequest, train

    config, _ = spahgc_config(preset, settings, epochs, seed, device)
    chosen = gene_choice(genes, n_hvg)
    prepare_output_folder(out, "model folder")  # before the slides are read: a bad --out fails first
    slides = load_slides(cohort)
    if aggregate > 1:
        slides = [aggregate_bins(slide, aggregate) for slide in slides]
    embedding = EmbedRequest(slides, encoder, weights, device, batch_size, cache, mode)
    model = drive(InProcess(), train, TrainRequest(slides, embedding, chosen, config, out)).model
    typer.echo(f"model: {out} ({len(model.genes)} genes; {model.metadata.validation_summary()})")


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by 'spahgc train'.")],
    cohort: CohortArg,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for one SLIDE_ID.h5ad (or SLIDE_ID.zarr) per slide.")
    ],
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    cache: CacheOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    retries: RetriesOpt = 0,
    mode: PredictModeOpt = None,
    level: LevelOpt = 0.9,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="h5ad, or zarr: a SpatialData store per slide (H&E, spots or bins, and the predictions "
            "as its table) that napari-spatialdata, squidpy and spatialdata open.",
        ),
    ] = "h5ad",
    no_image: Annotated[
        bool, typer.Option("--no-image", help="With --format zarr: leave the H&E out of the store.")
    ] = False,
    bins: Annotated[
        str,
        typer.Option(
            "--bins",
            help="With --format zarr, how binned spots (Visium HD) are drawn: raster (a labels image, one "
            "pixel per bin; auto) or squares (one polygon per bin).",
        ),
    ] = "auto",
) -> None:
    """Predict expression for every slide of the cohort with a trained model (embedded with its encoder,
    in its mode unless --mode says otherwise); write h5ad files or SpatialData stores (on a Dask cluster
    with --scheduler or --workers: one task per slide, the model loaded once per worker)."""
    from napari_spahgc.predict.flow import PredictRequest, check_output_format, load_model, predict

    level = check_level(level)  # before any work
    check_output_format(output_format, bins)
    model_dir = model_dir.resolve()  # the same folder for this process and a cluster's workers
    encoder = load_model(model_dir).metadata.encoder.get("name", DEFAULT_ENCODER)  # verified before any work
    prepare_output_folder(out)
    slides = load_slides(cohort)
    embedding = EmbedRequest(slides, encoder, weights, device, batch_size, cache, mode)
    request = PredictRequest(
        model_dir, slides, embedding, out.resolve(), device, level, output_format, not no_image, bins
    )
    result = drive(runner_for(scheduler, workers, retries), predict, request)
    written(result.files, slides)


@app.command()
def benchmark(
    cohort: CohortArg,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for report.json, report.md, per_gene.csv, figure.")
    ],
    encoder: EncoderOpt = DEFAULT_ENCODER,
    weights: WeightsOpt = None,
    genes: GenesOpt = None,
    n_hvg: HvgOpt = None,
    methods: MethodsOpt = "",
    epochs: EpochsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    cache: CacheOpt = None,
    settings: SetOpt = None,
    mode: ModeOpt = DEFAULT_MODE,
    jobs: JobsOpt = 0,
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            min=1,
            help="Seeds per seeded method (SpaHGC, the MLP probe): --seed, then the next ones; each fold "
            "reports the mean ± sd over seeds.",
        ),
    ] = 1,
    level: LevelOpt = 0.9,
) -> None:
    """Leave-one-slide-out (or -patient-out) benchmark of SpaHGC (ours and the paper's configuration)
    and tuned baselines on the same embeddings, with paired statistics against the best baseline;
    --set and --epochs apply to the 'spahgc' method."""
    from napari_spahgc.evaluate.benchmark import (
        METHODS,
        EvaluateRequest,
        check_methods,
        default_jobs,
        evaluate,
    )
    from napari_spahgc.evaluate.report import report_table

    config, given = spahgc_config("default", settings, epochs, seed, device)
    chosen = [m.strip() for m in methods.split(",") if m.strip()] or list(METHODS)
    check_methods(chosen)  # before any work
    level = check_level(level)
    if given and "spahgc" not in chosen:
        raise InputError(
            "SpaHGC options (--set, --epochs) apply to the 'spahgc' method, which --methods leaves out"
        )
    panel = gene_choice(genes, n_hvg)
    prepare_output_folder(out)
    slides = load_slides(cohort)
    embedding = EmbedRequest(slides, encoder, weights, device, batch_size, cache, mode)
    request = EvaluateRequest(
        slides,
        embedding,
        panel,
        out,
        chosen,
        config,
        jobs or default_jobs(device),
        seeds=seeds,
        level=level,
        protocol={"cohort": str(cohort)},
    )
    report = drive(InProcess(), evaluate, request)
    typer.echo(report_table(report))
    typer.echo(f"report: {out / 'report.json'}")


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the predictions, report and figures.")
    ] = Path("out/demo"),
    cohort: Annotated[
        Path | None, typer.Option("--cohort", help="Cohort table (default: the HER2ST sections C2–C6).")
    ] = None,
    test_slide: Annotated[
        str | None, typer.Option("--test-slide", help="Section to hold out and predict (default: the last).")
    ] = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    mode: ModeOpt = DEFAULT_MODE,
    no_viewer: Annotated[bool, typer.Option("--no-viewer", help="Do not open napari at the end.")] = False,
) -> None:
    """The whole pipeline offline on HER2ST: embed, train on all sections but one, predict it, report.

    The sections are read from SPAHGC_DATA, ../shared/data/her2st, or (online) downloaded. With a display
    (and without --no-viewer) napari then opens with everything loaded.
    """
    from napari_spahgc.demo import run_demo
    from napari_spahgc.evaluate.benchmark import default_jobs

    config, _ = spahgc_config("default", None, epochs, seed, device)
    result = run_demo(out, cohort, test_slide, config, log=_to_stderr, jobs=default_jobs(device), mode=mode)
    typer.echo(f"{'method':<14} {'PCC':>6} {'RMSE':>6}   (held-out section {result.test_slide})")
    for name, metric in result.metrics.items():
        typer.echo(f"{name:<14} {metric['pcc']:6.3f} {metric['rmse']:6.3f}")
    typer.echo(result.verdict)
    for label, path in result.files.items():
        typer.echo(f"{label}: {path}")
    if not no_viewer:
        _open_viewer(result)


def _open_viewer(result) -> None:
    """napari with the demo loaded, when there is a display (never in CI)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or os.environ.get("CI"):
        typer.echo(
            "no display: not opening napari (open the predictions with the Slide widget later)", err=True
        )
        return
    import napari

    from napari_spahgc._qt.viewer import open_in_viewer

    open_in_viewer(result)
    napari.run()


@app.command()
def render(
    predictions: Annotated[
        Path, typer.Argument(help="Predictions .h5ad (from 'spahgc predict' or the demo).")
    ],
    gene: Annotated[str, typer.Option("--gene", help="Gene to draw.")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    image: Annotated[
        Path | None,
        typer.Option("--image", help="H&E image to draw under the spots (default: the file's own)."),
    ] = None,
    colormap: Annotated[str, typer.Option("--colormap", help="matplotlib colormap.")] = "viridis",
) -> None:
    """Draw one gene, predicted beside measured, over the H&E thumbnail, on one colour scale."""
    from napari_spahgc.io.spots import read_anndata
    from napari_spahgc.view.figures import render_gene

    prediction = read_anndata(predictions, "predictions file")
    prepare_output_file(out, "PNG")
    typer.echo(str(render_gene(prediction, gene, out, image=image, colormap=colormap)))


@app.command()
def explain(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by 'spahgc train'.")],
    cohort: CohortArg,
    slide: Annotated[str, typer.Option("--slide", help="Slide id (a row of the cohort table).")],
    spot: Annotated[str, typer.Option("--spot", help="Spot (or bin) id of that slide.")],
    gene: Annotated[str | None, typer.Option("--gene", help="Gene (default: the model's first).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG mosaic of the references (default: SLIDE_SPOT_why.png).")
    ] = None,
    device: DeviceOpt = "auto",
    cache: CacheOpt = None,
) -> None:
    """Why a spot's prediction: the K reference spots it drew on (slide, spot, cosine similarity,
    attention, their measured value of the gene) as a table, and their patches as a PNG mosaic."""
    from napari_spahgc.predict.flow import PredictRequest, load_model, predict
    from napari_spahgc.view.explain import (
        check_gene,
        reference_patches,
        reference_table,
        spot_row,
        summary_line,
        write_mosaic,
    )

    model = load_model(model_dir.resolve())
    slides = {s.slide_id: s for s in load_slides(cohort)}
    if slide not in slides:
        raise InputError(f"no slide {slide!r} in the cohort table (its slides: {', '.join(slides)})", cohort)
    target = slides[slide]
    spot_row(target.spot_ids, spot)  # before any work: a typo fails at once
    check_gene(model.genes, gene)
    out = out or Path(f"{safe_name(slide)}_{safe_name(spot)}_why.png")
    prepare_output_file(out, "PNG")
    encoder = model.metadata.encoder.get("name", DEFAULT_ENCODER)
    embedding = EmbedRequest([target], encoder, device=device, cache=cache)
    request = PredictRequest(model_dir.resolve(), [target], embedding, device=device)
    adata = drive(InProcess(), predict, request).predictions[slide]
    frame = reference_table(adata, spot, gene)
    patches, notes = reference_patches(adata, frame)
    typer.echo(summary_line(frame))
    typer.echo(frame.to_string(float_format=lambda v: f"{v:.3f}"))
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(str(write_mosaic(out, frame, patches)))


@app.command()
def domains(
    predictions: Annotated[
        Path, typer.Argument(help="Predictions .h5ad (from 'spahgc predict', the demo or Export).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the h5ad with obs['domain'], PNG and tables.")
    ],
    n_domains: Annotated[
        int | None, typer.Option("--n-domains", help="KMeans with this many domains (default: Leiden).")
    ] = None,
    resolution: Annotated[
        float,
        typer.Option("--resolution", help="Leiden resolution (without --n-domains); higher: more domains."),
    ] = 1.0,
    spatial_weight: Annotated[
        float,
        typer.Option("--spatial-weight", help="Weight of each spot's neighbours, 0 (expression only) to 1."),
    ] = DEFAULT_SPATIAL_WEIGHT,
    layer: Annotated[
        str | None,
        typer.Option("--layer", help="Cluster this layer (e.g. measured) instead of the predictions."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Spot → label table (CSV/TSV, .gz too; columns spot_id or the first, and label) to score "
            "the domains against (ARI, NMI), and the measured layer's domains too.",
        ),
    ] = None,
    seed: SeedOpt = 0,
) -> None:
    """Tissue domains of a slide from its predicted (or measured) expression: PCA, each spot mixed with
    its neighbours by --spatial-weight, then KMeans (--n-domains) or Leiden (--resolution)."""
    from napari_spahgc.downstream.domains import DomainOptions
    from napari_spahgc.downstream.flow import DomainsRequest
    from napari_spahgc.downstream.flow import domains as domains_flow
    from napari_spahgc.downstream.labels import score_line

    options = DomainOptions(n_domains, resolution, spatial_weight, seed=seed)
    result = drive(InProcess(), domains_flow, DomainsRequest(predictions, options, layer, labels, out))
    typer.echo(result.sizes.to_string(index=False))
    for layer_name, score in result.scores.items():
        typer.echo(score_line(layer_name, score))
    for path in result.files.values():
        typer.echo(path)


@app.command()
def markers(
    domains_file: Annotated[Path, typer.Argument(help="An h5ad with obs['domain'] (from 'spahgc domains').")],
    domain: Annotated[str, typer.Option("--domain", help="The domain to characterise.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the DE and enrichment tables and the plot.")],
    versus: Annotated[
        str, typer.Option("--versus", help="Another domain to compare with (default: all the rest).")
    ] = "rest",
    min_pcc: Annotated[
        float,
        typer.Option(
            "--min-pcc",
            help="Predicted genes tested: those whose validation PCC reaches this (-1: every gene). "
            "Ignored for --layer measured.",
        ),
    ] = DEFAULT_MIN_PCC,
    gene_sets: Annotated[
        Path | None,
        typer.Option("--gene-sets", help="GMT file (MSigDB, GO, KEGG or your own) for enrichment."),
    ] = None,
    layer: Annotated[str | None, typer.Option("--layer", help="Test this layer (e.g. measured).")] = None,
) -> None:
    """Differential expression of a domain against the rest or another domain (Wilcoxon, BH), on the
    genes that validated, and enrichment of its up genes in your gene sets."""
    from napari_spahgc.downstream.flow import MarkersRequest
    from napari_spahgc.downstream.flow import markers as markers_flow
    from napari_spahgc.downstream.markers import ALPHA, Comparison, up_genes

    comparison = Comparison(domain, versus)
    request = MarkersRequest(
        domains_file, comparison, layer, None if min_pcc <= -1 else min_pcc, gene_sets, out
    )
    result = drive(InProcess(), markers_flow, request)
    up = up_genes(result.de)
    typer.echo(f"{comparison.name}: {len(result.de)} genes tested, {len(up)} up (padj < {ALPHA:g})")
    typer.echo(result.de.head(10).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if result.enrichment is not None:
        typer.echo(
            result.enrichment.head(10)
            .drop(columns="genes")
            .to_string(index=False, float_format=lambda v: f"{v:.3g}")
        )
    for path in result.files.values():
        typer.echo(path)


def _to_stderr(line: str) -> None:
    typer.echo(line, err=True)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " × ".join(map(str, value))
    return str(value)


def main() -> None:
    """Console entry point: bad input exits 2 with its message (no traceback); SIGINT/SIGTERM 130/143."""
    with StopSignals() as stop:
        code: int | str | None = 0
        try:
            app()  # typer exits itself: usage errors 2, an interrupt 130
        except SystemExit as exited:
            code = exited.code
        except InputError as err:
            typer.echo(f"error: {err}", err=True)
            code = 2
        except KeyboardInterrupt:
            code = 130
    if stop.received is not None:  # even if a library swallowed the interrupt, the run did not finish
        typer.echo(
            f"interrupted ({stop.received.name}): nothing half-written was left; rerun to resume", err=True
        )
        for stream in (sys.stdout, sys.stderr):  # the run is unwound; CPython would report an
            stream.flush()  # interrupt that crossed PyRun_* code (some extensions) as death by SIGINT
        os._exit(128 + stop.received)
    sys.exit(code)


if __name__ == "__main__":
    main()
