"""The Domains widget in a real viewer (Xvfb, show=True) on the real HER2ST sections: C6 predicted by
a model trained on C2–C5 (conftest's ``her2st_model``), its domains found and scored against the
shared labels, the spots coloured by domain, a domain picked in the legend → its DE table and the
enrichment of its genes in a GMT; the tables saved, the predictions exported with their domains."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from napari.layers import Points

from conftest import HER2ST, REPO, predicted_c6_viewer
from napari_spahgc._qt._common import session_for

LONG = 300_000  # ms: generous for 2 busy cores


def _finish(qtbot, panel) -> None:
    qtbot.waitUntil(lambda: not panel.running, timeout=LONG)


def test_domains_markers_and_gene_sets_in_a_real_viewer(
    make_napari_viewer, qtbot, her2st_model, tmp_path, notifications
):
    viewer, widgets = predicted_c6_viewer(make_napari_viewer, qtbot, her2st_model, tmp_path, LONG)
    session = session_for(viewer)
    assert not notifications, [str(n.message) for n in notifications]

    domains = widgets["Domains"]
    domains.n_domains.setValue(7)
    domains.labels.set_text(str(HER2ST / "labels" / "C6-cluster-annotation.tsv.gz"))
    domains.find.run_button.click()
    _finish(qtbot, domains.find)
    assert not notifications, [str(n.message) for n in notifications]
    prediction = session.predictions["C6"]
    assert prediction.obs["domain"].dtype == "category" and prediction.obs["domain"].nunique() == 7
    assert "domain_measured" in prediction.obs  # with labels and a measured layer: both scored
    assert "predicted: ARI" in domains.scores.text() and "measured: ARI" in domains.scores.text()
    layer = viewer.layers["C6 domains (predicted)"]
    assert isinstance(layer, Points) and layer.visible
    colours = np.unique(np.round(layer.face_color, 3), axis=0)
    assert len(colours) == 7 and domains.legend.rowCount() == 7
    assert list(layer.features["domain"].astype(str)) == list(prediction.obs["domain"].astype(str))
    sizes = [int(domains.legend.item(r, 2).text()) for r in range(7)]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == prediction.n_obs

    domains.gene_sets.set_text(str(REPO / "examples" / "marker_sets.gmt"))
    domains.min_pcc.setValue(0.1)
    domains.legend.selectRow(0)  # picking a domain finds its markers
    _finish(qtbot, domains.compare)
    assert not notifications, [str(n.message) for n in notifications]
    assert domains.de_table.rowCount() > 10 and domains.set_table.rowCount() >= 2
    tested = domains.tables["de_0_vs_rest"]
    assert (tested["validation_pcc"] >= 0.1).all() and len(tested) < prediction.n_vars
    enriched = set(domains.tables["enrichment_0_vs_rest"]["set"])
    assert enriched <= {"IMMUNE_CELLS", "FIBROBLAST_ECM", "LUMINAL_EPITHELIAL"} and len(enriched) >= 2

    domains.folder.set_text(str(tmp_path / "tables"))
    (tmp_path / "tables").mkdir()
    domains.save_tables()
    saved = pd.read_csv(tmp_path / "tables" / "de_0_vs_rest.csv")
    assert list(saved["gene"]) == list(tested["gene"])
    assert (tmp_path / "tables" / "enrichment_0_vs_rest.csv").is_file()
    widgets["Export"].export_predictions(tmp_path / "c6.h5ad")
    exported = ad.read_h5ad(tmp_path / "c6.h5ad")
    assert list(exported.obs["domain"].astype(str)) == list(prediction.obs["domain"].astype(str))
    assert [str(n.message).split(" ")[0] for n in notifications] == ["saved"]  # an info, no error
    notifications.clear()

    domains.legend.clearSelection()
    wrong = tmp_path / "wrong.csv"
    pd.DataFrame({"spot_id": ["AAAC-1", "AAAG-1"], "label": ["tumour", "stroma"]}).to_csv(wrong, index=False)
    domains.labels.set_text(str(wrong))  # labels of another slide: a notification, nothing changes
    domains.n_domains.setValue(4)
    domains.find.run_button.click()
    _finish(qtbot, domains.find)
    assert any("none of its 2 spots matches the slide's 178 spots" in str(n.message) for n in notifications)
    assert (
        prediction.obs["domain"].nunique() == 7
        and len(viewer.layers["C6 domains (predicted)"].features) == 178
    )
