"""Patch extraction and embedding throughput on the HER2ST sections.

Prints patches/s for extraction alone, end-to-end embeddings/s per encoder on the CPU
(EfficientNet-Lite0 with and without the prefetch thread that reads while the encoder runs) (UNI / UNI2-h with random weights: speed does not depend on
them), and, when CUDA is available, UNI in bf16 with its batch size and peak GPU memory.

    python benchmarks/bench_embed.py [COHORT.csv]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import napari_spahgc as ns
from napari_spahgc.embed.device import default_threads, resolve_device
from napari_spahgc.embed.encoders import REGISTRY, Encoder, create_encoder
from napari_spahgc.embed.patches import PatchSpec, patch_batches

COHORT = Path(__file__).resolve().parents[1] / "examples" / "her2st_cohort.csv"


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.1f} patches/s ({count} in {seconds:.1f} s)"


def extraction(slides) -> None:
    started, count = time.perf_counter(), 0
    for slide in slides:
        for batch in patch_batches(slide, PatchSpec(), 64):
            count += len(batch)
    print(f"{'patch extraction alone':<40}{_rate(count, time.perf_counter() - started)}")


def end_to_end(
    slides,
    encoder: Encoder,
    label: str,
    limit: int | None = None,
    batch_size: int = 64,
    prefetch_depth: int = 2,
) -> None:
    if limit is not None:
        slides = [_first_spots(s, limit) for s in slides[:1]]
    with tempfile.TemporaryDirectory() as cache:
        request = ns.EmbedRequest(
            slides, encoder, batch_size=batch_size, cache=cache, mode="spot", prefetch_depth=prefetch_depth
        )  # per-spot throughput: patches per second
        started = time.perf_counter()
        ns.run_to_end(ns.embed(request))
        seconds = time.perf_counter() - started
    print(f"{label:<40}{_rate(sum(s.n_spots for s in slides), seconds)}")


def random_weights_encoder(name: str, device: str) -> Encoder:
    spec = REGISTRY[name]
    return Encoder(spec, spec.build(), "random", resolve_device(device))


def _first_spots(slide, n):
    return ns.Slide(slide.slide_id, slide.spot_ids[:n], slide.centers_px[:n], image=slide.image,
                 pixel_size_um=slide.pixel_size_um, sources=slide.sources)  # fmt: skip


def gpu_uni(batch_size: int = 256, batches: int = 20) -> None:
    encoder = random_weights_encoder("uni", "cuda")
    patches = np.random.default_rng(0).integers(0, 255, (batch_size, 224, 224, 3), dtype=np.uint8)
    encoder(patches)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(batches):
        encoder(patches)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"{'uni, CUDA bf16, encoder only':<40}{_rate(batch_size * batches, seconds)}; "
          f"batch {batch_size}, peak {peak:.1f} GiB, {torch.cuda.get_device_name()}")  # fmt: skip


def main() -> None:
    cohort = Path(sys.argv[1]) if len(sys.argv) > 1 else COHORT
    torch.set_num_threads(default_threads())
    slides = ns.load_cohort(cohort)
    print(
        f"{len(slides)} slides, {sum(s.n_spots for s in slides)} spots; torch threads {torch.get_num_threads()}"
    )
    extraction(slides)
    lite0 = create_encoder("efficientnet-lite0", device="cpu")
    end_to_end(slides, lite0, "efficientnet-lite0, CPU, no prefetch", prefetch_depth=0)
    end_to_end(slides, lite0, "efficientnet-lite0, CPU, prefetch thread")
    end_to_end(slides, random_weights_encoder("uni", "cpu"), "uni, CPU, end to end", limit=64, batch_size=32)
    end_to_end(
        slides, random_weights_encoder("uni2-h", "cpu"), "uni2-h, CPU, end to end", limit=32, batch_size=16
    )
    if torch.cuda.is_available():
        gpu_uni()
        end_to_end(
            slides, random_weights_encoder("uni", "cuda"), "uni, CUDA bf16, end to end", batch_size=256
        )
    else:
        print("no CUDA device: GPU figures not measured")


if __name__ == "__main__":
    main()
