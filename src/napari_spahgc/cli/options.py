"""The command line's shared arguments and options (typer ``Annotated`` types) — their choices and
help read from the registries (encoders, embedding modes, presets, benchmark methods, SpaHGC options)
— and the parsing of genes and SpaHGC's ``--preset`` / ``--set`` / ``--epochs`` before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from napari_spahgc.embed.encoders import DEFAULT_ENCODER, REGISTRY
from napari_spahgc.evaluate.benchmark import METHODS
from napari_spahgc.io.expression import GeneChoice
from napari_spahgc.model.config import PRESETS, SpaHGCConfig, option_types, parse_settings

_DEFAULTS = SpaHGCConfig()

CohortArg = Annotated[
    Path, typer.Argument(help="Cohort table (CSV: slide_id, image, spots, counts, pixel_size_um, patient).")
]

EncoderOpt = Annotated[
    str,
    typer.Option(
        "--encoder", help=f"Patch encoder: {', '.join(REGISTRY)} (offline default: {DEFAULT_ENCODER})."
    ),
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
_MODES_HELP = (
    "dense (one encoder pass per tissue tile, each spot's field averaged from the feature map: its cost "
    "follows the tissue) or spot (one 224 px patch per spot: its cost grows with the spots)"
)
ModeOpt = Annotated[str, typer.Option("--mode", help=f"Embedding: {_MODES_HELP}.")]
PredictModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help=f"Embedding: {_MODES_HELP}. Default: the model's own mode (a model reads only embeddings "
        "of the mode it was trained on).",
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
LevelOpt = Annotated[
    float,
    typer.Option(
        "--level",
        help="Level of the prediction intervals, in (0, 1) (0.9: 90 % intervals, calibrated on the model's "
        "held-out training slides).",
    ),
]
AggregateOpt = Annotated[
    int,
    typer.Option(
        "--aggregate-bins",
        min=1,
        help="Visium HD: train on squares of N × N bins, their counts summed (8 µm bins, 2: 16 µm, a "
        "quarter of the spots); 1: the bins as they are.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (training is reproducible on CPU).")]
EpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--epochs", min=1, help=f"Maximum training epochs (default: the preset's, {_DEFAULTS.train.epochs})."
    ),
]
PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset",
        help=f"SpaHGC configuration to start from: {', '.join(PRESETS)} (paper: the published one).",
    ),
]
MethodsOpt = Annotated[
    str,
    typer.Option("--methods", help=f"Comma-separated subset (default: every method: {', '.join(METHODS)})."),
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
        help="SpaHGC option NAME=VALUE on top of the preset; repeatable. Options: "
        + ", ".join(sorted(set(option_types()) - {"seed", "device"}))
        + " (docs/method.md).",
    ),
]


def spahgc_config(
    preset: str, pairs: list[str] | None, epochs: int | None, seed: int, device: str
) -> tuple[SpaHGCConfig, dict]:
    """The config of ``--preset``, ``--set`` (each value typed by its field) and ``--epochs``, with the
    seed and device — parsed before any work; and the options given (for messages)."""
    given = {**parse_settings(pairs or []), **({"epochs": epochs} if epochs is not None else {})}
    return SpaHGCConfig.from_options(given, preset=preset, seed=seed, device=device), given


def gene_choice(genes: Path | None, n_hvg: int | None) -> GeneChoice:
    """``--genes FILE`` or ``--n-hvg N``: exactly one of them must be given."""
    if (genes is None) == (n_hvg is None):
        raise typer.BadParameter("give exactly one of --genes FILE or --n-hvg N")
    return GeneChoice.from_file(genes) if genes is not None else GeneChoice(n_hvg=n_hvg)
