"""The top-level napari.yaml is the one manifest, in editable and in wheel installs alike."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.resources import files

from conftest import REPO


def test_installed_manifest_is_the_top_level_file():
    installed = files("napari_spahgc").joinpath("napari.yaml").read_text()
    assert installed == (REPO / "napari.yaml").read_text()


def test_wheel_carries_the_manifest_and_console_script(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("napari_spahgc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("napari_spahgc/napari.yaml").decode() == (REPO / "napari.yaml").read_text()
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        text = archive.read(entry_points).decode()
    assert "napari-spahgc = napari_spahgc:napari.yaml" in text
    assert "spahgc = napari_spahgc.cli:main" in text
