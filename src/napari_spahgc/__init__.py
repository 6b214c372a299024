"""napari-spahgc: predict spatial gene expression from H&E histology with SpaHGC.

The public API, one flow per stage — each takes one typed request, yields
:class:`Progress` and returns one typed result — with what they need around them::

    import napari_spahgc as ns

    slides = ns.load_cohort("examples/her2st_cohort.csv")
    embedded = ns.run_to_end(ns.embed(ns.EmbedRequest(slides)))
    genes = ns.GeneChoice.from_file("her2st_785_genes.txt")
    trained = ns.run_to_end(ns.train(ns.TrainRequest(slides[:-1], embedded, genes, out="model")))
    predicted = ns.run_to_end(ns.predict(ns.PredictRequest("model", slides[-1:], embedded, out="pred")))
    found = ns.run_to_end(ns.domains(ns.DomainsRequest("pred/C6.h5ad", ns.DomainOptions(n_domains=7))))

A runner (:class:`InProcess`, :class:`WorkerProcess`, :class:`DaskCluster`) runs any flow elsewhere:
``ns.run_to_end(ns.DaskCluster(workers=2).run(ns.embed, request))``. The package import stays light
(napari reads the plugin manifest through it): every name is loaded on first use.
"""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

try:
    __version__ = version("napari-spahgc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_API = {
    # base
    "InputError": "base.errors",
    "Progress": "base.progress",
    "run_to_end": "base.progress",
    # io
    "Slide": "io.slide",
    "SlideImage": "io.slide",
    "CohortEntry": "io.cohort",
    "build_slide": "io.cohort",
    "load_cohort": "io.cohort",
    "read_cohort": "io.cohort",
    "open_slides": "io.cohort",
    "open_image": "io.images",
    "read_spots": "io.spots",
    "read_counts": "io.spots",
    "aggregate_bins": "io.bins",
    "GeneChoice": "io.expression",
    "spot_anndata": "io.export",
    "write_h5ad": "io.export",
    "to_spatialdata": "io.spatialdata",
    "write_spatialdata": "io.spatialdata",
    "write_predictions_store": "io.spatialdata",
    "read_store": "io.spatialdata",
    "prediction_interval": "io.intervals",
    # the four stages
    "EmbedRequest": "embed.flow",
    "Embeddings": "embed.flow",
    "embed": "embed.flow",
    "SpaHGCConfig": "model.config",
    "SpaHGCPredictor": "model.predictor",
    "TrainRequest": "train.flow",
    "TrainResult": "train.flow",
    "train": "train.flow",
    "PredictRequest": "predict.flow",
    "PredictResult": "predict.flow",
    "predict": "predict.flow",
    "load_model": "predict.flow",
    "EvaluateRequest": "evaluate.benchmark",
    "evaluate": "evaluate.benchmark",
    # downstream: domains, markers, gene sets
    "DomainOptions": "downstream.domains",
    "DomainsRequest": "downstream.flow",
    "DomainsResult": "downstream.flow",
    "domains": "downstream.flow",
    "Comparison": "downstream.markers",
    "MarkersRequest": "downstream.flow",
    "MarkersResult": "downstream.flow",
    "markers": "downstream.flow",
    "find_domains": "downstream.domains",
    "read_labels": "downstream.labels",
    "read_gene_sets": "downstream.enrichment",
    # runners and figures
    "InProcess": "run.runners",
    "WorkerProcess": "run.runners",
    "DaskCluster": "run.runners",
    "render_gene": "view.figures",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def _flow(name: str) -> property:
    """The stage flow ``name``, always: importing the stage's subpackage of the same name (``train/``,
    ``predict/`` …) sets the package attribute to that module, which would hide the flow from the
    second look-up on. The subpackage stays importable (``from napari_spahgc.train import trainer``)."""

    def get(_package: ModuleType):
        return getattr(import_module(f".{_API[name]}", __name__), name)

    def keep_the_flow(_package: ModuleType, value: object) -> None:
        if not isinstance(value, ModuleType):  # the import system records a subpackage: ignored
            raise AttributeError(f"{__name__}.{name} is the {name} flow; it cannot be replaced")

    return property(get, keep_the_flow)


class _Package(ModuleType):
    """This package, with its stage flows bound to their names (:func:`_flow`)."""


for _name in ("embed", "train", "predict", "evaluate"):
    setattr(_Package, _name, _flow(_name))
sys.modules[__name__].__class__ = _Package
