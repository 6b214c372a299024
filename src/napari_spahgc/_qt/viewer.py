"""A viewer with every widget docked and a finished demo run loaded (``spahgc demo`` ends here)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import napari
from npe2 import PluginManifest
from npe2.manifest.utils import import_python_name

from napari_spahgc._qt._common import SessionWidget, session_for

if TYPE_CHECKING:
    from napari_spahgc.demo import DemoResult

#: The plugin manifest (``pyproject.toml``'s ``napari.manifest`` entry point names this file).
MANIFEST = Path(__file__).resolve().parent.parent / "napari.yaml"


def manifest_widgets(manifest: Path = MANIFEST) -> dict[str, type[SessionWidget]]:
    """Display name → widget class of the manifest's widget contributions, in manifest order."""
    contributions = PluginManifest.from_file(manifest).contributions
    python_names = {command.id: command.python_name for command in contributions.commands or ()}
    return {
        widget.display_name: import_python_name(python_names[widget.command])
        for widget in contributions.widgets or ()
    }


#: Every widget of the plugin, as napari's Plugins menu lists them: display name → class.
WIDGETS = manifest_widgets()


def open_in_viewer(result: DemoResult, viewer: napari.Viewer | None = None) -> napari.Viewer:
    """``viewer`` (a new one by default) with every widget docked and the demo's slides,
    embeddings and held-out prediction loaded, the best-validated gene on show; the Predict widget's
    model folder is the demo's model."""
    viewer = viewer if viewer is not None else napari.Viewer()
    widgets = {name: cls(viewer) for name, cls in WIDGETS.items()}
    for name, widget in widgets.items():
        viewer.window.add_dock_widget(widget, name=name)
    session = session_for(viewer)
    session.add_slides(result.slides)
    session.set_current(result.test_slide)
    session.set_embeddings(result.embeddings)
    widgets["Predict"].model_dir.set_text(str(result.files["model"]))
    session.set_prediction(result.test_slide, result.prediction)
    return viewer
