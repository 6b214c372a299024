"""Regenerate the user-guide screenshots on the real HER2ST sections.

    xvfb-run -a -s "-screen 0 1920x1200x24" python docs/make_screenshots.py [--epochs 200] [--out FOLDER]

Opens napari with the seven dock widgets, opens C2–C6, embeds them (offline encoder, cached), trains on
C2–C5 and predicts C6, shows a gene, then saves the window, the canvas and each widget under
docs/images/; then the predicted map faded where uncertain (canvas-confidence.png) with a spot picked
for the Why widget; then C6's domains (7, scored against the shared labels) with the markers of the
largest and the example gene sets (canvas-domains.png, widget-domains.png). It drives the widgets the way a user does (their public methods; the pick is what
a click on the spot does).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_spahgc._qt._common import session_for
from napari_spahgc._qt.genes import FADED
from napari_spahgc._qt.viewer import WIDGETS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def wait(panel) -> None:
    app = QApplication.instance()
    while panel.running:  # let the worker have the CPU: poll, do not spin
        app.processEvents()
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default=str(ROOT / "examples" / "her2st_cohort.csv"))
    parser.add_argument("--target", default="C6")
    parser.add_argument("--gene", default=None, help="gene to show (default: best by validation PCC)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default: docs/images)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1900, 1150)
    widgets = {name.lower(): cls(viewer) for name, cls in WIDGETS.items()}
    docks = {
        name: viewer.window.add_dock_widget(w, name=name.title(), area="right") for name, w in widgets.items()
    }
    window = viewer.window._qt_window
    for name in ("embed", "predict", "export", "why", "domains"):
        window.tabifyDockWidget(docks["slide"], docks[name])
    window.resizeDocks([docks["slide"], docks["genes"]], [380, 700], Qt.Orientation.Vertical)
    session = session_for(viewer)

    widgets["slide"].source.set_text(args.cohort)
    widgets["slide"].open(args.cohort)
    wait(widgets["slide"].panel)
    widgets["slide"].slides.setCurrentText(args.target)
    widgets["embed"].run()
    wait(widgets["embed"].panel)
    widgets["predict"].genes.set_text(str(ROOT.parent / "shared/data/her2st/her2st_785_genes.txt"))
    widgets["predict"].epochs.setValue(args.epochs)
    widgets["predict"].run()
    wait(widgets["predict"].panel)
    if args.gene:
        session.set_gene(args.gene)
    widgets["genes"].filter.setText("")
    docks["predict"].raise_()
    QApplication.processEvents()

    viewer.screenshot(str(out / "canvas.png"), canvas_only=True, flash=False)
    viewer.screenshot(str(out / "window.png"), canvas_only=False, flash=False)
    for name, widget in widgets.items():
        docks[name].raise_()
        QApplication.processEvents()
        widget.grab().save(str(out / f"widget-{name}.png"))
    widgets["genes"].show_mode.setCurrentText(FADED)
    prediction = session.predictions[session.current]
    session.set_spot(str(prediction.obs_names[int(prediction.obs["uncertainty"].argmin())]))
    docks["why"].raise_()
    QApplication.processEvents()
    viewer.screenshot(str(out / "canvas-confidence.png"), canvas_only=True, flash=False)
    widgets["why"].grab().save(str(out / "widget-why.png"))
    domains = widgets["domains"]
    domains.n_domains.setValue(7)
    domains.labels.set_text(
        str(ROOT.parent / f"shared/data/her2st/labels/{args.target}-cluster-annotation.tsv.gz")
    )
    domains.gene_sets.set_text(str(ROOT / "examples" / "marker_sets.gmt"))
    domains.find.run_button.click()
    wait(domains.find)
    domains.legend.selectRow(0)
    wait(domains.compare)
    docks["domains"].raise_()
    QApplication.processEvents()
    viewer.screenshot(str(out / "canvas-domains.png"), canvas_only=True, flash=False)
    domains.grab().save(str(out / "widget-domains.png"))
    print(f"screenshots in {out} (gene {session.gene}, slide {session.current}, spot {session.spot})")
    viewer.close()


if __name__ == "__main__":
    main()
