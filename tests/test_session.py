"""The widgets' shared state (session.py, Qt-free): slides, the slide on show, embeddings of one
encoder, predictions and the gene on show, each change announced by a signal."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_spahgc import Embeddings, InputError, Slide
from napari_spahgc.view.session import Session, gene_scores


def _slide(slide_id: str, n: int = 3) -> Slide:
    return Slide(slide_id, pd.Index([f"{slide_id}-{i}" for i in range(n)]), np.zeros((n, 2)))


def _prediction(scores: dict[str, float]) -> ad.AnnData:
    var = pd.DataFrame({"validation_pcc": list(scores.values())}, index=list(scores))
    return ad.AnnData(np.zeros((3, len(scores)), np.float32), var=var)


@pytest.fixture
def events():
    """A session and what its signals announced."""
    session, seen = Session(), []
    session.slides_changed.connect(lambda: seen.append("slides"))
    session.current_changed.connect(lambda slide_id: seen.append(("current", slide_id)))
    session.prediction_changed.connect(lambda slide_id: seen.append(("prediction", slide_id)))
    session.gene_changed.connect(lambda gene: seen.append(("gene", gene)))
    return session, seen


def test_slides_and_the_slide_on_show(events):
    session, seen = events
    with pytest.raises(InputError, match="no slide is loaded"):
        session.require_current()
    session.add_slides([_slide("A"), _slide("B")])
    assert seen == ["slides", ("current", "A")] and session.require_current().slide_id == "A"
    session.set_current("B")
    session.add_slides([_slide("C")])  # B stays on show
    assert session.current == "B" and list(session.slides) == ["A", "B", "C"]
    with pytest.raises(InputError, match="no slide 'Z' is loaded"):
        session.set_current("Z")
    session.set_pixel_size("A", 0.5)
    assert session.slides["A"].pixel_size_um == 0.5
    assert session.slides["A"].pixel_size_source == "entered by the user"
    with pytest.raises(InputError, match=r"pixel size 0\.0001 µm/px \(entered for slide 'A'\) is outside"):
        session.set_pixel_size("A", 1e-4)
    assert session.slides["A"].pixel_size_um == 0.5  # unchanged


def test_what_was_derived_from_a_slide_goes_when_it_is_replaced_or_rescaled(events):
    session, _ = events
    session.add_slides([_slide("A"), _slide("B")])
    lite0 = {"name": "efficientnet-lite0", "weights_checksum": "abc"}
    session.set_embeddings(Embeddings(lite0, arrays={"A": np.ones((3, 4)), "B": np.ones((3, 4))}))
    session.set_prediction("A", _prediction({"G1": 0.2, "G2": 0.7}))
    session.add_slides([_slide("A", n=4)])  # A again, from another file
    assert session.missing_embeddings(["A", "B"]) == ["A"] and "A" not in session.predictions
    session.set_pixel_size("B", 0.4)  # embeddings were made at another scale
    assert session.missing_embeddings(["A", "B"]) == ["A", "B"]
    session.set_embeddings(Embeddings(lite0, arrays={"A": np.ones((4, 4))}))
    assert session.missing_embeddings(["A", "B"]) == ["B"]  # the same encoder adds its slides
    session.set_embeddings(Embeddings(lite0, arrays={"B": np.ones((3, 4))}, modes={"B": "dense"}))
    assert list(session.embeddings) == ["B"]  # the other mode replaces every earlier embedding
    session.set_embeddings(Embeddings(lite0, arrays={"A": np.ones((4, 4))}, modes={"A": "dense"}))
    assert sorted(session.embeddings) == ["A", "B"]
    session.set_embeddings(Embeddings({**lite0, "weights_checksum": "other"}, arrays={"B": np.ones((3, 4))}))
    assert list(session.embeddings) == ["B"]  # other weights replace every earlier embedding


def test_a_prediction_shows_its_best_gene_unless_the_gene_on_show_is_in_it(events):
    session, seen = events
    session.add_slides([_slide("A"), _slide("B")])
    seen.clear()
    first = _prediction({"G1": 0.2, "G2": 0.7, "G3": float("nan")})
    session.set_prediction("A", first)
    assert seen == [("prediction", "A"), ("gene", "G2")] and session.gene == "G2"
    session.set_gene("G1")
    session.set_prediction("B", _prediction({"G1": 0.1, "G4": 0.9}))
    assert session.gene == "G1"  # the gene on show is kept while the new prediction has it
    session.set_prediction("A", _prediction({"G4": 0.3, "G5": 0.6}))
    assert session.gene == "G5"
    assert gene_scores(first, "validation_pcc")["G2"] == pytest.approx(0.7)
    assert gene_scores(first, "pcc") == {}
