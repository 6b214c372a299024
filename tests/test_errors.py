"""InputError: the offending path first, then the problem, as the CLI, the API and napari show it."""

from __future__ import annotations

import pickle
from pathlib import Path

from napari_spahgc import InputError


def test_the_message_names_the_file_then_the_problem():
    error = InputError("cannot read image", Path("/data/he.tif"))
    assert str(error) == "/data/he.tif: cannot read image"
    assert error.path == "/data/he.tif" and error.problem == "cannot read image"
    assert isinstance(error, ValueError)  # callers that catch bad values catch it
    bare = InputError("no slide is loaded")
    assert str(bare) == "no slide is loaded" and bare.path is None
    assert str(pickle.loads(pickle.dumps(bare))) == "no slide is loaded"
