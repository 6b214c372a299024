"""The ``spahgc`` command line: every command runs the same Qt-free core as the napari widgets."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from .errors import InputError

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


@app.callback()
def _commands() -> None:
    """Predict spatial gene expression from H&E histology with SpaHGC."""


CohortArg = Annotated[
    Path, typer.Argument(help="Cohort table (CSV: slide_id, image, spots, counts, pixel_size_um, patient).")
]


@app.command()
def info(
    cohort: CohortArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of records and nothing else.")
    ] = False,
) -> None:
    """Describe each slide of a cohort: spots, genes, image size, pixel size, pyramid levels, patient."""
    from .io.cohort import read_cohort

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


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " × ".join(map(str, value))
    return str(value)


def main() -> None:
    """Console entry point: bad input ends with its message and exit code 2, not a traceback."""
    try:
        app()
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
