"""Per-spot labels (a pathologist's or an author's tissue domains) and the agreement of domains with
them: adjusted Rand index and normalised mutual information (scikit-learn).

A labels file is a CSV or TSV table (``.csv``, ``.tsv``, ``.txt``, each optionally ``.gz``) with a
header. Its spot ids are the column ``spot_id`` (or ``barcode``, ``spot``, ``id``), else its first
column; its labels the column ``label`` (or ``domain``, ``annotation``, ``cluster``), else its second.
It joins to a slide's spots by id; when no id matches and the table has array columns ``x`` and ``y``,
by the legacy-ST id ``"{x}x{y}"`` built from them (the HER2ST annotation files name spots by pixel
position, the slide by array position).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.files import require_file

ID_COLUMNS = ("spot_id", "barcode", "spot", "id")
LABEL_COLUMNS = ("label", "domain", "annotation", "cluster")
JOIN_RULE = (
    "spots join by id (column spot_id, barcode, spot or id, else the first column), or by the "
    "legacy-ST id '{x}x{y}' from array columns x and y"
)


def read_labels(path: str | Path) -> pd.DataFrame:
    """The table as strings: columns ``id``, ``label`` and, when present, ``x`` and ``y``; rows without
    a label dropped."""
    path = require_file(path, "labels file")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    separator = "," if suffixes[-1:] == [".csv"] else "\t"
    try:
        table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=True)
    except (UnicodeDecodeError, pd.errors.ParserError, OSError, EOFError) as error:
        raise InputError(
            f"{path}: not a readable {'CSV' if separator == ',' else 'TSV'} table ({error})"
        ) from None
    columns = {str(c).strip().lower(): c for c in table.columns}
    id_column = next(
        (columns[c] for c in ID_COLUMNS if c in columns), table.columns[0] if len(table.columns) else None
    )
    label_column = next((columns[c] for c in LABEL_COLUMNS if c in columns), None)
    if label_column is None and len(table.columns) >= 2:
        label_column = table.columns[1]
    if id_column is None or label_column is None or label_column == id_column:
        raise InputError(f"{path}: needs a spot-id column and a label column ({', '.join(LABEL_COLUMNS)})")
    labels = pd.DataFrame({"id": table[id_column].str.strip(), "label": table[label_column].str.strip()})
    for axis in ("x", "y"):
        if axis in columns:
            labels[axis] = table[columns[axis]]
    labels = labels[labels["label"].notna() & (labels["label"] != "")]
    if labels.empty:
        raise InputError(f"{path}: no row has a label (column {label_column!r})")
    return labels.reset_index(drop=True)


def labels_for(spot_ids, table: pd.DataFrame, path: str | Path = "labels file") -> pd.Series:
    """The label of each of ``spot_ids`` (NaN where the table has none), joined by the rule of
    :data:`JOIN_RULE`. No spot matched is an :class:`InputError` naming the rule and example ids."""
    spot_ids = pd.Index(np.asarray(spot_ids).astype(str))
    by_id = table.drop_duplicates("id").set_index("id")["label"]
    joined = by_id.reindex(spot_ids)
    if joined.notna().any():
        return pd.Series(joined.to_numpy(), index=spot_ids, name="label")
    if {"x", "y"} <= set(table.columns):
        array = table.assign(id=_array_ids(table)).dropna(subset=["id"])
        joined = array.drop_duplicates("id").set_index("id")["label"].reindex(spot_ids)
        if joined.notna().any():
            return pd.Series(joined.to_numpy(), index=spot_ids, name="label")
    raise InputError(
        f"{path}: none of its {len(table)} spots matches the slide's {len(spot_ids)} spots ({JOIN_RULE}); "
        f"the slide's ids look like {', '.join(spot_ids[:3])}, the file's like {', '.join(table['id'][:3])}"
    )


def agreement(domains, labels: pd.Series) -> dict:
    """ARI and NMI of ``domains`` against ``labels`` over the spots that have a label."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    known = labels.notna().to_numpy()
    found = np.asarray(domains).astype(str)[known]
    truth = labels.to_numpy()[known].astype(str)
    return {
        "ari": float(adjusted_rand_score(truth, found)),
        "nmi": float(normalized_mutual_info_score(truth, found)),
        "n_spots": int(known.sum()),
        "n_labels": len(np.unique(truth)),
    }


def score_line(values: str, score: dict) -> str:
    """One agreement as people read it: ``predicted: ARI 0.152, NMI 0.252 (176 labelled spots)``."""
    return f"{values}: ARI {score['ari']:.3f}, NMI {score['nmi']:.3f} ({score['n_spots']} labelled spots)"


def _array_ids(table: pd.DataFrame) -> pd.Series:
    """``"{x}x{y}"`` from whole-number array columns (None where either is not one)."""
    x, y = (pd.to_numeric(table[axis], errors="coerce") for axis in ("x", "y"))
    whole = x.notna() & y.notna() & (x == x.round()) & (y == y.round())
    ids = pd.Series(None, index=table.index, dtype=object)
    ids[whole] = x[whole].astype(int).astype(str) + "x" + y[whole].astype(int).astype(str)
    return ids
