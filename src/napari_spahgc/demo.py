"""The demo: the whole pipeline on the HER2ST sections, offline, with defaults (``spahgc demo``).

Embed every section (offline encoder, densely by default, cached) → evaluate SpaHGC and the tuned
ridge, kNN and blended baselines with one section held out (SpaHGC: a cross-validated ensemble, each
member picking its epoch on a training section it does not train on; its model kept) → say plainly
whether SpaHGC is ahead of the best of them on that section → predict the held-out section with that model → write
its predictions h5ad, the report and figures of predicted vs measured for the genes that validated
best. Each step is its stage's flow; the held-out section plays no part in training, gene choice,
epoch choice, tuning or the choice of genes to show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from anndata import AnnData

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import prepare_output_folder, safe_name, slide_file
from napari_spahgc.base.progress import Progress, run_to_end
from napari_spahgc.embed.cache import DEFAULT_MODE
from napari_spahgc.embed.flow import Embeddings, EmbedRequest, embed
from napari_spahgc.evaluate.benchmark import EvaluateRequest, evaluate
from napari_spahgc.io.cohort import load_cohort
from napari_spahgc.io.export import write_h5ad
from napari_spahgc.io.expression import GeneChoice
from napari_spahgc.io.her2st import her2st_cohort_table, her2st_folder
from napari_spahgc.io.slide import Slide
from napari_spahgc.model.config import SpaHGCConfig
from napari_spahgc.predict.flow import PredictRequest, predict
from napari_spahgc.run.runners import InProcess, Runner
from napari_spahgc.view.figures import best_genes, render_gene

PANEL_NAME = "her2st_785_genes.txt"
#: what the demo compares: SpaHGC and the tuned baselines that need no training loop (the MLP probe
#: and the paper's configuration are left to ``spahgc benchmark``)
METHODS = ("spahgc", "ridge", "ridge_spatial", "knn_spatial", "blend_spatial")


@dataclass
class DemoResult:
    """What the demo made: slides, embeddings, the held-out prediction, the report and the files."""

    slides: list[Slide]
    embeddings: Embeddings
    test_slide: str
    prediction: AnnData
    report: dict
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, dict]:
        """Each method's record on the held-out section (PCC, RMSE, …)."""
        return {name: m["folds"][self.test_slide] for name, m in self.report["methods"].items()}

    @property
    def verdict(self) -> str:
        """Whether SpaHGC is ahead of the best tuned baseline on the held-out section, said plainly."""
        comparison = self.report["comparisons"]["spahgc"]
        best, metrics = comparison["against"], self.metrics
        ahead = comparison["wins"] == comparison["folds"]
        return (
            f"On the held-out section {self.test_slide} SpaHGC scores PCC {metrics['spahgc']['pcc']:.3f}, "
            f"the best tuned baseline ({best}) {metrics[best]['pcc']:.3f}: SpaHGC is "
            + ("ahead here" if ahead else "NOT ahead on this section")
            + ". One section is one fold; the benchmark over every section (`make benchmark`, the "
            "README's results) says how often and how far it leads."
        )


def run_demo(
    out_dir: str | Path,
    cohort: str | Path | None = None,
    test_slide: str | None = None,
    config: SpaHGCConfig | None = None,
    n_figures: int = 3,
    log: Callable[[str], None] = print,
    runner: Runner = InProcess(),
    jobs: int = 1,
    mode: str = DEFAULT_MODE,
) -> DemoResult:
    """Run the demo into ``out_dir``; ``cohort`` defaults to the HER2ST sections (local or downloaded);
    ``mode``: how the spots are embedded (dense | spot)."""
    out_dir = prepare_output_folder(out_dir)
    config = config or SpaHGCConfig()
    slides, test_slide, genes = _inputs(cohort, test_slide)
    log(
        f"{len(slides)} sections; held out: {test_slide}; genes: "
        + (PANEL_NAME if genes.panel else "top 300 HVGs")
    )
    log(f"embedding {sum(s.n_spots for s in slides)} spots (cached)…")
    embeddings = _run(runner, embed, EmbedRequest(slides, device=config.train.device, mode=mode), log)
    log(f"training on every section but {test_slide}, with the tuned baselines beside it…")
    models = out_dir / "models"
    request = EvaluateRequest(
        slides, embeddings, genes, out_dir, METHODS, config, jobs, held_out=[[test_slide]], models=models
    )
    report = _run(runner, evaluate, request, log)
    model = models / safe_name(test_slide) / "default"
    target = [s for s in slides if s.slide_id == test_slide]
    predicted = _run(
        runner, predict, PredictRequest(model, target, embeddings, device=config.train.device), log
    )
    prediction = predicted.predictions[test_slide]

    files = {"model": model, "predictions": write_h5ad(prediction, slide_file(out_dir, test_slide, ".h5ad"))}
    genes_shown = best_genes(prediction, n_figures, by="validation_pcc")
    for gene in genes_shown:
        files[f"figure {gene}"] = render_gene(
            prediction, gene, slide_file(out_dir, f"{test_slide}_{gene}", ".png")
        )
    files["report"] = out_dir / "report.md"
    return DemoResult(slides, embeddings, test_slide, prediction, report, files)


def _run(runner: Runner, flow, request, log: Callable[[str], None]):
    """Run a flow, logging its warnings and each method's score on the held-out section as they come."""

    def scores(progress: Progress) -> None:
        if progress.warning:
            log(f"warning: {progress.warning}")
        if progress.stage == "evaluate":
            log(f"  {progress.text}")

    return run_to_end(runner.run(flow, request), scores)


def _inputs(cohort: str | Path | None, test_slide: str | None) -> tuple[list[Slide], str, GeneChoice]:
    """The demo's slides (the HER2ST sections when no cohort is given), the held-out slide and the
    genes: the panel beside the cohort table, else the top 300 HVGs."""
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
    genes = GeneChoice.from_file(panel_file) if panel_file.is_file() else GeneChoice(n_hvg=300)
    return slides, test_slide, genes
