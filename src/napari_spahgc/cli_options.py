"""The command line's shared arguments and options (typer ``Annotated`` types), and the parsing of
SpaHGC's ``--set`` / ``--epochs`` before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CohortArg = Annotated[
    Path, typer.Argument(help="Cohort table (CSV: slide_id, image, spots, counts, pixel_size_um, patient).")
]

EncoderOpt = Annotated[
    str, typer.Option("--encoder", help="Patch encoder: efficientnet-lite0 (offline default), uni, uni2-h.")
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="Encoder weights file (UNI: pytorch_model.bin or .safetensors)."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Patches per encoder batch.")]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache", help="Embedding cache folder (default: the user cache folder).")
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="Embedding: spot (one patch per spot), dense (one pass per tissue tile, fields averaged), "
        "auto (dense below a 112 µm spot pitch, the patch field: Visium, Visium HD; else spot). predict: the model's mode.",
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="Run one task per slide on the Dask scheduler at this address."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Run one task per slide on a local Dask cluster of N processes."),
]
RetriesOpt = Annotated[
    int,
    typer.Option("--retries", min=0, help="Retries of a slide's task after a transient failure (cluster)."),
]
GenesOpt = Annotated[Path | None, typer.Option("--genes", help="Gene panel file: one gene name per line.")]
HvgOpt = Annotated[
    int | None, typer.Option("--n-hvg", min=1, help="Use the top-N HVGs of each training slide, intersected.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (training is reproducible on CPU).")]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Maximum training epochs.")]
TrainEpochsOpt = Annotated[
    int | None, typer.Option("--epochs", min=1, help="Maximum training epochs (default: the preset's, 200).")
]
PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset", help="SpaHGC configuration to start from: default, or paper (the published one)."
    ),
]
MethodsOpt = Annotated[
    str,
    typer.Option("--methods", help="Comma-separated subset (default: every method: spahgc, ridge, knn, …)."),
]
JobsOpt = Annotated[
    int,
    typer.Option(
        "--jobs", min=0, help="Worker processes, one thread each (0: one per CPU core; 1 with CUDA)."
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="SpaHGC option NAME=VALUE on top of the preset (ablations: use_ts, use_rs, use_cnda, use_cnap, "
        "masking=complementary|random|none, q, k, alpha, beta, reference_nodes, …); repeatable.",
    ),
]


def spahgc_settings(pairs: list[str] | None, epochs: int | None) -> dict:
    """``--set`` values typed by their fields, plus ``--epochs`` when given — parsed before any work."""
    from .options import parse_settings

    return {**parse_settings(pairs or []), **({"epochs": epochs} if epochs is not None else {})}


def gene_panel(genes: Path | None, n_hvg: int | None) -> list[str] | None:
    """The genes of ``--genes FILE`` (None with ``--n-hvg N``); exactly one of them must be given."""
    if (genes is None) == (n_hvg is None):
        raise typer.BadParameter("give exactly one of --genes FILE or --n-hvg N")
    from .expression import read_gene_panel

    return read_gene_panel(genes) if genes is not None else None
