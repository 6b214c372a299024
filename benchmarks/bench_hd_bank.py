"""Which Visium HD training bank predicts a held-out HD slide as well (issue 35), scored where the
synthetic counts carry signal.

    python benchmarks/bench_hd_bank.py --bins 50000 --work /tmp/scale_work --out hd_bank.json

Training: C2 and C3, ``--bins`` 8 µm bins each (the HD-like slides of ``scale_slides.make_hd``:
HER2ST sections upscaled 2×, counts Poisson from the nearest real spot), one SpaHGC each way (paper
preset, one member, ``--epochs`` epochs at ``--lr``, every bin a target and, on the other slide, a reference), the
offline encoder's dense embeddings. Banks:

- ``exact``: the 8 µm bins, searched exactly (the default below ``ann_min_keys`` distinct keys);
- ``approximate``: the same bins, every CS and RS search through the HNSW index (``ann_min_keys`` 0);
- ``16um``: the training slides' bins aggregated 2 × 2 (``io.bins.aggregate_bins``: counts summed,
  as Space Ranger's 16 µm output) and dense-embedded at their own centres, searched exactly;
- ``16um_approximate``: the same, every search through the HNSW index;
- ``subsample``: a seeded random ``--fraction`` of the 8 µm bins.

Held out: C4's ``--bins`` 8 µm bins, predicted by each model (``ns.predict``, dense embeddings). Scored
with ``base.metrics.score`` (mean per-gene PCC over the 785-gene panel, RMSE) per bin and on squares of
``--squares`` bins a side (8, 32 and 96 µm): a square's measured value is log1p-CPM of its bins' summed counts, its prediction
the log1p of its bins' mean predicted CPM. The synthetic counts of one 8 µm bin are ≈ 120 UMIs over
15,842 genes, so per-bin PCC is near zero for any model; squares of 96 µm (about a real ST spot's
100 µm pitch) hold the signal the counts were drawn from. Each bank's predictions are saved beside the
slides (``hd_bank_BINS_BANK_seedSEED.npy``). Nothing of C4 reaches training or any choice here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_scale import _panel, _slides, spots_of

import napari_spahgc as ns
from napari_spahgc.base.metrics import score
from napari_spahgc.io.bins import aggregate_bins, membership, squares, summed_counts
from napari_spahgc.io.expression import log_cpm
from napari_spahgc.io.slide import Slide

BANKS = ("exact", "approximate", "16um", "16um_approximate", "subsample")


def subsample(slide: Slide, fraction: float, seed: int) -> Slide:
    """A seeded random ``fraction`` of ``slide``'s bins, in their order."""
    rng = np.random.default_rng(seed)
    return spots_of(slide, np.sort(rng.choice(slide.n_spots, round(fraction * slide.n_spots), replace=False)))


def training_slides(bank: str, slides: list[Slide], args) -> list[Slide]:
    if bank.startswith("16um"):
        return [aggregate_bins(s, 2) for s in slides]
    if bank == "subsample":
        return [subsample(s, args.fraction, args.seed) for s in slides]
    return slides


def embed(slides: list[Slide], args) -> ns.Embeddings:
    return ns.run_to_end(
        ns.embed(ns.EmbedRequest(slides, device="cpu", cache=args.work / "cache", mode="dense"))
    )


def train(slides: list[Slide], genes: list[str], bank: str, args):
    options = {"epochs": args.epochs, "lr": args.lr, "members": 1, "hold_out": False}
    options |= {"ann_min_keys": 0} if bank.endswith("approximate") else {}
    config = ns.SpaHGCConfig.from_options(options, preset="paper", seed=args.seed, device="cpu")
    request = ns.TrainRequest(slides, embed(slides, args), ns.GeneChoice(panel=tuple(genes)), config)
    return ns.run_to_end(ns.train(request)).model


def square_scores(test: Slide, predicted: np.ndarray, genes: list[str], factor: int) -> dict:
    """Scores on squares of ``factor`` × ``factor`` bins (``io.bins.squares``): measured = log1p-CPM of
    the summed counts, predicted = log1p of the mean predicted CPM."""
    _, square = squares(test, factor)
    members = membership(square)
    sizes = np.asarray(members.sum(axis=1))
    ids = pd.Index(np.arange(members.shape[0]).astype(str))
    truth = log_cpm(summed_counts(test.expression, members, ids), genes).X
    prediction = np.log1p((members @ np.expm1(predicted.astype(np.float64))) / sizes)
    record, _ = score(truth, prediction)
    return record | {"n_squares": int(members.shape[0]), "bins_per_square": float(sizes.mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=50_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale_work"))
    parser.add_argument("--banks", nargs="+", choices=BANKS, default=list(BANKS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="the default preset's (the paper's: 1e-4)")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument(
        "--squares", type=int, nargs="+", default=[1, 4, 12], help="bins a side: 8, 32, 96 µm"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("hd_bank.json"))
    args = parser.parse_args(argv)
    genes = _panel(785)
    base = _slides(args.work, args.bins)
    (test,) = _slides(args.work, args.bins, sections=("C4",))
    test_embeddings = embed([test], args)
    records = []
    for bank in args.banks:
        started = time.perf_counter()
        slides = training_slides(bank, base, args)
        model = train(slides, genes, bank, args)
        trained = time.perf_counter() - started
        request = ns.PredictRequest(model, [test], test_embeddings, device="cpu")
        predicted = ns.run_to_end(ns.predict(request)).predictions[test.slide_id].X
        record = {"bank": bank, "bank_bins": int(sum(s.n_spots for s in slides)), "train_s": round(trained, 1),
                  "distinct_keys": len(model.bank.embeddings.distinct),
                  "scores": {f"{8 * f}um": square_scores(test, predicted, genes, f) for f in args.squares}}  # fmt: skip
        np.save(args.work / f"hd_bank_{args.bins}_{bank}_seed{args.seed}.npy", predicted)  # to score again
        records.append(record)
        print(json.dumps(record), flush=True)
    settings = {
        "bins": args.bins,
        "epochs": args.epochs,
        "lr": args.lr,
        "fraction": args.fraction,
        "seed": args.seed,
    }
    args.out.write_text(json.dumps({**settings, "records": records}, indent=2))


if __name__ == "__main__":
    main()
