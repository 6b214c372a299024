"""The hostile user's suite: every bad input through the real ``spahgc`` entry point ends with exit code 2
and one message naming the file and the problem — no traceback, nothing written outside the output and
cache folders, nothing half-written."""

from __future__ import annotations

import gzip
import json
import pickle
import re
import signal
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from conftest import write_10x_h5, write_ome_pyramid
from napari_spahgc import cli
from synthetic_slides import make_slides, make_trainer

GENES = ("GENE1", "GENE2", "GENE3")
HEADER = "slide_id,image,spots,counts,pixel_size_um,patient"


class Inputs:
    """A valid one-slide cohort in ``root`` (image, spots, counts, table) that each case spoils once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out"
        self.cache = root / "cache"
        write_ome_pyramid(root / "he.ome.tif", np.full((500, 600, 3), 180, np.uint8), pixel_size_um=0.5)
        self.write(
            "spots.csv", "spot_id,x,y\n" + "".join(f"s{i},{100 + 60 * i},{150 + 30 * i}\n" for i in range(6))
        )
        rows = "".join(f"s{i}\t{i + 1}\t{2 * i}\t3\n" for i in range(6))
        self.counts("counts.tsv", rows)
        self.row = {"slide_id": "A", "image": "he.ome.tif", "spots": "spots.csv", "counts": "counts.tsv"}

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def counts(self, name: str, rows: str, genes: tuple[str, ...] = GENES) -> Path:
        return self.write(name, "\t" + "\t".join(genes) + "\n" + rows)

    def table(self, *rows: dict, header: str = HEADER) -> Path:
        columns = header.split(",")
        lines = [",".join(str(row.get(c, "")) for c in columns) for row in rows]
        return self.write("cohort.csv", "\n".join([header, *lines]) + "\n")

    def info(self, **changes) -> list[str]:
        """``spahgc info`` on the cohort with one row changed."""
        return ["info", str(self.table({**self.row, **changes}))]

    def spots(self, name: str, content: str | bytes) -> list[str]:
        self.write(name, content)
        return self.info(spots=name)

    def h5ad(self, name: str, adata: ad.AnnData) -> list[str]:
        adata.write_h5ad(self.root / name)
        return self.info(spots=name, counts="", image="")

    def truncated_h5ad(self, name: str) -> Path:
        """A real predictions-like .h5ad cut short, as a copy interrupted mid-way leaves it."""
        _h5ad(np.ones((4, 2))).write_h5ad(self.root / name)
        data = (self.root / name).read_bytes()
        return self.write(name, data[: len(data) // 3])

    def command(self, name: str, *extra: str) -> list[str]:
        cohort = str(self.table(self.row))
        return {
            "embed": ["embed", cohort, "--cache", str(self.cache)],
            "train": ["train", cohort, "--out", str(self.out), "--n-hvg", "2", "--cache", str(self.cache)],
            "benchmark": [
                "benchmark",
                cohort,
                "--out",
                str(self.out),
                "--n-hvg",
                "2",
                "--cache",
                str(self.cache),
            ],
        }[name] + list(extra)


# ------------------------------------------------------------------------------------------ bad files


def _png_claiming(width: int, height: int) -> bytes:
    """A 1-pixel-of-data PNG whose header claims ``width`` × ``height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _legacy(rows: str) -> str:
    return "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n" + rows


def _h5ad(obsm_spatial=None, X=None) -> ad.AnnData:
    X = np.ones((4, 2), np.float32) if X is None else X
    adata = ad.AnnData(X)
    adata.obs_names = [f"s{i}" for i in range(adata.n_obs)]
    adata.var_names = ["G1", "G2"]
    if obsm_spatial is not None:
        adata.obsm["spatial"] = obsm_spatial
    return adata


def _spaceranger(b: Inputs, positions: str, scalefactors: str | None = None) -> list[str]:
    b.root / "outs" / "spatial"
    b.write("outs/spatial/tissue_positions.csv", positions)
    if scalefactors is not None:
        b.write("outs/spatial/scalefactors_json.json", scalefactors)
    return b.info(spots="outs", counts="", image="")


_POSITIONS = "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n"


def _tenx_with_duplicate_genes(b: Inputs) -> list[str]:
    write_10x_h5(b.root / "m.h5", np.ones((6, 3), int), [f"s{i}" for i in range(6)], ["G1", "G1", "G2"])
    return b.info(counts="m.h5")


def _pickle_payload(b: Inputs) -> list[str]:
    class Boom:
        def __reduce__(self):
            return (Path.touch, (b.root / "out" / "PWNED",))

    b.write("evil.pt", pickle.dumps({"weight": Boom()}))
    return [*b.command("embed"), "--weights", str(b.root / "evil.pt")]


def _model_folder(b: Inputs, spoil: Callable[[Path], None]) -> list[str]:
    folder = _trained_model(b.root / "model")
    spoil(folder)
    return ["predict", str(folder), str(b.table(b.row)), "--out", str(b.out), "--cache", str(b.cache)]


def _trained_model(folder: Path) -> Path:
    trainer = make_trainer(make_slides(n_slides=2), epochs=2, members=2)
    for _ in trainer.steps():
        pass
    model = trainer.result
    model.metadata.encoder = {"name": "efficientnet-lite0"}
    return model.save(folder)


def _edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def spoil(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))

    return spoil


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _flip_byte(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))


def _corrupt_tiles(b: Inputs) -> list[str]:
    """An OME-TIFF whose compressed tile data is damaged in the middle (header intact)."""
    import tifffile

    path = b.root / "damaged.ome.tif"
    pixels = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb", compression="zlib",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset + 10 : offset + count] = b"\x00" * (count - 10)
    path.write_bytes(bytes(data))
    b.row["image"] = "damaged.ome.tif"
    return b.command("embed")


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Inputs], list[str]]
    message: str  # a regex the error must match
    names: str | None  # the file or folder the message must name, relative to the inputs' folder


# fmt: off
CASES = [
    # the cohort table
    Case("cohort missing", lambda b: ["info", str(b.root / "absent.csv")], r"cohort table not found", "absent.csv"),
    Case("cohort is a folder", lambda b: ["info", str(b.root)], r"is a directory, not a cohort table", ""),
    Case("cohort not UTF-8", lambda b: ["info", str(b.write("c.csv", HEADER.encode() + b"\nA,\xff\xfe\x00,x,,,\n"))], r"cannot read cohort table", "c.csv"),
    Case("cohort lacks columns", lambda b: ["info", str(b.table(b.row, header="slide_id,image,spots"))], r"lacks column\(s\) counts, pixel_size_um, patient", "cohort.csv"),
    Case("cohort without slides", lambda b: ["info", str(b.table())], r"cohort table has no slides", "cohort.csv"),
    Case("duplicate slide_id", lambda b: ["info", str(b.table(b.row, b.row))], r"duplicate slide_id in cohort table: A", "cohort.csv"),
    Case("empty slide_id", lambda b: b.info(slide_id=""), r"empty slide_id", "cohort.csv"),
    Case("no spots file", lambda b: b.info(spots=""), r"slide 'A' has no spots file", "cohort.csv"),
    Case("pixel size negative", lambda b: b.info(pixel_size_um="-1"), r"pixel_size_um must be a positive number", "cohort.csv"),
    Case("pixel size text", lambda b: b.info(pixel_size_um="abc"), r"pixel_size_um must be a positive number, got 'abc'", "cohort.csv"),
    Case("pixel size infinite", lambda b: b.info(pixel_size_um="inf"), r"pixel_size_um must be a positive number", "cohort.csv"),
    Case("pixel size 1e-6", lambda b: b.info(pixel_size_um="1e-6"), r"pixel size 1e-06 µm/px .* outside the plausible range", "cohort.csv"),
    Case("pixel size 1e9", lambda b: b.info(pixel_size_um="1e9"), r"pixel size 1e\+09 µm/px .* outside the plausible range", "cohort.csv"),
    Case("spots missing", lambda b: b.info(spots="nope.csv"), r"spot file not found", "nope.csv"),
    Case("image missing", lambda b: b.info(image="nope.tif"), r"image file not found", "nope.tif"),
    Case("image is a folder", lambda b: b.info(image="."), r"is a directory, not a image file", ""),
    Case("counts missing", lambda b: b.info(counts="nope.tsv"), r"counts file not found", "nope.tsv"),
    # spot tables
    Case("legacy empty array x", lambda b: b.spots("sel.tsv", _legacy("1\t1\t1\t1\t100\t100\t1\n\t2\t2\t2\t200\t200\t1\n")), r"column 'x', data row 2: the value is empty", "sel.tsv"),
    Case("legacy text pixel_x", lambda b: b.spots("sel.tsv", _legacy("1\t1\t1\t1\tleft\t100\t1\n")), r"column 'pixel_x', data row 1: the value is not a finite number \('left'\)", "sel.tsv"),
    Case("legacy fractional x", lambda b: b.spots("sel.tsv", _legacy("1.5\t1\t1\t1\t100\t100\t1\n")), r"must be whole numbers", "sel.tsv"),
    Case("legacy bad selected", lambda b: b.spots("sel.tsv", _legacy("1\t1\t1\t1\t100\t100\tyes\n")), r"column 'selected'", "sel.tsv"),
    Case("no coordinates", lambda b: b.spots("ids.csv", "spot_id,cluster\ns0,1\n"), r"spot table has no coordinates", "ids.csv"),
    Case("text coordinate", lambda b: b.spots("t.csv", "spot_id,x,y\ns0,10,12\ns1,ten,12\n"), r"column 'x', data row 2: the value is not a finite number \('ten'\)", "t.csv"),
    Case("infinite coordinate", lambda b: b.spots("t.csv", "spot_id,x,y\ns0,10,inf\n"), r"column 'y', data row 1", "t.csv"),
    Case("spot table without rows", lambda b: b.spots("t.csv", "spot_id,x,y\n"), r"spot table has no spots", "t.csv"),
    Case("duplicate spot ids", lambda b: b.spots("t.csv", "spot_id,x,y\ns0,10,10\ns0,20,20\n"), r"duplicate spot ids: s0", "t.csv"),
    Case("every spot outside", lambda b: b.spots("t.csv", "spot_id,x,y\ns0,-10,10\ns1,9000,20\n"), r"none of the 2 spots lie inside the image", "t.csv"),
    Case("spot table not UTF-8", lambda b: b.spots("t.csv", b"spot_id,x,y\n\xff\xfe,1,2\n"), r"cannot read spot table", "t.csv"),
    Case("spot table binary", lambda b: b.spots("t.csv", bytes(range(256)) * 4), r"t\.csv: ", "t.csv"),
    Case("positions bad in_tissue", lambda b: _spaceranger(b, _POSITIONS + "AAA-1,maybe,0,0,10,10\n"), r"column 'in_tissue'", "outs/spatial/tissue_positions.csv"),
    Case("positions lack columns", lambda b: _spaceranger(b, "barcode,in_tissue\nAAA-1,1\n"), r"tissue positions lack column", "outs/spatial/tissue_positions.csv"),
    Case("positions text pixel", lambda b: _spaceranger(b, _POSITIONS + "AAA-1,1,0,0,ten,10\n"), r"column 'pxl_row_in_fullres'", "outs/spatial/tissue_positions.csv"),
    Case("scalefactors not JSON", lambda b: _spaceranger(b, _POSITIONS + "AAA-1,1,0,0,10,10\n", "{not json"), r"scalefactors file is not valid JSON", "outs/spatial/scalefactors_json.json"),
    Case("scalefactors negative", lambda b: _spaceranger(b, _POSITIONS + "AAA-1,1,0,0,10,10\n", '{"spot_diameter_fullres": -3}'), r"spot_diameter_fullres must be a positive number", "outs/spatial/scalefactors_json.json"),
    Case("microns_per_pixel 1e-6", lambda b: _spaceranger(b, _POSITIONS + "AAA-1,1,0,0,10,10\n", '{"microns_per_pixel": 1e-6}'), r"microns_per_pixel \(scalefactors_json\.json\)\) is outside the plausible range", "outs"),
    Case("outs without spatial", lambda b: (b.root / "outs2").mkdir() or b.info(spots="outs2", counts="", image=""), r"not a Space Ranger outs/ folder", "outs2"),
    Case("h5ad spatial (n, 1)", lambda b: b.h5ad("a.h5ad", _h5ad(np.ones((4, 1)))), r"obsm\['spatial'\] must have shape \(n_spots, 2\), not \(4, 1\)", "a.h5ad"),
    Case("h5ad without spatial", lambda b: b.h5ad("a.h5ad", _h5ad()), r"spot file has no spot coordinates", "a.h5ad"),
    Case("h5ad string spatial", lambda b: b.h5ad("a.h5ad", _h5ad(np.array([["a", "b"]] * 4))), r"obsm\['spatial'\] holds .* not numbers", "a.h5ad"),
    Case("h5ad string X", lambda b: b.h5ad("a.h5ad", _h5ad(np.ones((4, 2)), X=np.array([["a", "b"]] * 4, dtype=object))), r"counts are not numbers", "a.h5ad"),
    Case("h5ad random bytes", lambda b: b.write("a.h5ad", bytes(range(256)) * 8) and b.info(spots="a.h5ad", counts="", image=""), r"cannot read the spot file as \.h5ad", "a.h5ad"),
    Case("h5ad NaN spatial", lambda b: b.h5ad("a.h5ad", _h5ad(np.full((4, 2), np.nan))), r"NaN or infinite", "a.h5ad"),
    # counts
    Case("negative counts", lambda b: b.counts("c.tsv", "s0\t-1\t2\t3\n") and b.info(counts="c.tsv"), r"counts contain negative values", "c.tsv"),
    Case("NaN counts", lambda b: b.counts("c.tsv", "s0\tnan\t2\t3\n") and b.info(counts="c.tsv"), r"counts contain NaN values", "c.tsv"),
    Case("infinite counts", lambda b: b.counts("c.tsv", "s0\tinf\t2\t3\n") and b.info(counts="c.tsv"), r"counts contain infinite values", "c.tsv"),
    Case("text counts", lambda b: b.counts("c.tsv", "s0\tmany\t2\t3\n") and b.info(counts="c.tsv"), r"cannot read counts", "c.tsv"),
    Case("all-zero counts", lambda b: b.counts("c.tsv", "s0\t0\t0\t0\ns1\t0\t0\t0\n") and b.info(counts="c.tsv"), r"every count is zero", "c.tsv"),
    Case("duplicate genes", lambda b: b.counts("c.tsv", "s0\t1\t2\t3\n", ("G1", "G1", "G2")) and b.info(counts="c.tsv"), r"duplicate gene names in counts: G1", "c.tsv"),
    Case("duplicate count rows", lambda b: b.counts("c.tsv", "s0\t1\t2\t3\ns0\t1\t2\t3\n") and b.info(counts="c.tsv"), r"duplicate spot ids in counts: s0", "c.tsv"),
    Case("counts share no ids", lambda b: b.counts("c.tsv", "z9\t1\t2\t3\n") and b.info(counts="c.tsv"), r"counts and spots share no spot ids", "c.tsv"),
    Case("counts not UTF-8", lambda b: b.write("c.tsv", b"\tG1\n\xff\xfe\t1\n") and b.info(counts="c.tsv"), r"cannot read counts", "c.tsv"),
    Case("counts empty file", lambda b: b.write("c.tsv", "") is not None and b.info(counts="c.tsv"), r"cannot read counts", "c.tsv"),
    Case("counts gzip damaged", lambda b: b.write("c.tsv.gz", gzip.compress(b"\tG1\ns0\t1\n")[:20]) and b.info(counts="c.tsv.gz"), r"cannot read counts", "c.tsv.gz"),
    Case("10x h5 garbage", lambda b: b.write("m.h5", b"\x89HDF\r\n" + bytes(300)) and b.info(counts="m.h5"), r"cannot read 10x matrix", "m.h5"),
    # images
    Case("image garbage TIFF", lambda b: b.write("g.tif", b"II*\x00" + bytes(40)) and b.info(image="g.tif"), r"cannot read image", "g.tif"),
    Case("image truncated", lambda b: b.write("t.ome.tif", (b.root / "he.ome.tif").read_bytes()[:3000]) and b.info(image="t.ome.tif"), r"(truncated|cannot read image)", "t.ome.tif"),
    Case("image unsupported type", lambda b: b.write("he.bmp", b"BM" + bytes(60)) and b.info(image="he.bmp"), r"unsupported image type", "he.bmp"),
    Case("image float pixels", lambda b: __import__("tifffile").imwrite(b.root / "f.tif", np.zeros((64, 64, 3), np.float32)) or b.info(image="f.tif"), r"unsupported pixel type float32", "f.tif"),
    Case("JPEG cut short", lambda b: _cut_jpeg(b) and b.info(image="cut.jpg", pixel_size_um="0.5"), r"cannot decode image", "cut.jpg"),
    Case("PNG bomb 20000²", lambda b: b.write("bomb.png", _png_claiming(20000, 20000)) and b.info(image="bomb.png"), r"cannot hold the 20000 × 20000 px it claims", "bomb.png"),
    Case("PNG bomb 50000²", lambda b: b.write("bomb.png", _png_claiming(50000, 50000)) and b.info(image="bomb.png"), r"(cannot hold the 50000 × 50000 px|too large to decode)", "bomb.png"),
    Case("image data damaged", _corrupt_tiles, r"cannot decode the image data of level 0", "damaged.ome.tif"),
    # gene panels
    Case("panel missing", lambda b: [*b.command("train")[:4], "--genes", str(b.root / "p.txt"), "--cache", str(b.cache)], r"gene panel file not found", "p.txt"),
    Case("panel not UTF-8", lambda b: b.write("p.txt", b"ERBB2\n\xff\xfeX\n") and [*b.command("train")[:4], "--genes", str(b.root / "p.txt")], r"gene panel file is not UTF-8 text", "p.txt"),
    Case("panel empty", lambda b: b.write("p.txt", "# none\n\n") and [*b.command("train")[:4], "--genes", str(b.root / "p.txt")], r"gene panel file lists no genes", "p.txt"),
    Case("panel shares no gene", lambda b: b.write("p.txt", "ERBB2\nCD74\n") and [*b.command("train")[:4], "--genes", str(b.root / "p.txt"), "--cache", str(b.cache)], r"no gene of the panel", "p.txt"),
    Case("panel is a folder", lambda b: [*b.command("train")[:4], "--genes", str(b.root)], r"is a directory, not a gene panel file", ""),
    # outputs are checked before any work
    Case("train --out is a file", lambda b: b.write("out", "x") and b.command("train"), r"is a file, not a folder", "out"),
    Case("train --out under /proc", lambda b: [*b.command("train")[:3], "/proc/spahgc-test/model", "--n-hvg", "2"], r"cannot write the model folder here", "/proc/spahgc-test/model"),
    Case("train --out under a file", lambda b: b.write("f", "x") and [*b.command("train")[:3], str(b.root / "f" / "m"), "--n-hvg", "2"], r"cannot write the model folder here", "f/m"),
    Case("benchmark --out is a file", lambda b: b.write("out", "x") and b.command("benchmark"), r"is a file, not a folder", "out"),
    Case("predict --out is a file", lambda b: b.write("out", "x") and _model_folder(b, lambda f: None), r"is a file, not a folder", "out"),
    Case("embed --cache is a file", lambda b: b.write("cache", "x") and b.command("embed"), r"is a file, not a folder \(the cache folder", "cache"),
    Case("render predictions missing", lambda b: ["render", str(b.root / "p.h5ad"), "--gene", "G1", "--out", str(b.out / "g.png")], r"predictions file not found", "p.h5ad"),
    Case("render --out is a folder", lambda b: b.h5ad("p.h5ad", _h5ad(np.ones((4, 2)))) and ["render", str(b.root / "p.h5ad"), "--gene", "G1", "--out", str(b.root)], r"is a directory, not a file", ""),
    Case("render predictions truncated", lambda b: b.truncated_h5ad("p.h5ad") and ["render", str(b.root / "p.h5ad"), "--gene", "G1", "--out", str(b.out / "g.png")], r"cannot read the predictions file as \.h5ad", "p.h5ad"),
    Case("render predictions without coordinates", lambda b: b.h5ad("p.h5ad", _h5ad()) and ["render", str(b.root / "p.h5ad"), "--gene", "G1", "--out", str(b.out / "g.png")], r"predictions file has no spot coordinates", "p.h5ad"),
    Case("render --out under /proc", lambda b: b.h5ad("p.h5ad", _h5ad(np.ones((4, 2)))) and ["render", str(b.root / "p.h5ad"), "--gene", "G1", "--out", "/proc/spahgc-test.png"], r"cannot write the PNG in /proc", "/proc/spahgc-test.png"),
    Case("demo --out is a file", lambda b: b.write("out", "x") and ["demo", "--out", str(b.out), "--no-viewer"], r"is a file, not a folder", "out"),
    # encoder weights
    Case("weights missing", lambda b: b.command("embed", "--weights", str(b.root / "w.pt")), r"weights file not found", "w.pt"),
    Case("weights is a folder", lambda b: b.command("embed", "--weights", str(b.root)), r"is a directory", ""),
    Case("weights random bytes", lambda b: b.write("w.pt", bytes(range(256)) * 16) and b.command("embed", "--weights", str(b.root / "w.pt")), r"cannot read weights", "w.pt"),
    Case("weights pickle payload", _pickle_payload, r"cannot read weights", "evil.pt"),
    # model folders
    Case("model folder missing", lambda b: ["predict", str(b.root / "m"), str(b.table(b.row)), "--out", str(b.out)], r"not found", "m"),
    Case("model folder is a file", lambda b: b.write("m", "x") and ["predict", str(b.root / "m"), str(b.table(b.row)), "--out", str(b.out)], r"is a file", "m"),
    Case("model folder empty", lambda b: (b.root / "m").mkdir() or ["predict", str(b.root / "m"), str(b.table(b.row)), "--out", str(b.out)], r"not a napari-spahgc model folder", "m"),
    Case("config.json corrupt", lambda b: _model_folder(b, lambda f: (f / "config.json").write_text("{oops")), r"config\.json", "model"),
    Case("config.json not UTF-8", lambda b: _model_folder(b, lambda f: (f / "config.json").write_bytes(b"\xff\xfe{}")), r"config\.json", "model"),
    Case("gene renamed", lambda b: _model_folder(b, _edit_config(lambda c: c["genes"].__setitem__(0, "ERBB2"))), r"edited", "model"),
    Case("gene dropped", lambda b: _model_folder(b, _edit_config(lambda c: c["genes"].pop())), r"edited", "model"),
    Case("option edited", lambda b: _model_folder(b, _edit_config(lambda c: c["model_options"].__setitem__("hidden", 8))), r"edited", "model"),
    Case("manifest removed", lambda b: _model_folder(b, _edit_config(lambda c: c.pop("manifest"))), r"manifest", "model"),
    Case("weights truncated", lambda b: _model_folder(b, _truncate), r"model\.safetensors", "model"),
    Case("weights bit flip", lambda b: _model_folder(b, _flip_byte), r"model\.safetensors", "model"),
    # options
    Case("unknown method", lambda b: b.command("benchmark", "--methods", "nonsense"), r"unknown method\(s\) nonsense", None),
    Case("--set unknown option", lambda b: b.command("train", "--set", "colour=blue"), r"colour", None),
    Case("--set bad value", lambda b: b.command("train", "--set", "hidden=abc"), r"hidden", None),
    Case("--set value out of range", lambda b: b.command("train", "--set", "masking=foo"), r"masking must be one of", None),
    Case("--set without spahgc", lambda b: b.command("benchmark", "--methods", "ridge", "--set", "k=3"), r"apply to the 'spahgc' method", None),
    Case("--genes and --n-hvg", lambda b: b.command("train", "--genes", str(b.root / "spots.csv")), r"exactly one of --genes", None),
    Case("unknown preset", lambda b: b.command("train", "--preset", "fastest"), r"fastest", None),
    Case("--mode auto (no mode since dense is every slide's default)", lambda b: b.command("embed", "--mode", "auto"), r"unknown embedding mode 'auto'; choose one of dense, spot", None),
]
# fmt: on


def _cut_jpeg(b: Inputs) -> Path:
    from PIL import Image

    path = b.root / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:5000])
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``spahgc ARGS`` through the console entry point, in this process; (exit code, stderr)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    patcher = pytest.MonkeyPatch()
    patcher.setattr("sys.argv", ["spahgc", *args])
    try:
        with pytest.raises(SystemExit) as exited:
            cli.main()
    finally:
        patcher.undo()
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers are given back
    return exited.value.code, capsys.readouterr().err


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_the_suite_is_large_enough():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_with_a_message(case, tmp_path, capsys, monkeypatch):
    inputs = Inputs(tmp_path)
    monkeypatch.setenv("SPAHGC_CACHE_DIR", str(inputs.cache))
    args = case.build(inputs)
    before = _files(tmp_path)
    code, stderr = run_cli(args, capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr and stderr.count("\n") <= 8, stderr
    assert re.search(case.message, stderr), stderr
    assert case.names is None or str(tmp_path / case.names) in stderr, stderr
    written = _files(tmp_path) - before
    assert all(inputs.out in p.parents or inputs.cache in p.parents for p in written), written
    assert not [p for p in _files(tmp_path) if p.name.endswith(".part")]
    assert not (inputs.out / "PWNED").exists()


# ------------------------------------------------------------------------------------------ slide ids


def test_slide_ids_never_climb_out_of_the_output_or_cache_folder(tmp_path, capsys, monkeypatch):
    """Ids with ``..``, an absolute path and a separator: every file lands directly in --out or the
    cache, under the id's safe file-name form, and the outputs keep the ids as given."""
    inputs = Inputs(tmp_path)
    monkeypatch.setenv("SPAHGC_CACHE_DIR", str(inputs.cache))
    ids = ["../../../x", str(tmp_path / "elsewhere" / "x"), "P1/S1"]
    cohort = inputs.table(*({**inputs.row, "slide_id": slide_id} for slide_id in ids))
    (tmp_path / "panel.txt").write_text("\n".join(GENES))
    before = _files(tmp_path)
    model = ["train", str(cohort), "--out", str(tmp_path / "model"), "--genes", str(tmp_path / "panel.txt"),
             "--epochs", "2", "--cache", str(inputs.cache)]  # fmt: skip
    assert run_cli(model, capsys)[0] == 0
    predict = [
        "predict",
        str(tmp_path / "model"),
        str(cohort),
        "--out",
        str(inputs.out),
        "--cache",
        str(inputs.cache),
    ]
    assert run_cli(predict, capsys)[0] == 0
    allowed = {inputs.out, inputs.cache, tmp_path / "model"}
    written = _files(tmp_path) - before
    assert written and all(p.parent in allowed for p in written), sorted(map(str, written))
    predictions = sorted(inputs.out.glob("*.h5ad"))
    assert len(predictions) == 3 and not (tmp_path / "elsewhere").exists()
    libraries = [next(iter(ad.read_h5ad(p).uns["spatial"].values())) for p in predictions]
    assert {library["metadata"]["slide_id"] for library in libraries} == set(ids)


# ------------------------------------------------------------------------------------------ interrupts


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupts_stop_cleanly(signum, code, tmp_path):
    """A stop signal mid-embedding: exit 128 + signal, no temporary file, no half-written cache entry."""
    import subprocess
    import sys
    import threading
    import time

    rng = np.random.default_rng(0)
    write_ome_pyramid(tmp_path / "he.ome.tif", rng.integers(0, 255, (1200, 1200, 3), dtype=np.uint8), 0.5)
    centres = rng.uniform(100, 1100, size=(600, 2))
    (tmp_path / "spots.csv").write_text(
        "spot_id,x,y\n" + "".join(f"s{i},{x},{y}\n" for i, (x, y) in enumerate(centres))
    )
    (tmp_path / "cohort.csv").write_text(HEADER + "\nA,he.ome.tif,spots.csv,,,\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_spahgc.cli", "embed", str(tmp_path / "cohort.csv"), "--cache", str(tmp_path / "cache"),
         "--mode", "spot"],  # 600 patches: still embedding when the signal comes
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("embedding" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(5)  # the encoder is loaded and patches are being embedded
    process.send_signal(signum)
    process.wait(timeout=60)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert process.returncode == code, stderr
    assert f"interrupted ({signal.Signals(signum).name})" in stderr and "Traceback" not in stderr
    assert not list(tmp_path.rglob("*.part"))
    for finished in tmp_path.rglob("*.npz"):  # only if a library swallowed the interrupt: then complete
        assert np.load(finished)["embeddings"].shape == (600, 1280)


def test_repeated_10x_gene_symbols_are_renamed_with_a_warning(tmp_path, capsys, monkeypatch):
    """10x matrices can repeat gene symbols: accepted, and the user is told which were renamed."""
    inputs = Inputs(tmp_path)
    monkeypatch.setenv("SPAHGC_CACHE_DIR", str(inputs.cache))
    code, stderr = run_cli([*_tenx_with_duplicate_genes(inputs), "--json"], capsys)
    assert code == 0, stderr
    assert re.search(r"m\.h5: 1 gene name\(s\) occur more than once \(G1\).*renamed", stderr), stderr
