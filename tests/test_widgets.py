"""The dock widgets in a real napari viewer (Xvfb, show=True) on real HER2ST sections."""

from __future__ import annotations

import dataclasses
import json

import anndata as ad
import numpy as np
import pandas as pd
import spatialdata
from napari.layers import Points
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QPushButton

from conftest import HER2ST
from napari_spahgc._qt._common import session_for
from napari_spahgc._qt.viewer import WIDGETS
from napari_spahgc.base.progress import Progress
from napari_spahgc.embed.flow import Embeddings
from napari_spahgc.io.cohort import read_cohort
from napari_spahgc.io.slide import Slide
from napari_spahgc.predict.flow import NO_INTERVALS

PLUGIN = "napari-spahgc"
LONG = 300_000  # ms: generous for 2 busy cores


def _cohort(her2st_cohort, tmp_path, sections) -> str:
    """A cohort table of some HER2ST sections, absolute paths."""
    rows = [
        {"slide_id": e.slide_id, "image": e.image, "spots": e.spots, "counts": e.counts,
         "pixel_size_um": e.pixel_size_um, "patient": e.patient}
        for e in read_cohort(her2st_cohort) if e.slide_id in sections
    ]  # fmt: skip
    path = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _finish(qtbot, panel) -> None:
    qtbot.waitUntil(lambda: not panel.running, timeout=LONG)


def _widgets(viewer) -> dict:
    widgets = {name: cls(viewer) for name, cls in WIDGETS.items()}
    for name, widget in widgets.items():
        viewer.window.add_dock_widget(widget, name=name)
    return widgets


def test_each_widget_docks_from_the_manifest(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    for name in WIDGETS:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert isinstance(widget, WIDGETS[name])
        qtbot.waitUntil(dock.isVisible, timeout=5000)
        assert widget.session is session_for(viewer)  # one shared session per viewer


def test_full_flow_load_embed_train_predict_pick_gene_export(
    make_napari_viewer, qtbot, her2st_cohort, tmp_path, notifications
):
    viewer = make_napari_viewer(show=True)
    w = _widgets(viewer)
    session = session_for(viewer)
    w["Slide"].open(_cohort(her2st_cohort, tmp_path, ("C2", "C3", "C4")))
    _finish(qtbot, w["Slide"].panel)
    assert list(session.slides) == ["C2", "C3", "C4"] and session.current == "C2"
    assert w["Slide"].counts.text().startswith(f"{session.slides['C2'].n_spots} spots")
    assert not w["Slide"].pixel_size.isEnabled()  # known from the cohort table
    w["Slide"].slides.setCurrentText("C4")  # the slide to predict
    assert session.current == "C4" and [layer.visible for layer in viewer.layers if "C4" in layer.name] == [
        True,
        True,
    ]
    assert sorted(w["Predict"].reference_ids()) == ["C2", "C3"]

    w["Embed"].batch_size.setValue(32)  # the run's shared cache: test_viewer_first may have filled it
    w["Embed"].mode.setCurrentText("per-spot")  # quick on legacy ST's few spots (dense: below)
    w["Embed"].run()
    _finish(qtbot, w["Embed"].panel)
    assert (
        set(session.embeddings) == {"C2", "C3", "C4"}
        and session.embeddings.info["name"] == "efficientnet-lite0"
    )
    assert w["Embed"].panel.bar.value() == sum(s.n_spots for s in session.slides.values())

    w["Predict"].epochs.setValue(4)
    w["Predict"].genes.set_text(str(HER2ST / "her2st_785_genes.txt"))
    w["Predict"].save_to.set_text(str(tmp_path / "model"))
    w["Predict"].run()
    _finish(qtbot, w["Predict"].panel)
    # two reference slides: one model, no held-out slide to calibrate intervals on; said once
    assert [str(n.message) for n in notifications] == [f"Predicting: {NO_INTERVALS}"]
    prediction = session.predictions["C4"]
    assert prediction.n_vars == 785 and "measured" in prediction.layers
    assert (tmp_path / "model" / "config.json").is_file()
    spots = [layer for layer in viewer.layers if isinstance(layer, Points) and layer.visible]
    assert sorted(layer.name.rsplit(" ", 1)[1] for layer in spots) == ["measured", "predicted"]
    assert w["Genes"].table.rowCount() == 785

    w["Genes"].filter.setText("krt")
    shown = [w["Genes"].table.item(r, 0).text() for r in range(785) if not w["Genes"].table.isRowHidden(r)]
    assert "KRT8" in shown and all("KRT" in g for g in shown)
    predicted = next(layer for layer in spots if layer.name.endswith("predicted"))
    before = predicted.face_color.copy()
    row = w["Genes"].table.findItems("KRT8", Qt.MatchFlag.MatchExactly)[0].row()
    w["Genes"].table.selectRow(row)
    assert session.gene == "KRT8" and predicted.name == "C4 KRT8 predicted"
    assert not np.allclose(before, predicted.face_color)  # the colours follow the gene
    values = prediction[:, "KRT8"].X.ravel()
    assert np.corrcoef(predicted.face_color[:, 0], values)[0, 1] ** 2 > 0.5  # and follow its values
    measured = next(layer for layer in spots if layer.name.endswith("measured"))
    assert predicted.face_contrast_limits == measured.face_contrast_limits  # one shared scale
    assert "KRT8" in w["Genes"].title.text()
    w["Genes"].colormap.setCurrentText("magma")
    assert predicted.face_colormap.name == "magma" and measured.face_colormap.name == "magma"
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].max() > 0 and shot[..., :3].std() > 5  # not black, not uniform

    w["Predict"].load_mode.setChecked(True)  # the saved model folder predicts the same, deterministically
    w["Predict"].model_dir.set_text(str(tmp_path / "model"))
    w["Predict"].run()
    _finish(qtbot, w["Predict"].panel)
    np.testing.assert_allclose(session.predictions["C4"].X, prediction.X, rtol=1e-5, atol=1e-5)
    prediction = session.predictions["C4"]
    assert (
        session.gene == "KRT8"
        and [lay.name for lay in viewer.layers if lay.visible][-1] == "C4 KRT8 measured"
    )

    w["Predict"].train_mode.setChecked(True)  # the paper's configuration, from the widget
    w["Predict"].preset.setCurrentText("paper")
    w["Predict"].epochs.setValue(2)
    w["Predict"].save_to.set_text(str(tmp_path / "paper"))
    w["Predict"].run()
    _finish(qtbot, w["Predict"].panel)
    paper = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert paper["model_options"]["members"] == 1 and paper["train_options"]["hold_out"] is False
    assert paper["train_options"]["lr"] == 1e-4 and paper["validation"] == {"epochs_run": 2}
    w["Predict"].load_mode.setChecked(True)
    w["Predict"].model_dir.set_text(str(tmp_path / "model"))
    w["Predict"].run()
    _finish(qtbot, w["Predict"].panel)
    prediction = session.predictions["C4"]

    h5ad = w["Export"].export_predictions(tmp_path / "out" / "C4.h5ad")
    back = ad.read_h5ad(h5ad)
    np.testing.assert_allclose(back.X, prediction.X)
    assert list(back.obs_names) == list(session.slides["C4"].spot_ids) and "measured" in back.layers
    store = w["Export"].export_predictions(tmp_path / "out" / "C4.zarr")  # a SpatialData store, with the H&E
    stored = spatialdata.read_zarr(store)
    np.testing.assert_allclose(stored.tables["table"].X, prediction.X)
    assert list(stored.images) == ["C4_image"] and list(stored.shapes) == ["C4_spots"]
    png = w["Export"].export_png(tmp_path / "out" / "view.png")
    assert png.stat().st_size > 10_000


def test_cancel_during_embedding_then_a_rerun_completes_from_the_cache(
    make_napari_viewer, qtbot, her2st_cohort, tmp_path
):
    viewer = make_napari_viewer(show=True)
    w = _widgets(viewer)
    session = session_for(viewer)
    w["Slide"].open(_cohort(her2st_cohort, tmp_path, ("C2", "C3")))
    _finish(qtbot, w["Slide"].panel)
    cache = tmp_path / "embeddings"
    w["Embed"].cache.set_text(str(cache))
    w["Embed"].batch_size.setValue(8)
    w["Embed"].mode.setCurrentText("per-spot")  # quick on legacy ST's few spots
    n_c2 = session.slides["C2"].n_spots
    worker = w["Embed"].run()
    worker.yielded.connect(lambda step: step.done > n_c2 and w["Embed"].panel.cancel())  # C3 part-way
    with qtbot.waitSignal(worker.aborted, timeout=LONG):
        pass
    _finish(qtbot, w["Embed"].panel)
    assert session.embeddings == {} and "cancelled" in w["Embed"].panel.status.text()
    (finished,) = cache.iterdir()  # C2 only: the slide in progress left nothing behind
    stamp = finished.stat().st_mtime_ns
    w["Embed"].run()
    _finish(qtbot, w["Embed"].panel)
    assert set(session.embeddings) == {"C2", "C3"} and len(list(cache.iterdir())) == 2
    assert finished.stat().st_mtime_ns == stamp  # read from the cache, not recomputed


def test_bad_file_and_bad_weights_give_notifications_and_the_viewer_survives(
    make_napari_viewer, qtbot, her2st_cohort, tmp_path, notifications
):
    viewer = make_napari_viewer(show=True)
    w = _widgets(viewer)
    bad = tmp_path / "broken.csv"
    bad.write_text("slide_id,image,spots,counts,pixel_size_um,patient\nA,nope.jpg,nope.tsv,,,\n")
    w["Slide"].open(bad)
    _finish(qtbot, w["Slide"].panel)
    assert any("nope" in str(n.message) for n in notifications)
    w["Slide"].open(_cohort(her2st_cohort, tmp_path, ("C2",)))
    _finish(qtbot, w["Slide"].panel)
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"not a checkpoint")
    w["Embed"].encoder.setCurrentText("uni")
    w["Embed"].weights.set_text(str(weights))
    w["Embed"].run()
    _finish(qtbot, w["Embed"].panel)
    assert any(
        "pytorch_model.bin" in str(n.message) and "cannot read weights" in str(n.message)
        for n in notifications
    )
    w["Predict"].panel.run_button.click()  # nothing embedded: a message, no worker
    assert not w["Predict"].panel.running
    assert any(
        "Predict failed" in str(n.message) and "no embeddings" in str(n.message) for n in notifications
    )
    viewer.add_points(np.array([[1.0, 2.0]]))  # still alive
    assert len(viewer.layers) == 3


def test_image_and_spot_table_without_pixel_size_take_the_users_value(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(tmp_path / "he.png")
    pd.DataFrame({"spot_id": [f"s{i}" for i in range(12)], "x": np.arange(12) * 50.0 + 100,
                  "y": np.full(12, 300.0)}).to_csv(tmp_path / "spots.csv", index=False)  # fmt: skip
    viewer = make_napari_viewer(show=True)
    w = _widgets(viewer)
    session = session_for(viewer)
    w["Slide"].open(tmp_path / "spots.csv", tmp_path / "he.png")
    _finish(qtbot, w["Slide"].panel)
    assert list(session.slides) == ["spots"] and session.current_slide.pixel_size_um is None
    assert w["Slide"].pixel_size.isEnabled() and "unknown" in w["Slide"].pixel_source.text()
    w["Slide"].pixel_size.setValue(0.5)
    w["Slide"].apply_pixel.click()
    assert session.current_slide.pixel_size_um == 0.5 and not w["Slide"].pixel_size.isEnabled()
    assert w["Slide"].pixel_source.text() == "entered by the user"


def test_a_crashed_worker_process_is_a_notification_and_the_viewer_lives_on(
    make_napari_viewer, qtbot, notifications
):
    import child_tasks
    from napari_spahgc.run.worker import run_in_child

    viewer = make_napari_viewer(show=True)
    panel = _widgets(viewer)["Embed"].panel
    results = []

    def work(cancel):
        return (yield from run_in_child(child_tasks.crash, cancel=cancel))

    panel.start(work, "Crash test", results.append)
    _finish(qtbot, panel)
    assert results == [] and "killed by SIGSEGV" in panel.status.text()
    assert any("Crash test failed" in str(n.message) and "SIGSEGV" in str(n.message) for n in notifications)
    viewer.add_points(np.array([[1.0, 2.0]]))
    assert viewer.screenshot(canvas_only=True, flash=False)[..., :3].std() > 0


def _two_slides_embedded(session) -> None:
    """A reference slide with counts and a slide to predict, both embedded (no files behind them)."""
    slides = []
    for slide_id, counted in (("ref", True), ("target", False)):
        ids = pd.Index([f"{slide_id}{i}" for i in range(4)])
        counts = ad.AnnData(np.ones((4, 2), np.float32), obs=pd.DataFrame(index=ids)) if counted else None
        slides.append(Slide(slide_id, ids, np.arange(8.0).reshape(4, 2) * 100, expression=counts))
    session.add_slides(slides)
    session.set_current("target")
    session.set_embeddings(
        Embeddings({"name": "test"}, arrays={s.slide_id: np.zeros((4, 8), np.float32) for s in slides})
    )


def test_bad_fields_give_notifications_not_exceptions(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer(show=True)
    w = _widgets(viewer)
    _two_slides_embedded(session_for(viewer))
    panel_file = tmp_path / "genes.txt"
    panel_file.write_bytes(b"\xff\xfe\x00garbage")  # not text: read in the Predict button's handler
    w["Predict"].genes.set_text(str(panel_file))
    w["Predict"].panel.run_button.click()
    assert not w["Predict"].panel.running
    assert any(str(n.message).startswith("Predict failed: ") for n in notifications)
    w["Predict"].genes.set_text("")
    (tmp_path / "taken").write_text("a file")  # outputs are checked before any work starts
    w["Predict"].save_to.set_text(str(tmp_path / "taken"))
    w["Predict"].panel.run_button.click()
    assert not w["Predict"].panel.running
    assert any(f"{tmp_path / 'taken'}: is a file, not a folder" in str(n.message) for n in notifications)
    w["Embed"].cache.set_text(str(tmp_path / "taken"))
    w["Embed"].panel.run_button.click()
    assert not w["Embed"].panel.running
    assert any(str(n.message).startswith(f"Embed slides failed: {tmp_path / 'taken'}") for n in notifications)
    w["Export"].png.set_text(".")  # no file name
    buttons = {b.text(): b for b in w["Export"].findChildren(QPushButton)}
    buttons["Save PNG of the view"].click()
    assert any(str(n.message).startswith("Export failed: ValueError: ") for n in notifications)
    w["Slide"].aggregate.click()  # four spots on a diagonal are not Visium HD bins
    _finish(qtbot, w["Slide"].panel)
    assert any(
        str(n.message).startswith("Aggregating bins failed: slide 'target' is not bins on one square grid")
        for n in notifications
    )
    assert set(session_for(viewer).slides) == {"ref", "target"}
    viewer.add_points(np.array([[1.0, 2.0]]))  # still alive
    assert viewer.layers[-1].name == "Points"


def test_failing_work_results_and_handlers_of_a_run_panel_are_notifications(
    make_napari_viewer, qtbot, notifications
):
    panel = _widgets(make_napari_viewer(show=True))["Embed"].panel

    def work(cancel):  # napari's workers would turn a RuntimeError into a mere warning
        yield Progress(0, 1, "")
        raise RuntimeError("the work broke\nsecond line")

    panel.start(work, "Broken work", print)
    _finish(qtbot, panel)
    assert panel.status.text() == "Broken work failed: RuntimeError: the work broke"

    def no_work(cancel):
        return (yield from ())

    panel.start(no_work, "Broken result", lambda result: result.missing)
    _finish(qtbot, panel)
    assert panel.status.text().startswith("Broken result failed: AttributeError: ")
    messages = [str(n.message) for n in notifications]
    assert "Broken work failed: RuntimeError: the work broke" in messages
    assert any(m.startswith("Broken result failed: AttributeError: ") for m in messages)


def test_a_warning_of_the_work_is_a_notification(make_napari_viewer, qtbot, notifications):
    """What a flow warns about before it starts (a long per-spot embedding) reaches the user."""
    from napari.utils.notifications import NotificationSeverity

    panel = _widgets(make_napari_viewer(show=True))["Embed"].panel

    def work(cancel):
        yield Progress(0, 2, "loading", "embed", warning="embedding 200,000 spots per spot")
        yield Progress(2, 2, "done", "embed")
        return None

    panel.start(work, "Embedding", lambda result: None)
    _finish(qtbot, panel)
    (shown,) = [n for n in notifications if "200,000" in str(n.message)]
    assert str(shown.message) == "Embedding: embedding 200,000 spots per spot"
    assert shown.severity == NotificationSeverity.WARNING and panel.status.text() == "Embedding: done"


def test_embed_mode_combo_defaults_to_dense_and_an_unreachable_scheduler_is_a_notification(
    make_napari_viewer, qtbot, notifications
):
    viewer = make_napari_viewer(show=True)
    embed = _widgets(viewer)["Embed"]
    session = session_for(viewer)
    _two_slides_embedded(session)
    for slide_id in ("ref", "target"):
        session.set_pixel_size(slide_id, 0.5)
    box = embed.mode
    choices = [(box.itemText(i), box.itemData(i)) for i in range(box.count())]
    assert choices == [("dense", "dense"), ("per-spot", "spot")]
    assert box.currentData() == "dense" and "tissue tile" in box.toolTip()
    box.setCurrentText("per-spot")  # every mode runs on a cluster: the tasks run the same flow
    assert "grows with the spots" in box.toolTip()
    embed.scheduler.setText("tcp://127.0.0.1:1")  # nothing listens there
    embed.panel.run_button.click()
    _finish(qtbot, embed.panel)
    assert not embed.panel.running
    assert any(
        str(n.message).startswith("Embedding failed: cannot reach the Dask scheduler at tcp://127.0.0.1:1")
        for n in notifications
    ), [str(n.message) for n in notifications]


def test_the_chosen_embed_mode_reaches_the_embeddings_and_the_cache(
    make_napari_viewer, qtbot, her2st_cohort, tmp_path, notifications
):
    from napari_spahgc.embed.cache import load_embeddings

    c2 = read_cohort(her2st_cohort)[0].load(with_expression=False)
    nine = np.argsort(np.linalg.norm(c2.centers_px - c2.centers_px[50], axis=1))[:9]  # a few tiles
    block = dataclasses.replace(c2, spot_ids=c2.spot_ids[nine], centers_px=c2.centers_px[nine])
    viewer = make_napari_viewer(show=True)
    embed = _widgets(viewer)["Embed"]
    session = session_for(viewer)
    session.add_slides([block])
    embed.cache.set_text(str(tmp_path / "embeddings"))
    for label, mode in (("dense", "dense"), ("per-spot", "spot")):
        embed.mode.setCurrentText(label)
        embed.run()
        _finish(qtbot, embed.panel)
        assert not notifications, [str(n.message) for n in notifications]
        assert session.embeddings.info["embedding_mode"] == mode
        assert session.embeddings[c2.slide_id].shape == (9, 1280)
    keys = [load_embeddings(path)[2]["mode"] for path in (tmp_path / "embeddings").iterdir()]
    assert sorted(keys) == ["dense", "spot"]  # cached apart
