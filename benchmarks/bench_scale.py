"""Time and peak memory of each pipeline stage at Visium / Visium HD sizes (issue 15).

    python benchmarks/bench_scale.py --sizes 5000 50000 --stages embed graph train predict --out scale.json

Slides: ``scale_slides.make_hd`` bins over sections C2 (the target) and C3 (the second training
slide), n bins each, made once in ``--work``. Graph and train use the slides' real dense embeddings
(offline encoder; embedded once into ``--work``/cache, unmeasured) or, with ``--embeddings random``,
seeded random ones (``--dim``): random embeddings retrieve almost no reference twice, the worst case
for a graph's reference count. Predict uses random ones (its bank is random too). Every stage of every
size runs in its own subprocess; its peak RSS is that child's ``ru_maxrss`` (``os.wait4``), so peaks do
not mix. Stages:

- ``embed-spot``: per-spot patches (``ns.embed`` of an ``EmbedRequest(mode="spot")``) on a sample of
  ``--sample`` bins, extrapolated linearly to n (said so in the table: ``extrapolated``);
- ``embed-dense``: ``ns.embed`` of an ``EmbedRequest(mode="dense")`` over the whole slide. Both embed with
  ``--encoder`` (UNI and UNI2-h with random weights) on ``--device`` with ``--batch-size``; on CUDA
  (bf16) the record has the GPU and its peak memory. The GPU check of an HD slide:
  ``--stages embed-dense --sizes 700000 --device cuda --encoder uni --batch-size 256``;
- ``graph``: the target's training graphs as the trainer builds them from its table of the training
  spots (one per block of ``--batch-spots`` spots) against the other slide's bins, the bank's search
  index included (approximate above ``ann_min_keys`` distinct keys; ``--ann-min-keys`` sets it, here
  and for ``train``);
- ``index``: that bank's approximate search index (built at every size, whatever ``ann_min_keys``) —
  its build time, and its recall@k against exact search on ``--sample`` of the target's bins (real
  dense embeddings);
- ``train``: what ``ns.train`` runs for a ``TrainRequest`` (1 member, ``--epochs``): its trainer's setup,
  timed apart, then ``Trainer.steps``; per epoch and total, in mini-batches of ``--batch-spots``; the
  peak memory after the setup and after the epochs, the training table's rows and distinct
  embeddings; with ``--save-model DIR`` the model folder is saved (timed) for ``predict-model``
  (``--ann-min-keys 0`` trains one searching approximately at any size, to compare it with exact);
- ``predict``: ``spahgc predict``'s path (``ns.predict`` with an output folder: the target, with its counts,
  predicted in blocks of ``predictor.BLOCK_SPOTS`` and streamed into an h5ad with its measured layer and
  per-gene PCC) by a default ensemble (4 members, smoothing on) with a bank of ``--bank-spots``
  (23,000: four Visium slides).
- ``predict-model``: the whole ``spahgc predict`` path with a real model (``--model DIR``, a folder written
  by ``spahgc train``): ``ns.predict`` of a ``PredictRequest`` naming the folder, the target with its
  counts, an ``EmbedRequest`` (the model's encoder, ``--device``, ``--batch-size``, the model's embedding
  mode) into a fresh cache folder under ``--work`` (so the embedding is measured: a user pays for it)
  and an output folder. ``seconds`` covers reading the model's encoder name (as the command does),
  embedding and predicting; ``phases`` splits it by the flow's progress records (model: loading it,
  planning the embedding; embed: the encoder's pass, to the written cache file; prepare: the slide's
  data and measured layer; references: the reference search and graph parts, to the first block;
  blocks: the network's blocks into the h5ad; write: ``var['pcc']``, closing the file). The record has
  the shape, whether every bin id was kept, the model's bank size, members, encoder and embedding mode,
  and each phase's resident set at its start and peak by its end (``ru_maxrss`` so far), and the mean
  per-gene PCC against the target's counts (``var['pcc']``).
  The target is ``--target``'s section (C2 by default, one of the train stage's two slides: the model
  then leaves its bins out of the bank). ``--target C4`` predicts a third slide against the whole saved
  bank, through the search index saved with the model.

The growth ratio is time(8n)/time(n) of a stage, from the log-log slope between consecutive measured
sizes (8 means linear, 64 quadratic).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from children import run_child

import napari_spahgc as ns
from napari_spahgc.model.config import TrainOptions
from napari_spahgc.model.predictor import BLOCK_SPOTS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
STAGES = ("embed-spot", "embed-dense", "graph", "index", "train", "predict", "predict-model")
SECTIONS = ("C2", "C3")  # the target, and the other slide: its bank, or its fellow training slide


# ------------------------------------------------------------------------------------- worker side
def _slides(work: Path, n: int, with_expression: bool = True, sections=SECTIONS):
    from scale_slides import make_hd

    slides = []
    for section in sections:
        table = work / f"{section}_hd{n}" / "cohort.csv"
        if not table.is_file():
            make_hd(section, table.parent, n)
        slides.append(ns.read_cohort(table)[0].load(with_expression))
    return slides


def _embeddings(slides, dim: int, dtype=np.float32) -> ns.Embeddings:
    """Seeded random embeddings, made 65,536 rows at a time (float16: as dense embedding stores them)."""
    rng, embeddings = np.random.default_rng(0), {}
    for s in slides:
        values = np.empty((s.n_spots, dim), dtype=dtype)
        for start in range(0, s.n_spots, 1 << 16):
            rows = min(1 << 16, s.n_spots - start)
            values[start : start + rows] = rng.standard_normal((rows, dim), dtype=np.float32)
        embeddings[s.slide_id] = values
    return ns.Embeddings(arrays=embeddings)


def _stage_embeddings(work: Path, slides, args) -> ns.Embeddings:
    """The slides' embeddings for graph / train: their real dense embeddings (offline encoder, from
    the cache :func:`embed_slides` filled) or, with ``--embeddings random``, seeded random ones."""
    if args.embeddings == "random":
        return _embeddings(slides, args.dim)
    request = ns.EmbedRequest(slides, device=args.device, cache=work / "cache", mode="dense")
    return ns.run_to_end(ns.embed(request))


def embed_slides(work: Path, n: int) -> None:
    """Dense-embed the size-``n`` slides into ``work/cache`` with ``spahgc embed`` (once, unmeasured)."""
    spahgc = str(Path(sys.executable).with_name("spahgc"))
    for section in SECTIONS:
        table = work / f"{section}_hd{n}" / "cohort.csv"
        subprocess.run([spahgc, "embed", str(table), "--cache", str(work / "cache"), "--mode", "dense"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def spots_of(slide, keep: np.ndarray):
    """``slide``'s spots ``keep`` (indices, in order): the same image, pixel size and patient, their counts."""
    from napari_spahgc.io.slide import Slide

    expression = slide.expression[keep].copy() if slide.expression is not None else None
    return Slide(slide.slide_id, slide.spot_ids[keep], slide.centers_px[keep], image=slide.image,
                 expression=expression, pixel_size_um=slide.pixel_size_um, patient=slide.patient,
                 spot_diameter_px=slide.spot_diameter_px)  # fmt: skip


def _subset(slide, k: int):
    """The first ``k`` spots of ``slide``."""
    return spots_of(slide, np.arange(min(k, slide.n_spots)))


def _panel(n_genes: int) -> list[str]:
    path = HERE.parent.parent / "shared" / "data" / "her2st" / "her2st_785_genes.txt"
    return path.read_text().split()[:n_genes]


def _encoder(args):
    """The offline encoder with its real weights; UNI or UNI2-h with random weights (their speed and
    memory do not depend on the values: the gated weights cannot be downloaded here)."""
    from bench_embed import random_weights_encoder

    from napari_spahgc.embed.encoders import DEFAULT_ENCODER, LazyEncoder

    if args.encoder == DEFAULT_ENCODER:
        return LazyEncoder(device=args.device).built()
    return random_weights_encoder(args.encoder, args.device)


def _embed(slide, args, mode: str) -> dict:
    """``ns.embed`` of ``slide`` in ``mode`` into a scratch cache: seconds, the encoder, the batch size
    and, on CUDA, the GPU and its peak memory."""
    encoder = _encoder(args)
    cuda = encoder.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as cache:
        request = ns.EmbedRequest([slide], encoder, batch_size=args.batch_size, cache=cache, mode=mode)
        started = time.perf_counter()
        ns.run_to_end(ns.embed(request))
        seconds = time.perf_counter() - started
    record = {"seconds": seconds, "encoder": args.encoder, "batch_size": args.batch_size}
    if cuda:
        record.update(
            gpu=torch.cuda.get_device_name(), peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30
        )
    return record


def stage_embed_spot(work: Path, n: int, args) -> dict:
    target = _slides(work, n, with_expression=False)[0]
    record = _embed(_subset(target, args.sample), args, "spot")
    seconds = record["seconds"]
    return record | {"seconds": seconds * target.n_spots / args.sample, "sample": args.sample,
                     "extrapolated": True, "patches_per_s": args.sample / seconds}  # fmt: skip


def stage_embed_dense(work: Path, n: int, args) -> dict:
    return _embed(_slides(work, n, with_expression=False)[0], args, "dense")


def stage_graph(work: Path, n: int, args) -> dict:
    """The target's training graphs as the trainer builds them (``Trainer._graph``, from its one table
    of the training spots): one per spatial block of ``--batch-spots`` spots, each against the other
    slide's bins. Timed: the bank's search index (approximate above ``ann_min_keys`` distinct keys) and
    every block's graph; the trainer's setup is not."""
    from napari_spahgc.train.flow import _trainer

    slides = _slides(work, n)
    options = {"members": 1, "hold_out": False, "batch_spots": args.batch_spots}
    options |= {"ann_min_keys": args.ann_min_keys} if args.ann_min_keys is not None else {}
    config = ns.SpaHGCConfig.from_options(options, preset="paper", device=args.device)
    embeddings = _stage_embeddings(work, slides, args)
    request = ns.TrainRequest(slides, embeddings, ns.GeneChoice(panel=tuple(_panel(args.genes))), config)
    trainer = _trainer(request, embeddings)
    del request, embeddings
    target, *others = trainer.slides
    setup_gb = _rss_gb()[1]
    started, edges, references = time.perf_counter(), 0, []
    blocks = trainer._blocks(target)
    for rows in blocks:
        graph = trainer._graph(target, others, rows, with_truth=True)
        edges += int(sum(e.num_edges for e in graph.edge_stores))
        references.append(graph["reference"].num_nodes)
    bank = trainer._bank[1]  # the other slide's rows, the bank every block searched
    index = bank.search_index(config.graph.search())  # built by the first block: not rebuilt
    return {"seconds": time.perf_counter() - started, "graphs": len(blocks), "edges": edges,
            "references_per_graph": float(np.mean(references)), "batch_spots": args.batch_spots,
            "bank_spots": len(bank), "distinct_bank_keys": len(index.distinct),
            "approximate": bool(index.approximate), "peak_after_setup_gb": setup_gb}  # fmt: skip


def stage_index(work: Path, n: int, args) -> dict:
    """The reference bank's approximate search index (the other slide's n bins, standardised as the
    trainer does): its build time, and its recall@k against exact search on ``--sample`` of the
    target's bins — the share of found keys at least as similar as the exact k-th (ann-benchmarks'
    definition: equal keys are interchangeable)."""
    from napari_spahgc.model.config import GraphOptions
    from napari_spahgc.model.graph import ReferenceBank
    from napari_spahgc.model.neighbours import topk_cosine
    from napari_spahgc.model.slide_data import FeatureScale, slide_data

    slides = _slides(work, n)
    embeddings, genes = _stage_embeddings(work, slides, args), _panel(args.genes)
    data = [slide_data(s, embeddings[s.slide_id], genes) for s in slides]
    embedding_scale = FeatureScale.fit(data, "embeddings")
    data = [d.standardised(embedding_scale) for d in data]
    bank = ReferenceBank.from_slides(data[1:], FeatureScale.fit(data[1:]))
    options = GraphOptions(ann_min_keys=0)  # the approximate index at every size, to measure it
    started = time.perf_counter()
    index = bank.search_index(options.search())
    built = time.perf_counter() - started
    queries = data[0].embeddings[np.random.default_rng(0).choice(data[0].n_spots, args.sample, replace=False)]
    started = time.perf_counter()
    _, found = index.search(queries, options.k)
    searched = time.perf_counter() - started
    started = time.perf_counter()
    _, exact = topk_cosine(queries, bank.embeddings, options.k, with_scores=True)
    exact_s = time.perf_counter() - started
    recall = np.mean(found >= exact[:, -1:] - 1e-5)  # ann-benchmarks' recall: equal keys tie
    return {"seconds": built, "search_s_per_1000": 1000 * searched / len(queries), "recall_at_k": float(recall),
            "exact_s_per_1000": 1000 * exact_s / len(queries), "k": options.k, "bank_spots": len(bank),
            "distinct_bank_rows": len(index.distinct), "queries": len(queries),
            "search": vars(options.search())}  # fmt: skip


def stage_train(work: Path, n: int, args) -> dict:
    """The training flow's work, its setup timed apart from its epochs: ``ns.train`` runs the same trainer
    (``train.flow._trainer``: genes, slide data, standardisation, the reference bank) and its steps."""
    from napari_spahgc.train.flow import _trainer

    slides = _slides(work, n)
    options = {"epochs": args.epochs, "members": 1, "hold_out": False, "batch_spots": args.batch_spots}
    options |= {"ann_min_keys": args.ann_min_keys} if args.ann_min_keys is not None else {}
    config = ns.SpaHGCConfig.from_options(options, preset="paper", device=args.device)
    started = time.perf_counter()
    embeddings = _stage_embeddings(work, slides, args)
    request = ns.TrainRequest(slides, embeddings, ns.GeneChoice(panel=tuple(_panel(args.genes))), config)
    trainer = _trainer(request, embeddings)
    del request, embeddings  # as the flow drops them: the trainer holds its own table
    setup, rss_setup = time.perf_counter() - started, _rss_gb()[1]
    epochs, last = [], time.perf_counter()
    for _ in trainer.steps():
        epochs.append(time.perf_counter() - last)
        last = time.perf_counter()
    record = {"seconds": time.perf_counter() - started, "setup_s": setup, "epoch_s": epochs,
              "batch_spots": options.get("batch_spots"), "peak_after_setup_gb": rss_setup,
              "peak_after_epochs_gb": _rss_gb()[1], "bank_spots": len(trainer.bank),
              "distinct_embeddings": len(trainer.bank.embeddings.distinct),
              "ann_min_keys": config.graph.ann_min_keys}  # fmt: skip
    if args.save_model is not None:  # a model folder for the predict-model stage
        saving = time.perf_counter()
        trainer.result.save(args.save_model)
        record.update(save_s=time.perf_counter() - saving, model=str(args.save_model))
    return record


def stage_predict(work: Path, n: int, args) -> dict:
    """Predict the target with a default-preset ensemble (4 members) and a bank of ``--bank-spots``
    reference spots, as a model trained on four Visium slides has. The weights are a seeded random
    initialisation: the cost of prediction does not depend on their values, only on the shapes; the
    embeddings are float16, as dense embedding (the mode of HD bins) stores them."""
    import anndata as ad

    from napari_spahgc.model.config import GraphOptions, SpaHGCConfig
    from napari_spahgc.model.graph import ReferenceBank
    from napari_spahgc.model.network import SpaHGC
    from napari_spahgc.model.predictor import ModelMetadata, SpaHGCPredictor
    from napari_spahgc.model.slide_data import FeatureScale

    (target,) = _slides(work, n, sections=("C2",))
    embeddings, genes = _embeddings([target], args.dim, np.float16), _panel(args.genes)  # HD: dense
    rng = np.random.default_rng(1)
    bank = ReferenceBank(
        rng.standard_normal((args.bank_spots, args.dim), dtype=np.float32),
        rng.standard_normal((args.bank_spots, len(genes)), dtype=np.float32),
        np.full(args.bank_spots, "reference", dtype=object),
    )
    config = SpaHGCConfig(graph=GraphOptions(smoothing=0.25))
    torch.manual_seed(0)
    network = SpaHGC(args.dim, len(genes), config.model)
    model = SpaHGCPredictor(network, bank, FeatureScale.identity(len(genes)), FeatureScale.identity(args.dim),
                            config, ModelMetadata(genes=genes, embedding_dim=args.dim))  # fmt: skip
    with tempfile.TemporaryDirectory(dir=work) as out:
        request = ns.PredictRequest(model, [target], embeddings, out=out, device=args.device)
        started = time.perf_counter()
        (path,) = ns.run_to_end(ns.predict(request)).files.values()
        seconds = time.perf_counter() - started
        written = ad.read_h5ad(path, backed="r")
        shape, kept = list(written.shape), bool((written.obs_names == target.spot_ids).all())
        written.file.close()
    return {"seconds": seconds, "shape": shape, "every_bin_id_kept": kept, "block_spots": BLOCK_SPOTS,
            "bank_spots": args.bank_spots, "members": config.model.members}  # fmt: skip


def _phase(record) -> str:
    """The phase of the predict flow a progress record starts (see the module docstring)."""
    if record.stage == "embed":
        return "prepare" if "path" in record.values else "embed"
    if record.text.startswith("loading"):
        return "model"
    if "retrieving references" in record.text:
        return "references"
    if ": block " not in record.text:
        return "prepare"
    return "write" if record.done == record.total else "blocks"  # after the last block: pcc, close


def _rss_gb() -> tuple[float, float]:
    """This process's resident set now (``/proc/self/statm``) and its peak so far (``ru_maxrss``), GB."""
    import resource

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def stage_predict_model(work: Path, n: int, args) -> dict:
    """``spahgc predict`` of the target with the model folder ``--model``, embedding included: a fresh
    cache folder, so the slide is embedded (in the model's mode, with its encoder) inside the time."""
    import anndata as ad

    from napari_spahgc.embed.encoders import DEFAULT_ENCODER
    from napari_spahgc.predict.flow import load_model

    started = time.perf_counter()
    (target,) = _slides(work, n, sections=(args.target,))
    read_slide = time.perf_counter() - started
    phases, records, rss = {}, [], {}

    def each(record) -> None:
        records.append(record)
        if (phase := _phase(record)) not in phases:
            phases[phase], rss[phase] = time.perf_counter(), _rss_gb()

    with tempfile.TemporaryDirectory(dir=work) as cache, tempfile.TemporaryDirectory(dir=work) as out:
        started = time.perf_counter()
        phases["model"], rss["model"] = started, _rss_gb()
        model = load_model(args.model)  # as the command does: the encoder's name, before any work
        encoder = model.metadata.encoder.get("name", DEFAULT_ENCODER)
        embedding = ns.EmbedRequest([target], encoder, device=args.device, batch_size=args.batch_size,
                                    cache=cache)  # fmt: skip
        request = ns.PredictRequest(args.model, [target], embedding, out=out, device=args.device)
        (path,) = ns.run_to_end(ns.predict(request), each).files.values()
        ended, at_end = time.perf_counter(), _rss_gb()
        written = ad.read_h5ad(path, backed="r")
        shape, kept = list(written.shape), bool((written.obs_names == target.spot_ids).all())
        pcc = float(np.nanmean(written.var["pcc"])) if "pcc" in written.var else None
        written.file.close()
    starts = sorted(phases.items(), key=lambda item: item[1])
    bounds = [t for _, t in starts[1:]] + [ended]
    split = {name: bound - t for (name, t), bound in zip(starts, bounds, strict=True)}
    names = [name for name, _ in starts]  # the peak a phase reached: the peak so far when the next began
    peaks = {name: rss[after][1] for name, after in itertools.pairwise(names)}
    peaks[names[-1]] = at_end[1]
    modes = {r.values["mode"] for r in records if r.stage == "embed" and "mode" in r.values}
    return {"seconds": ended - started, "embed_s": split.get("embed", 0.0), "phases": split,
            "rss_at_start_gb": {k: v[0] for k, v in rss.items()}, "peak_by_end_gb": peaks,
            "read_slide_s": read_slide, "shape": shape, "every_bin_id_kept": kept, "mean_gene_pcc": pcc,
            "bank_spots": len(model.bank), "members": model.config.model.members,
            "bank_slides": sorted(set(model.bank.slide_ids)), "encoder": encoder,
            "embedding_mode": sorted(modes), "model_mode": model.metadata.encoder.get("embedding_mode"),
            "block_spots": BLOCK_SPOTS, "batch_size": args.batch_size, "model": str(args.model)}  # fmt: skip


# ------------------------------------------------------------------------------------- parent side
def run_stage(stage: str, n: int, args) -> dict:
    """One stage at one size in a fresh child process: its result, wall time and peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_file = Path(handle.name)
    command = [sys.executable, __file__, "--worker", stage, "--size", str(n), "--result", str(result_file),
               *_passed(args)]  # fmt: skip
    status, measured = run_child(command, args.timeout)
    record = json.loads(result_file.read_text()) if status == 0 and result_file.stat().st_size else {}
    result_file.unlink(missing_ok=True)
    record.update(stage=stage, n=n, **measured)
    return record


def _passed(args) -> list[str]:
    names = ("work", "dim", "genes", "epochs", "sample", "device", "encoder", "batch_size", "batch_spots",
             "bank_spots", "embeddings", "model", "save_model", "target", "ann_min_keys")  # fmt: skip
    return [item for name in names if getattr(args, name) is not None
            for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]  # fmt: skip


def growth(records: list[dict]) -> list[dict]:
    """time(8n)/time(n) of each stage between consecutive measured sizes n < m: 8^b, with b the
    log-log slope log(t_m / t_n) / log(m / n) (the measured ratio itself when m = 8n; 8 when linear)."""
    seconds: dict[str, dict[int, float]] = {}
    for r in records:
        if "seconds" in r:
            seconds.setdefault(r["stage"], {})[r["n"]] = r["seconds"]
    out = []
    for stage, by_size in seconds.items():
        sizes = sorted(by_size)
        for n, m in itertools.pairwise(sizes):
            slope = np.log(by_size[m] / by_size[n]) / np.log(m / n)
            out.append({"stage": stage, "n": n, "m": m, "exponent": float(slope), "ratio": float(8**slope)})
    return out


def table(records: list[dict]) -> str:
    lines = ["| stage | n | time s | peak RSS GB | note |", "|---|---|---|---|---|"]
    for r in records:
        time_s = f"{r['seconds']:.1f}" if "seconds" in r else "—"
        note = r.get("skipped") or (f"extrapolated from {r['sample']} bins" if r.get("extrapolated") else "")
        if "graphs" in r:
            note = f"{r['graphs']} graphs of ≤ {r['batch_spots']:,} targets, {r['references_per_graph']:,.0f} references each"
        if "peak_gpu_gib" in r:
            note += f" {r['encoder']} on {r['gpu']}, batch {r['batch_size']}, peak GPU {r['peak_gpu_gib']:.1f} GiB"
        if "phases" in r:
            note = f"{r['members']} members, bank {r['bank_spots']:,}; " + ", ".join(
                f"{k} {v:.1f} s" for k, v in r["phases"].items()
            )
        if r.get("epoch_s"):
            note = f"setup {r['setup_s']:.1f} s, epochs " + ", ".join(f"{e:.1f}" for e in r["epoch_s"])
        lines.append(f"| {r['stage']} | {r['n']:,} | {time_s} | {r['peak_rss_gb']:.2f} | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 50_000, 200_000, 700_000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--out", type=Path, default=Path("bench_scale.json"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "spahgc-scale-slides")
    parser.add_argument("--dim", type=int, default=1280, help="random embeddings' width")
    parser.add_argument("--embeddings", choices=("dense", "random"), default="dense", help="graph / train")
    parser.add_argument("--genes", type=int, default=785)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sample", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--encoder", default="efficientnet-lite0", help="embed stages: uni / uni2-h random weights"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="embed stages: patches a batch (dense: as pixels)"
    )
    parser.add_argument("--batch-spots", type=int, default=TrainOptions().batch_spots)
    parser.add_argument("--bank-spots", type=int, default=23_000)
    parser.add_argument("--model", type=Path, help="predict-model: a model folder written by spahgc train")
    parser.add_argument("--save-model", type=Path, help="train: save the trained model folder here")
    parser.add_argument(
        "--ann-min-keys",
        type=int,
        help="train: the approximate-search threshold (0: approximate at every size)",
    )
    parser.add_argument(
        "--target", default="C2", help="predict-model: the section to predict (C4: not a training one)"
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--worker", choices=STAGES)
    parser.add_argument("--size", type=int)
    parser.add_argument("--result", type=Path)
    args = parser.parse_args(argv)
    wanted = {args.worker} if args.worker else set(args.stages)  # a worker runs one stage only
    if "predict-model" in wanted and args.model is None:
        parser.error("the predict-model stage needs --model DIR")
    if args.worker:
        stage = globals()[f"stage_{args.worker.replace('-', '_')}"]
        args.result.write_text(json.dumps(stage(args.work, args.size, args)))
        return
    records = []
    for n in args.sizes:
        _slides(args.work, n, sections=dict.fromkeys([*SECTIONS, args.target]))  # made once, unmeasured
        if args.embeddings == "dense" and {"graph", "index", "train"} & set(args.stages):
            embed_slides(args.work, n)
        for stage in args.stages:
            records.append(run_stage(stage, n, args))
            print(table(records[-1:]).splitlines()[-1], flush=True)
    report = {"records": records, "growth": growth(records), "settings": vars(args) | {"out": str(args.out)}}
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(table(records))
    for g in report["growth"]:
        span = f"{g['stage']} {g['n']:,} → {g['m']:,}"
        print(f"{span}: time ∝ n^{g['exponent']:.2f}, time(8n)/time(n) = {g['ratio']:.1f}")


if __name__ == "__main__":
    main()
