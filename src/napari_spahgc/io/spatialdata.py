"""SpatialData zarr stores in and out (the ``spatialdata`` extra).

In: a store as ``spatialdata-io`` writes Visium / Visium HD (or one a user assembled the same way) is
read one element at a time: the table (obs at opening; counts only when asked), the shapes it annotates
(circles or squares), and the finest image sharing a coordinate system with them, as a lazy pyramid.
Spot centres are mapped into that image's pixels through both elements' transformations; the pixel
size is the spots' real size over their size in those pixels. ``STORE.zarr::ELEMENT`` names a table
or a shapes element when the store has several (HD's 2 / 8 / 16 µm tables).

Out: :func:`to_spatialdata` makes a store of predictions — the H&E as a multiscale image, the spots
as circles of their real radius (HD bins as squares or as a labels raster), and a table annotating
them with the predicted genes, the measured layer and the per-gene columns; :func:`write_spatialdata`
writes it atomically, the table's X streamed from a backed h5ad block by block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd

from napari_spahgc.base.errors import InputError, describe
from napari_spahgc.base.files import atomic_folder
from napari_spahgc.io.slide import VISIUM_SPOT_DIAMETER_UM, SlideImage, spot_grid

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: ``STORE.zarr::ELEMENT``: the element (a table, or the shapes or labels it annotates) to read.
ELEMENT_SEPARATOR = "::"
#: The coordinate system of the stores we write: full-resolution pixels of the slide's image.
COORDINATE_SYSTEM = "global"
TABLE = "table"
REGION_KEY = "region"
INSTANCE_KEY = "instance_id"
#: How binned spots are written: ``auto`` = a labels raster for bins, circles for spots.
BIN_SHAPES = ("auto", "squares", "raster")
#: Rows of X per zarr chunk when a table is streamed from a backed h5ad.
_ROWS_PER_CHUNK = 1 << 14
#: The coarsest pyramid level written: no side below this many pixels (unless level 0 is smaller).
_COARSEST_SIDE = 256
_BIN_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*um", re.IGNORECASE)
_INSTALL = "SpatialData stores need the spatialdata extra: pip install 'napari-spahgc[spatialdata]'"


def check_bins(bins: str) -> None:
    """An unknown way of drawing binned spots is an error (before any work, where a flow checks it)."""
    if bins not in BIN_SHAPES:
        raise InputError(f"bins must be one of {', '.join(BIN_SHAPES)}, got {bins!r}")


def _spatialdata():
    try:
        import spatialdata
    except ImportError as err:
        raise InputError(f"{_INSTALL} ({describe(err)})") from None
    return spatialdata


# ---------------------------------------------------------------------------------------------- paths


def split_store(path: str | Path) -> tuple[Path, str | None]:
    """``STORE.zarr::ELEMENT`` → (store, element); a plain store path → (store, None)."""
    text = str(path)
    if ELEMENT_SEPARATOR in text:
        store, element = text.rsplit(ELEMENT_SEPARATOR, 1)
        return Path(store), element.strip() or None
    return Path(text), None


def is_store(path: str | Path) -> bool:
    """Whether ``path`` (with or without ``::ELEMENT``) is a SpatialData zarr store."""
    store, _ = split_store(path)
    if not store.is_dir():
        return False
    for name in ("zarr.json", ".zattrs"):
        meta = store / name
        if meta.is_file() and "spatialdata_attrs" in meta.read_text(errors="replace"):
            return True
    return store.suffix.lower() == ".zarr" and any(
        (store / g).is_dir() for g in ("tables", "shapes", "images")
    )


def store_name(path: str | Path) -> str:
    """A slide id for a store: its folder name without ``.zarr``, and the element when one is named."""
    store, element = split_store(path)
    name = store.name[: -len(".zarr")] if store.name.lower().endswith(".zarr") else store.name
    return f"{name}_{element}" if element else name


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class StoreSpots:
    """What a store gives a slide: ids, centres in the image's pixels, counts when asked, the image."""

    store: Path
    table: str
    region: str
    spot_ids: pd.Index
    centers_px: np.ndarray
    spot_diameter_px: float
    pixel_size_um: float | None
    pixel_size_source: str | None
    image: SlideImage | None
    image_element: str | None
    counts: ad.AnnData | None = None


def read_store(path: str | Path, with_counts: bool = True) -> StoreSpots:
    """Read the spots of ``STORE.zarr[::ELEMENT]``: the table annotating spots — shapes (circles,
    squares) or a labels raster — (the named one, or the only one), their centres mapped into the
    finest image sharing a coordinate system with them (none: centres in the spots' own units), its
    pyramid (lazy), and the counts when ``with_counts``."""
    import zarr

    store, element = split_store(path)
    if not store.is_dir():
        raise InputError("SpatialData store not found", store)
    try:
        root = zarr.open_group(store, mode="r")
    except Exception as err:
        raise InputError(f"cannot open the SpatialData store ({describe(err)})", store) from None
    elements = {kind: sorted(root[kind].group_keys()) if kind in root else [] for kind in _KINDS}
    table, region, attrs = _choose_table(root, store, element, elements)
    obs = _read(root, f"tables/{table}/obs", store)
    rows = np.ones(len(obs), dtype=bool)
    if attrs["region_key"] in obs:
        rows = (obs[attrs["region_key"]].astype(str) == region).to_numpy()
    obs = obs[rows]
    instances = obs.get(attrs["instance_key"])
    if instances is None:
        raise InputError(
            f"table {table!r} lacks its instance column {attrs['instance_key']!r} (spatialdata_attrs)", store
        )
    if region in elements["shapes"]:
        spots = _read_shapes(store, region)
        centres, size, circles = _shape_centres(spots, pd.Index(instances.to_numpy()), table, store)
    else:
        spots = _read_labels(store, region)
        centres, size, circles = _label_centres(spots, instances.to_numpy(), table, store)
    image, image_element, to_pixels = _image_for(store, region, spots)
    centres = centres @ to_pixels[:2, :2].T + to_pixels[:2, 2]
    scale = float(np.sqrt(abs(np.linalg.det(to_pixels[:2, :2]))))
    uns = _read(root, f"tables/{table}/uns", store) if "uns" in root[f"tables/{table}"] else {}
    pixel_size, source = _pixel_size(uns, table, region, size, circles, scale)
    found = StoreSpots(
        store=store,
        table=table,
        region=region,
        spot_ids=pd.Index(obs.index.astype(str)),
        centers_px=centres,
        spot_diameter_px=size * scale,
        pixel_size_um=pixel_size,
        pixel_size_source=source,
        image=image,
        image_element=image_element,
    )
    if with_counts:
        found.counts = _counts(root, store, table, rows, found.spot_ids)
    return found


_KINDS = ("images", "labels", "points", "shapes", "tables")
#: The kinds of element a table of spots may annotate.
_SPOT_KINDS = ("shapes", "labels")


def _read(root, key: str, store: Path):
    from anndata.io import read_elem

    try:
        return read_elem(root[key])
    except Exception as err:
        raise InputError(f"cannot read {key} ({describe(err)})", store) from None


def _choose_table(root, store: Path, element: str | None, elements: dict) -> tuple[str, str, dict]:
    """(table, region, spatialdata_attrs): the table annotating the spots (shapes or labels) that
    ``element`` names (a table or a spots element), or the only one."""
    listing = (
        "; ".join(f"{kind}: {', '.join(names)}" for kind, names in elements.items() if names) or "nothing"
    )
    if not elements["tables"]:
        raise InputError(f"the store has no table (it holds {listing}): spots need a table", store)
    spot_elements = [name for kind in _SPOT_KINDS for name in elements[kind]]
    annotated = {}
    for name in elements["tables"]:
        if "uns" not in root[f"tables/{name}"] or "spatialdata_attrs" not in root[f"tables/{name}/uns"]:
            continue
        attrs = _read(root, f"tables/{name}/uns/spatialdata_attrs", store)
        regions = [attrs["region"]] if isinstance(attrs["region"], str) else list(attrs["region"])
        annotated[name] = (attrs, [r for r in regions if r in spot_elements], regions)
    if element is not None and element not in annotated:
        if element in spot_elements:
            table = next((t for t, (_, spots, _) in annotated.items() if element in spots), None)
            if table is None:
                raise InputError(f"no table annotates the element {element!r}", store)
            return table, element, annotated[table][0]
        kind = next((kind for kind, names in elements.items() if element in names), None)
        if kind is not None:
            raise InputError(
                f"{element!r} is one of the store's {kind}: name a table, or the shapes or labels it annotates",
                store,
            )
        raise InputError(f"the store has no element {element!r} (it holds {listing})", store)
    if element is None:
        candidates = [name for name, value in annotated.items() if value[1]]
        if not candidates:
            described = ", ".join(f"{name} → {', '.join(v[2])}" for name, v in annotated.items()) or "none"
            raise InputError(
                f"no table annotates shapes or labels (tables annotate: {described}; shapes and labels: "
                f"{', '.join(spot_elements) or 'none'})",
                store,
            )
        if len(candidates) > 1:
            raise InputError(
                f"the store has several tables of spots ({', '.join(candidates)}): name one as "
                f"{store}{ELEMENT_SEPARATOR}TABLE",
                store,
            )
        element = candidates[0]
    attrs, spots, regions = annotated[element]
    if not spots:
        raise InputError(
            f"table {element!r} annotates {', '.join(regions)}, not shapes or labels of the store (spots "
            f"need circles, squares or a labels raster: {', '.join(spot_elements) or 'none'})",
            store,
        )
    if len(spots) > 1:
        raise InputError(
            f"table {element!r} annotates several elements ({', '.join(spots)}): name one as "
            f"{store}{ELEMENT_SEPARATOR}ELEMENT",
            store,
        )
    return element, spots[0], attrs


def _read_shapes(store: Path, name: str):
    """One shapes element (a GeoDataFrame with its transformations), not every one in the store: an HD
    store's 2 µm bins are millions of polygons."""
    from spatialdata._io.io_shapes import _read_shapes as read_shapes_element

    try:
        return read_shapes_element(store / "shapes" / name)
    except Exception as err:
        raise InputError(f"cannot read shapes {name!r} ({describe(err)})", store) from None


def _read_labels(store: Path, name: str):
    """One labels element (lazy)."""
    sd = _spatialdata()
    try:
        return sd.read_zarr(store, selection=("labels",)).labels[name]
    except Exception as err:
        raise InputError(f"cannot read labels {name!r} ({describe(err)})", store) from None


def _shape_centres(geometry, instances: pd.Index, table: str, store: Path) -> tuple[np.ndarray, float, bool]:
    """Centres (n, 2) of the table's spots in the shapes' units, their median diameter (circles) or
    side (squares) in those units, and whether they are circles."""
    import shapely

    where = geometry.index.get_indexer(instances)
    _check_instances(where >= 0, instances.to_numpy(), table, store)
    shapes = geometry.geometry.to_numpy()[where]
    kinds = set(shapely.get_type_id(shapes[: min(len(shapes), 1000)]))
    if kinds == {0}:  # points with a radius: circles
        if "radius" not in geometry:
            raise InputError("the shapes are points without a radius column (not circles)", store)
        radius = float(np.median(geometry["radius"].to_numpy()[where]))
        return shapely.get_coordinates(shapes), 2 * radius, True
    centres = shapely.get_coordinates(shapely.centroid(shapes))
    return centres, float(np.sqrt(np.median(shapely.area(shapes)))), False


def _label_centres(labels, instances: np.ndarray, table: str, store: Path) -> tuple[np.ndarray, float, bool]:
    """Centres of the table's label values in the raster's units (a pixel's centre is its index + ½)
    and the side of a label's square of the same area: one pass over the raster's chunks."""
    raster = labels if not hasattr(labels, "children") else labels["scale0"]["image"]
    data = raster.data
    ids = np.asarray(instances, dtype=np.int64)
    if data.dtype.kind not in "iu" or len(ids) == 0 or ids.min() < 1:
        raise InputError(
            f"table {table!r}'s instances must be positive label values of a labels raster", store
        )
    length = int(max(ids.max(), 0)) + 1
    rows, cols = da.meshgrid(
        da.arange(data.shape[0], chunks=data.chunks[0]) + 0.5,
        da.arange(data.shape[1], chunks=data.chunks[1]) + 0.5,
        indexing="ij",
    )
    flat = da.clip(data.ravel().astype(np.int64), 0, length)
    tallies = [da.bincount(flat, weights=w, minlength=length + 1) for w in (None, cols.ravel(), rows.ravel())]
    count, sum_x, sum_y = (np.asarray(t)[:length] for t in da.compute(*tallies))
    _check_instances(count[ids] > 0, ids, table, store)
    centres = np.stack([sum_x[ids] / count[ids], sum_y[ids] / count[ids]], axis=1)
    return centres, float(np.sqrt(np.median(count[ids]))), False


def _check_instances(found: np.ndarray, instances: np.ndarray, table: str, store: Path) -> None:
    if not found.all():
        raise InputError(
            f"{int((~found).sum())} of table {table!r}'s {len(found)} rows have no spot in the element "
            f"they annotate (e.g. instance {instances[~found][0]!r})",
            store,
        )


def _affine(element, coordinate_system: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    transformation = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), float)


def _image_for(store: Path, region: str, spots) -> tuple[SlideImage | None, str | None, np.ndarray]:
    """The finest image sharing a coordinate system with the spots element, and the affine (3 × 3)
    from its units to that image's full-resolution pixels (identity when the store has no such image)."""
    from spatialdata.transformations import get_transformation

    sd = _spatialdata()
    try:
        images = sd.read_zarr(store, selection=("images",)).images
    except Exception as err:
        raise InputError(f"cannot read the store's images ({describe(err)})", store) from None
    systems = set(get_transformation(spots, get_all=True))
    best = None
    for name, image in images.items():
        for system in systems & set(get_transformation(image, get_all=True)):
            to_system = _affine(image, system)
            pixel = np.sqrt(abs(np.linalg.det(to_system[:2, :2])))  # system units per pixel
            if best is None or pixel < best[0]:
                best = (pixel, name, system, to_system)
    if best is None:
        return None, None, np.eye(3)
    _, name, system, image_to_system = best
    spots_to_system = _affine(spots, system)
    for what, matrix in (
        ("image " + repr(name), image_to_system),
        (repr(region), spots_to_system),
    ):
        if abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
            raise InputError(
                f"the transformation of {what} to coordinate system {system!r} is not invertible", store
            )
    to_pixels = np.linalg.inv(image_to_system) @ spots_to_system
    return _slide_image(images[name], store, name), name, to_pixels


def _slide_image(image, store: Path, name: str) -> SlideImage:
    """A store image (one scale or a multiscale tree) as a :class:`SlideImage` pyramid, lazily."""
    from napari_spahgc.io.images import _as_rgb

    scales = (
        [image]
        if not hasattr(image, "children")
        else [
            next(iter(image[key].data_vars.values()))
            for key in sorted(image.children, key=lambda k: int(k[5:]))
        ]
    )
    axes = "".join(str(d) for d in scales[0].dims).upper()
    where = Path(f"{store}{ELEMENT_SEPARATOR}{name}")
    levels = [_as_rgb(scale.data, axes, where) for scale in scales]
    downsamples = [levels[0].shape[0] / level.shape[0] for level in levels]
    return SlideImage(where, levels, downsamples)


def _pixel_size(uns: dict, table: str, region: str, size: float, circles: bool, scale: float):
    """µm per image pixel: the spots' real size over their size in image pixels (``size`` × ``scale``).
    The real size: the table's Space Ranger scalefactors (spot_diameter_fullres × microns_per_pixel),
    else for squares the bin size in the table's or the element's name, for circles Visium's 55 µm."""
    pixels = size * scale
    for library in (uns.get("spatial") or {}).values():
        factors = library.get("scalefactors", {}) if isinstance(library, dict) else {}
        if factors.get("microns_per_pixel") and factors.get("spot_diameter_fullres"):
            um = float(factors["microns_per_pixel"]) * float(factors["spot_diameter_fullres"])
            return um / pixels, f"{um:.4g} µm spots (the table's scalefactors) over {pixels:.4g} px"
    if circles:
        um = VISIUM_SPOT_DIAMETER_UM
        return um / pixels, f"{um:g} µm Visium spots (circles) over {pixels:.4g} px"
    match = _BIN_SIZE.search(table) or _BIN_SIZE.search(region)
    if match:
        um = float(match.group(1))
        return um / pixels, f"{um:g} µm bins (named {match.group(0)!r}) over {pixels:.4g} px"
    return None, None


def _counts(root, store: Path, table: str, rows: np.ndarray, spot_ids: pd.Index) -> ad.AnnData:
    from napari_spahgc.io.validate import validate_counts

    matrix = _read(root, f"tables/{table}/X", store)
    var = _read(root, f"tables/{table}/var", store)
    if not rows.all():
        matrix = matrix[np.flatnonzero(rows)]
    counts = ad.AnnData(matrix, obs=pd.DataFrame(index=spot_ids), var=pd.DataFrame(index=var.index))
    return validate_counts(counts, f"{store}{ELEMENT_SEPARATOR}{table}", duplicate_genes="rename")


# ---------------------------------------------------------------------------------------------- writing


def to_spatialdata(
    adata: ad.AnnData,
    image: SlideImage | None = None,
    bins: Literal["auto", "squares", "raster"] = "auto",
) -> SpatialData:
    """Predictions (as :func:`napari_spahgc.io.export.spot_anndata` makes them: full-resolution
    ``obsm['spatial']``, ``uns['spatial']`` scalefactors) as SpatialData in full-resolution pixels
    (coordinate system ``global``): ``image`` as a multiscale image, the spots as circles of their
    diameter — bins (spots that tile a square grid) as a labels raster (``bins="auto"`` or
    ``"raster"``) or squares — and a table annotating them: X, var, obsm, varm, layers and uns kept,
    obs gains ``region`` and ``instance_id``. X may be a dask array: it is written block by block."""
    sd = _spatialdata()
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    check_bins(bins)
    library = next(iter(adata.uns.get("spatial", {})), None) or "slide"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", library)
    centres = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    diameter = _diameter(adata, centres)
    grid = spot_grid(centres)
    binned = grid is not None and diameter >= 0.9 * grid[1]
    identity = {COORDINATE_SYSTEM: Identity()}
    instances = np.arange(1, adata.n_obs + 1, dtype=np.int64)
    elements: dict = {"images": {}, "labels": {}, "shapes": {}}
    if binned and bins != "squares":
        region = f"{name}_bins"
        elements["labels"][region] = _bin_raster(grid, instances)
    elif binned:
        import shapely
        from geopandas import GeoDataFrame

        region = f"{name}_bins"
        half = grid[1] / 2
        x, y = centres[:, 0], centres[:, 1]
        squares = GeoDataFrame(geometry=shapely.box(x - half, y - half, x + half, y + half), index=instances)
        elements["shapes"][region] = ShapesModel.parse(squares, transformations=identity)
    else:
        region = f"{name}_spots"
        elements["shapes"][region] = ShapesModel.parse(
            centres,
            geometry=0,
            radius=np.full(len(centres), diameter / 2),
            index=instances,
            transformations=identity,
        )
    if image is not None:
        elements["images"][f"{name}_image"] = _multiscale(image)
    table = ad.AnnData(
        X=adata.X,
        obs=adata.obs.copy(),
        var=adata.var,
        obsm=dict(adata.obsm),
        varm=dict(adata.varm),
        layers=dict(adata.layers),
        uns=dict(adata.uns),
    )
    table.obs[REGION_KEY] = pd.Categorical([region] * adata.n_obs)
    table.obs[INSTANCE_KEY] = instances
    table = TableModel.parse(table, region=region, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return sd.SpatialData(**elements, tables={TABLE: table})


def _diameter(adata: ad.AnnData, centres: np.ndarray) -> float:
    """The spots' diameter in full-resolution pixels: the scalefactors', else half their pitch."""
    from napari_spahgc.io.slide import spot_pitch

    for library in adata.uns.get("spatial", {}).values():
        diameter = library.get("scalefactors", {}).get("spot_diameter_fullres")
        if diameter:
            return float(diameter)
    return spot_pitch(centres, max_queries=5000) / 2


def _bin_raster(grid: tuple[np.ndarray, float, np.ndarray], instances: np.ndarray):
    """A labels raster with one pixel per bin (0 where there is none), placed on the image's pixels."""
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Scale, Sequence, Translation

    index, pitch, origin = grid
    raster = np.zeros(index.max(axis=0) + 1, dtype=np.int32 if instances[-1] < 2**31 else np.int64)
    raster[index[:, 0], index[:, 1]] = instances
    placement = Sequence(
        [
            Scale([pitch, pitch], axes=("y", "x")),
            Translation([origin[1] - pitch / 2, origin[0] - pitch / 2], axes=("y", "x")),
        ]
    )
    return Labels2DModel.parse(
        da.from_array(raster, chunks=2048), dims=("y", "x"), transformations={COORDINATE_SYSTEM: placement}
    )


def _multiscale(image: SlideImage):
    """The image's own pyramid levels (channels first) as a multiscale image in full-resolution
    pixels: nothing is resampled, each level is read once when written."""
    from spatialdata.models import Image2DModel
    from spatialdata.models.pyramids_utils import dask_arrays_to_datatree
    from spatialdata.transformations import Identity, Scale, set_transformation

    kept = [i for i, level in enumerate(image.levels) if i == 0 or min(level.shape[:2]) >= _COARSEST_SIDE]
    arrays = [da.moveaxis(image.levels[i], 2, 0).rechunk((3, 1024, 1024)) for i in kept]
    step = image.downsamples[kept[0]]
    placement = Identity() if step == 1 else Scale([step, step], axes=("y", "x"))
    if len(arrays) == 1:
        element = Image2DModel.parse(arrays[0], dims=("c", "y", "x"), c_coords=["r", "g", "b"])
    else:
        element = dask_arrays_to_datatree(arrays, dims=("c", "y", "x"), channels=["r", "g", "b"])
    set_transformation(element, {COORDINATE_SYSTEM: placement}, set_all=True)
    Image2DModel().validate(element)
    return element


def write_spatialdata(sdata: SpatialData, path: str | Path) -> Path:
    """Write ``sdata`` to the store ``path`` atomically: a temporary store beside it, renamed onto
    ``path`` only when complete (a previous store there is replaced)."""
    import warnings

    path = Path(path)
    with atomic_folder(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
        target = tmp / path.name
        sdata.write(target)
        for entry in target.iterdir():
            entry.rename(tmp / entry.name)
        target.rmdir()
    return path


def write_predictions_store(
    h5ad: str | Path,
    path: str | Path,
    image: SlideImage | None = None,
    bins: Literal["auto", "squares", "raster"] = "auto",
) -> Path:
    """The predictions file ``h5ad`` as a store at ``path`` (:func:`to_spatialdata`), its X streamed
    from the file in row blocks: a Visium HD slide's predictions are never whole in memory."""
    import h5py

    with h5py.File(h5ad, "r") as file:
        adata = ad.read_h5ad(h5ad, backed="r")
        rows = max(1, min(adata.n_obs, _ROWS_PER_CHUNK))
        x = da.from_array(file["X"], chunks=(rows, adata.n_vars))
        loaded = ad.AnnData(
            X=x,
            obs=adata.obs,
            var=adata.var,
            obsm={k: np.asarray(v) for k, v in adata.obsm.items()},
            varm={k: np.asarray(v) for k, v in adata.varm.items()},
            layers={k: adata.layers[k] for k in adata.layers},
            uns=dict(adata.uns),
        )
        adata.file.close()
        return write_spatialdata(to_spatialdata(loaded, image=image, bins=bins), path)
