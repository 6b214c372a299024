"""The demo: the whole pipeline on the HER2ST sections, offline, with defaults (``spahgc demo``).

Embed every section (offline encoder, cached) → train SpaHGC on all sections but one (a
cross-validated ensemble: each member picks its epoch on a training section it does not train on)
→ predict the held-out section → write its predictions h5ad, a report (SpaHGC and the ridge
baselines, tuned on the training sections, on the same embeddings and genes) and figures of
predicted vs measured for the genes that validated best. The held-out section plays no part in
training, gene choice, epoch choice, tuning or the choice of genes to show.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._files import cache_dir, prepare_output_folder, slide_file, write_report
from .baselines import BASELINES
from .dataset import slide_data
from .embedding import cohort_embeddings
from .encoders import DEFAULT_ENCODER, LazyEncoder
from .errors import InputError
from .evaluate import score
from .expression import read_gene_panel
from .io.cohort import load_cohort
from .io.export import write_h5ad
from .patches import PatchSpec
from .pipeline import make_trainer, predict_slide
from .predictor import SpaHGCPredictor
from .render import best_genes, render_gene
from .sample_data import her2st_cohort_table, her2st_folder
from .slide import Slide

PANEL_NAME = "her2st_785_genes.txt"


@dataclass
class DemoResult:
    """What the demo made: slides, embeddings, the model, the held-out prediction and the files."""

    slides: list[Slide]
    encoder: dict
    embeddings: dict[str, np.ndarray]
    model: SpaHGCPredictor
    test_slide: str
    prediction: object
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def run_demo(
    out_dir: str | Path,
    cohort: str | Path | None = None,
    test_slide: str | None = None,
    epochs: int = 200,
    seed: int = 0,
    device: str = "auto",
    n_figures: int = 3,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo into ``out_dir``; ``cohort`` defaults to the HER2ST sections (local or downloaded)."""
    started = time.perf_counter()
    out_dir = prepare_output_folder(out_dir)
    slides, test_slide, panel = _inputs(cohort, test_slide)
    log(
        f"{len(slides)} sections; held out: {test_slide}; genes: "
        + (f"{PANEL_NAME}" if panel else "top 300 HVGs")
    )

    encoder = LazyEncoder(DEFAULT_ENCODER, device=device)  # built only for slides not yet cached
    log(f"embedding {sum(s.n_spots for s in slides)} spots with {encoder.name} (cached)…")
    embeddings = cohort_embeddings(slides, encoder, cache_dir("embeddings"), PatchSpec())
    training = [s for s in slides if s.slide_id != test_slide]
    target = next(s for s in slides if s.slide_id == test_slide)
    trainer = make_trainer(
        training, embeddings, panel=panel, n_hvg=None if panel else 300, encoder=encoder.info(),
        patch=PatchSpec().to_dict(), seed=seed, device=device, epochs=epochs,
    )  # fmt: skip
    log(f"training on {', '.join(s.slide_id for s in training)} (≤ {epochs} epochs)…")
    model = _train(trainer, log)
    prediction = predict_slide(model, target, embeddings[test_slide], device="cpu")

    files = {"model": model.save(out_dir / "model")}
    files["predictions"] = write_h5ad(prediction, slide_file(out_dir, test_slide, ".h5ad"))
    metrics = _metrics(model, training, target, embeddings, prediction)
    genes = best_genes(prediction, n_figures, by="validation_pcc")
    for gene in genes:
        files[f"figure {gene}"] = render_gene(
            prediction, gene, slide_file(out_dir, f"{test_slide}_{gene}", ".png")
        )
    files["report"] = _write_report(out_dir, test_slide, metrics, genes, model, time.perf_counter() - started)
    return DemoResult(slides, encoder.info(), embeddings, model, test_slide, prediction, files, metrics)


def _inputs(cohort: str | Path | None, test_slide: str | None) -> tuple[list[Slide], str, list[str] | None]:
    """The demo's slides (the HER2ST sections when no cohort is given), the held-out slide and the
    gene panel beside the cohort table (None: top HVGs)."""
    if cohort is None:
        folder = her2st_folder()
        cohort = her2st_cohort_table(folder)
        panel_file = folder / PANEL_NAME
    else:
        panel_file = Path(cohort).parent / PANEL_NAME
    slides = load_cohort(cohort)
    test_slide = test_slide or slides[-1].slide_id
    if test_slide not in {s.slide_id for s in slides}:
        raise InputError(f"no slide {test_slide!r} in the cohort", cohort)
    return slides, test_slide, read_gene_panel(panel_file) if panel_file.is_file() else None


def _train(trainer, log: Callable[[str], None]) -> SpaHGCPredictor:
    """Run the trainer to the end, logging every 25th epoch's validation PCC."""
    for progress in trainer.steps():
        if progress.validation_pcc is not None and progress.epoch % 25 == 0:
            log(
                f"  epoch {progress.epoch}: loss {progress.loss:.3f}, validation PCC {progress.validation_pcc:.3f}"
            )
    return trainer.result


def _metrics(model, training, target, embeddings, prediction) -> dict:
    """Held-out PCC and RMSE (``evaluate.score``) of SpaHGC and the tuned ridge baselines."""
    genes = model.genes
    train = [slide_data(s, embeddings[s.slide_id], genes) for s in training]
    test = slide_data(target, embeddings[target.slide_id], genes)
    outputs = {
        "spahgc": prediction.X,
        **{name: BASELINES[name](train, test).prediction for name in ("ridge", "ridge_spatial")},
    }
    return {name: score(test.expression, values)[0] for name, values in outputs.items()}


def _write_report(
    out_dir: Path, test_slide: str, metrics: dict, genes: list[str], model, seconds: float
) -> Path:
    lines = [
        f"# SpaHGC demo: held-out section {test_slide}",
        "",
        f"Reference slides {', '.join(model.metadata.training_slides)}; {model.metadata.validation_summary()}.",
        f"{len(model.genes)} genes; {seconds:.0f} s in all.",
        "",
        "| method | PCC (mean over genes) | RMSE |",
        "|---|---|---|",
        *(f"| {name} | {m['pcc']:.3f} | {m['rmse']:.3f} |" for name, m in metrics.items()),
        "",
        "Figures (genes that validated best, chosen without the held-out section): "
        + ", ".join(f"`{test_slide}_{g}.png`" for g in genes),
    ]
    record = {
        "test_slide": test_slide,
        "metrics": metrics,
        "figure_genes": genes,
        "seconds": round(seconds, 1),
    }
    return write_report(out_dir, record, "\n".join(lines))
