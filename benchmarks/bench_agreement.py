"""Agreement of 8 µm bins with the legacy 100 µm spot they tile (issue 15), on the real HER2ST sections.

    python benchmarks/bench_agreement.py --test-slide C2 --out agreement.json
    python benchmarks/bench_agreement.py --all --out agreement.json   # every section held out in turn

Per fold (one section of C2–C6 held out): one SpaHGC (default preset, the 785-gene panel) is trained on
the other four sections' *dense* embeddings (EfficientNet-Lite0, ``ns.EmbedRequest(mode="dense")``); the
held-out section never enters training. Spot level: the model predicts the section's real spots from
their dense embeddings. Bin level: the same image gets a slide of 8 µm bins, a square 8 µm grid (origin
at pixel 0) keeping every bin whose centre lies within 50 µm of a real spot centre; the same model
predicts the bins (dense embeddings) and each spot's bins are averaged (a row-normalised sparse
assignment matrix). Both are scored against the spot's measured log1p-CPM with the project's
``base.metrics.score`` (mean per-gene PCC, a gene constant in the prediction scoring 0; RMSE). Each
step is the package's public flow (``import napari_spahgc as ns``: embed, train, predict).
Target: PCC(bins averaged) ≥ 0.85 × PCC(spot level).

Predictions are log1p-CPM. ``log`` averages them as they are (the headline); ``expm1`` averages in CPM
space and takes log1p again. A dense embedding averages the encoder's feature map over a 112 µm field
around its centre whatever the spot size, so a bin is embedded from the 112 µm around it.

Data: Andersson et al., Nature Communications 12, 6012 (2021) (HER2ST, almaan/her2st).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

import napari_spahgc as ns
from napari_spahgc.io.slide import Slide

REPO = Path(__file__).resolve().parents[1]
HER2ST = REPO.parent / "shared" / "data" / "her2st"
SECTIONS = ("C2", "C3", "C4", "C5", "C6")
PANEL = "her2st_785_genes.txt"
BIN_UM, RADIUS_UM, TARGET_RATIO = 8.0, 50.0, 0.85


def bin_grid(
    centres_px: np.ndarray, pixel_size_um: float, pitch_um: float = BIN_UM, radius_um: float = RADIUS_UM
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres (m, 2) px, grid indices (m, 2), owning spot (m,)) of the ``pitch_um`` grid points
    within ``radius_um`` of a spot centre; bin (i, j) is centred at (i, j) · pitch px. The disks must not
    overlap (legacy ST: 100 µm spots on a 200 µm pitch), so each bin has one spot: its nearest."""
    pitch, radius = pitch_um / pixel_size_um, radius_um / pixel_size_um
    tree = cKDTree(centres_px)
    if len(centres_px) > 1 and tree.query(centres_px, k=2)[0][:, 1].min() < 2 * radius:
        raise ValueError(f"spot disks of {radius_um:g} µm radius overlap")
    reach = int(np.ceil(radius / pitch)) + 1
    steps = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(steps, steps), axis=-1).reshape(-1, 2)
    base = np.round(centres_px / pitch).astype(np.int64)
    cells = np.unique((base[:, None, :] + offsets[None]).reshape(-1, 2), axis=0)
    xy = cells * pitch
    distance, owner = tree.query(xy, distance_upper_bound=radius)
    keep = distance <= radius
    return xy[keep], cells[keep], owner[keep]


def assignment_matrix(owner: np.ndarray, n_spots: int) -> sparse.csr_matrix:
    """(n_spots, n_bins) CSR: row s holds 1 / (bins of s) at the bins of spot s (a mean per row)."""
    counts = np.bincount(owner, minlength=n_spots).astype(np.float64)
    weights = 1.0 / np.maximum(counts[owner], 1.0)
    return sparse.csr_matrix((weights, (owner, np.arange(len(owner)))), shape=(n_spots, len(owner)))


def bin_slide(slide: Slide, pitch_um: float = BIN_UM, radius_um: float = RADIUS_UM) -> tuple[Slide, Any]:
    """A slide of ``pitch_um`` bins over ``slide``'s spot disks (same image and pixel size, no counts)
    and the (n_spots, n_bins) averaging matrix."""
    px = slide.require_pixel_size()
    xy, cells, owner = bin_grid(slide.centers_px, px, pitch_um, radius_um)
    ids = "bin_" + pd.Series(cells[:, 0]).astype(str) + "_" + pd.Series(cells[:, 1]).astype(str)
    bins = Slide(
        f"{slide.slide_id}_bins{pitch_um:g}um", pd.Index(ids), xy, image=slide.image, pixel_size_um=px,
        pixel_size_source=slide.pixel_size_source, patient=slide.patient, spot_diameter_px=pitch_um / px,
    )  # fmt: skip
    return bins, assignment_matrix(owner, slide.n_spots)


def average_bins(assignment: Any, predictions: np.ndarray) -> dict[str, np.ndarray]:
    """Each spot's mean of its bins' predictions: of the log1p-CPM as it is (``log``), and of the CPM
    (``expm1``, then log1p)."""
    values = np.asarray(predictions, dtype=np.float64)
    return {
        "log": np.asarray(assignment @ values, dtype=np.float32),
        "expm1": np.log1p(assignment @ np.expm1(values)).astype(np.float32),
    }


def timed(timing: dict[str, float], name: str, run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``run(*args, **kwargs)``, its wall seconds recorded in ``timing[name]``."""
    started = time.perf_counter()
    result = run(*args, **kwargs)
    timing[name] = round(time.perf_counter() - started, 2)
    return result


def embed_dense(slides: Sequence[Slide], args) -> tuple[ns.Embeddings, dict]:
    """Dense embeddings of ``slides`` through the cache, and {slide id: was it cached?}."""
    request = ns.EmbedRequest(slides, device=args.device, cache=args.cache, mode="dense")
    flow, cached = ns.embed(request), {}
    while True:
        try:
            progress = next(flow)
        except StopIteration as finished:
            embeddings = finished.value
            break
        if "cached" in progress.values:
            cached[progress.values["slide_id"]] = progress.values["cached"]
    if set(embeddings.modes.values()) != {"dense"}:
        raise RuntimeError(f"not dense embeddings: {embeddings.modes}")
    return embeddings, cached


def train(training: Sequence[Slide], embeddings: ns.Embeddings, genes: ns.GeneChoice, args) -> Any:
    """One SpaHGC (default preset) on ``training``, every 25th epoch logged."""
    config = ns.SpaHGCConfig.from_options({"epochs": args.epochs}, seed=args.seed, device=args.device)
    flow = ns.train(ns.TrainRequest(training, embeddings.only([s.slide_id for s in training]), genes, config))
    while True:
        try:
            p = next(flow)
        except StopIteration as finished:
            return finished.value.model
        if p.done % 25 == 0 and p.values.get("validation_pcc") is not None:
            print(f"    {p.text}", flush=True)


def predict(model: Any, slide: Slide, embeddings: ns.Embeddings, device: str) -> Any:
    """The model's log1p-CPM prediction of every spot (or bin) of ``slide`` (an AnnData: X, and the
    measured values of a slide with counts); the flow checks the embeddings are the model's kind."""
    request = ns.PredictRequest(model, [slide], embeddings.only([slide.slide_id]), device=device)
    return ns.run_to_end(ns.predict(request)).predictions[slide.slide_id]


def run_fold(slides: Sequence[Slide], test_id: str, genes: ns.GeneChoice, args) -> dict:
    """Train without ``test_id``, predict its spots and its 8 µm bins, score both against the spots."""
    timing: dict[str, float] = {}
    embeddings, cached = timed(timing, "embed_sections_s", embed_dense, slides, args)
    training = [s for s in slides if s.slide_id != test_id]
    test = next(s for s in slides if s.slide_id == test_id)
    model = timed(timing, "train_s", train, training, embeddings, genes, args)
    spot = timed(timing, "predict_spots_s", predict, model, test, embeddings, args.device)
    bins, assignment = timed(timing, "make_bins_s", bin_slide, test, args.bin_um, args.radius_um)
    bin_embeddings, bins_cached = timed(timing, "embed_bins_s", embed_dense, [bins], args)
    bin_values = timed(timing, "predict_bins_s", predict, model, bins, bin_embeddings, args.device).X
    averaged = timed(timing, "average_s", average_bins, assignment, bin_values)
    record = {
        "test_slide": test_id,
        "training_slides": [s.slide_id for s in training],
        "n_spots": test.n_spots,
        "n_bins": bins.n_spots,
        "bins_per_spot": _spread(np.diff(assignment.indptr)),
        "n_genes": len(model.genes),
        "validation": model.metadata.validation_summary(),
        "smoothing": model.config.graph.smoothing,
        "cached": {**cached, **bins_cached},
        **_scores(_dense(spot.layers["measured"]), spot.X, averaged),
        "embedding_cosine_spot_vs_bin_mean": _cosine(embeddings[test_id], assignment @ bin_embeddings[bins.slide_id]),
        "seconds": timing,
    }  # fmt: skip
    return record


def _scores(truth: np.ndarray, spot: np.ndarray, averaged: dict) -> dict:
    """PCC / RMSE of the spot-level and bins-averaged predictions against the spots' measured log1p-CPM
    (``truth``), their ratios, and how alike they are."""
    from napari_spahgc.base.metrics import score

    spot_score = score(truth, spot)[0]
    record = {"spot": spot_score}
    for name, values in averaged.items():
        record[f"bins_{name}"] = score(truth, values)[0]
        record[f"ratio_{name}"] = record[f"bins_{name}"]["pcc"] / spot_score["pcc"]
    record["prediction_pcc_spot_vs_bins_log"] = score(spot, averaged["log"])[0]["pcc"]
    return record


def _dense(values: Any) -> np.ndarray:
    """A dense array of a (possibly sparse) layer."""
    return values.toarray() if hasattr(values, "toarray") else np.asarray(values)


def _cosine(a: np.ndarray, b: np.ndarray) -> dict:
    """Row-wise cosine similarity of two (n, d) arrays, as mean/min/max."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return _spread(cos)


def _spread(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def summary(folds: list[dict]) -> dict:
    """Mean ± sd over folds of the spot-level and bins-averaged PCC and their ratio."""
    columns = {
        "spot_pcc": [f["spot"]["pcc"] for f in folds],
        "bins_log_pcc": [f["bins_log"]["pcc"] for f in folds],
        "bins_expm1_pcc": [f["bins_expm1"]["pcc"] for f in folds],
        "ratio_log": [f["ratio_log"] for f in folds],
        "ratio_expm1": [f["ratio_expm1"] for f in folds],
        "spot_rmse": [f["spot"]["rmse"] for f in folds],
        "bins_log_rmse": [f["bins_log"]["rmse"] for f in folds],
    }
    out = {name: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
           for name, v in columns.items()}  # fmt: skip
    out["folds_meeting_target"] = int(sum(r >= TARGET_RATIO for r in columns["ratio_log"]))
    return out


def print_fold(f: dict) -> None:
    s, b, e = f["spot"], f["bins_log"], f["bins_expm1"]
    print(
        f"  {f['test_slide']}: spots {f['n_spots']}, bins {f['n_bins']} ({f['bins_per_spot']['mean']:.1f}/spot)\n"
        f"    spot-level      PCC {s['pcc']:.4f}  RMSE {s['rmse']:.4f}\n"
        f"    bins (log avg)  PCC {b['pcc']:.4f}  RMSE {b['rmse']:.4f}  ratio {f['ratio_log']:.3f}\n"
        f"    bins (expm1)    PCC {e['pcc']:.4f}  RMSE {e['rmse']:.4f}  ratio {f['ratio_expm1']:.3f}\n"
        f"    spot vs bins prediction PCC {f['prediction_pcc_spot_vs_bins_log']:.4f}; seconds {f['seconds']}",
        flush=True,
    )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_agreement.json"))
    parser.add_argument("--test-slide", default="C2", choices=SECTIONS)
    parser.add_argument("--all", action="store_true", help="every section held out in turn")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: the user cache)")
    parser.add_argument("--data", type=Path, default=HER2ST, help="the her2st folder")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bin-um", type=float, default=BIN_UM)
    parser.add_argument("--radius-um", type=float, default=RADIUS_UM)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the encoder sets torch's threads from it
    import torch

    from napari_spahgc.io.her2st import her2st_cohort_table

    torch.set_num_threads(args.threads)
    slides = ns.load_cohort(her2st_cohort_table(args.data))
    genes = ns.GeneChoice.from_file(args.data / PANEL)
    encoder = ns.EmbedRequest([], device=args.device).finished().encoder  # name, dim, weights checksum
    result = {"data": "HER2ST C2–C6 (Andersson et al., Nat. Commun. 2021)", "encoder": dict(encoder),
              "mode": "dense", "preset": "default", "epochs": args.epochs, "seed": args.seed,
              "bin_um": args.bin_um, "radius_um": args.radius_um, "target_ratio": TARGET_RATIO,
              "averaging": "log: mean of log1p-CPM predictions; expm1: log1p of the mean CPM",
              "threads": args.threads, "folds": []}  # fmt: skip
    started = time.perf_counter()
    for test_id in SECTIONS if args.all else (args.test_slide,):
        print(f"fold: {test_id} held out", flush=True)
        result["folds"].append(run_fold(slides, test_id, genes, args))
        print_fold(result["folds"][-1])
        result["summary"] = summary(result["folds"])
        result["total_s"] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2), f"\n{result['total_s']} s in all; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
