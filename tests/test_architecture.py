"""The import contracts in pyproject.toml ([tool.importlinter]) hold, and they can fail.

`lint-imports` builds the import graph with grimp (imports inside functions count too) and checks
the contracts: the stages import only downwards, the core never imports Qt, and what napari's
process imports never loads torch. The second test plants a forbidden import into a copy of the
package and checks that the copy, not the installed tree, is what gets analysed and rejected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_spahgc"

LAYERS = "Stages import only downwards"
NO_QT = "The core never imports Qt"
NO_TORCH = "What napari's process imports never loads torch"

# What the lint-imports console script runs; going through sys.executable keeps it to this venv.
LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
)


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run lint-imports in `cwd` (it reads the config it finds there) and return what it said."""
    env = dict(os.environ, COLUMNS="250", NO_COLOR="1")  # wide: no wrapped chains in the report
    if pythonpath is not None:
        # PYTHONPATH comes before site-packages, so it wins over the editable install's .pth entry.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _importlinter_toml() -> str:
    """The [tool.importlinter] tables of pyproject.toml, as text."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        header = line.strip()
        if header.startswith("["):
            inside = header.strip("[]").startswith("tool.importlinter")
        if inside:
            kept.append(line)
    section = "\n".join(kept) + "\n"
    # what we cut out is exactly the section the real run reads
    assert tomllib.loads(section)["tool"]["importlinter"] == tomllib.loads(text)["tool"]["importlinter"]
    return section


def test_import_contracts_hold():
    result = _lint_imports(ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"lint-imports found broken import contracts:\n{output}"
    for name in (LAYERS, NO_QT, NO_TORCH):
        assert f"{name} KEPT" in output, output


@pytest.mark.parametrize(
    ("module", "planted", "contract", "named"),
    [
        pytest.param(
            "base/progress.py",
            "from napari_spahgc.train import trainer  # planted\n",
            LAYERS,
            "napari_spahgc.base.progress -> napari_spahgc.train.trainer",
            id="back-import",
        ),
        pytest.param(
            "model/config.py",
            "import qtpy  # planted\n",
            NO_QT,
            "napari_spahgc.model.config -> qtpy",
            id="qt-in-core",
        ),
        pytest.param(
            "io/planted_torch.py",
            "import torch  # planted\n",
            NO_TORCH,
            "napari_spahgc.io.planted_torch -> torch",
            id="torch-in-io",
        ),
        pytest.param(
            "planted_stage.py",
            '"""A new top-level module that no layer names."""  # planted\n',
            LAYERS,
            "napari_spahgc.planted_stage",
            id="module-outside-layers",
        ),
    ],
)
def test_planted_import_breaks_a_contract(tmp_path, module, planted, contract, named):
    src = tmp_path / "src"
    copy = src / "napari_spahgc"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    existing = target.read_text(encoding="utf-8") if target.exists() else ""
    target.write_text(existing.rstrip("\n") + ("\n" if existing else "") + planted, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(_importlinter_toml(), encoding="utf-8")

    result = _lint_imports(tmp_path, pythonpath=src)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the planted import in {module} broke no contract:\n{output}"
    assert f"{contract} BROKEN" in output, output
    # the planted line exists only in the copy: naming it proves the copy was analysed
    assert named in output, output
