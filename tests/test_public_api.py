"""The package's public names (``import napari_spahgc as ns``): each resolves to its module's object,
and the four stage flows keep their names although each shares it with its stage's subpackage."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest

import napari_spahgc as ns

FLOWS = {
    "embed": "embed.flow",
    "train": "train.flow",
    "predict": "predict.flow",
    "evaluate": "evaluate.benchmark",
}


def test_every_public_name_is_its_modules_object():
    for name, module in ns._API.items():
        assert getattr(ns, name) is getattr(import_module(f"napari_spahgc.{module}"), name), name
    assert sorted(ns.__all__) == dir(ns) and "__version__" in ns.__all__
    with pytest.raises(AttributeError, match="has no attribute 'fit'"):
        ns.fit  # noqa: B018


@pytest.mark.parametrize("name", FLOWS)
def test_a_flow_keeps_its_name_once_its_subpackage_is_imported(name):
    """Importing ``napari_spahgc.train`` (as every flow's module does) sets the package attribute
    ``train`` to that subpackage; ``ns.train`` must still be the flow, on every look-up."""
    flow = getattr(import_module(f"napari_spahgc.{FLOWS[name]}"), name)
    assert f"napari_spahgc.{name}" in sys.modules
    assert [getattr(ns, name) for _ in range(3)] == [flow] * 3
    module = import_module(f"napari_spahgc.{name}")  # the subpackage stays importable
    assert module.__name__ == f"napari_spahgc.{name}" and module is not flow
    with pytest.raises(AttributeError, match="cannot be replaced"):
        setattr(ns, name, len)


def test_the_flows_keep_their_names_in_a_fresh_process():
    """In a new process, whatever order the flows are first looked up in (predict imports train and
    embed first), each name is the flow every time, and the package import alone loads no torch."""
    code = (
        "import sys, napari_spahgc as ns; assert 'torch' not in sys.modules; "
        "names = ['predict', 'train', 'embed', 'evaluate'] * 2; "
        "print([getattr(ns, n).__module__ for n in names])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = ["predict.flow", "train.flow", "embed.flow", "evaluate.benchmark"] * 2
    assert done.stdout.strip() == str([f"napari_spahgc.{m}" for m in modules])
