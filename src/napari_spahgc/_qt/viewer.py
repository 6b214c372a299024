"""A viewer with every widget docked and a finished demo run loaded (``spahgc demo`` ends here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import napari

from ._common import session_for
from .embed import EmbedWidget
from .export import ExportWidget
from .genes import GenesWidget
from .predict import PredictWidget
from .slide import SlideWidget

if TYPE_CHECKING:
    from ..demo import DemoResult

WIDGETS = {"Slide": SlideWidget, "Embed": EmbedWidget, "Predict": PredictWidget, "Genes": GenesWidget,
           "Export": ExportWidget}  # fmt: skip


def open_in_viewer(result: DemoResult, viewer: napari.Viewer | None = None) -> napari.Viewer:
    """``viewer`` (a new one by default) with the five widgets docked and the demo's slides,
    embeddings and held-out prediction loaded, the best-validated gene on show; the Predict widget's
    model folder is the demo's model."""
    viewer = viewer if viewer is not None else napari.Viewer()
    widgets = {name: cls(viewer) for name, cls in WIDGETS.items()}
    for name, widget in widgets.items():
        viewer.window.add_dock_widget(widget, name=name)
    session = session_for(viewer)
    session.add_slides(result.slides)
    session.set_current(result.test_slide)
    session.set_embeddings(result.encoder, result.embeddings)
    widgets["Predict"].model_dir.set_text(str(result.files["model"]))
    session.set_prediction(result.test_slide, result.prediction)
    return viewer
