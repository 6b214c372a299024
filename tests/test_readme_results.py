"""The README's results table is the committed benchmark report's, rendered by the script (a table
edited by hand, or a report changed without re-rendering, fails here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "readme_results.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_the_readme_shows_the_committed_report():
    result = _run("--check")
    assert result.returncode == 0, result.stderr
    report = json.loads((ROOT / "docs" / "results" / "her2st_benchmark.json").read_text())
    spahgc = report["methods"]["spahgc"]
    assert f"{spahgc['pcc_mean']:.3f} ± {spahgc['pcc_sd']:.3f}" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("edit", ["table", "report"])
def test_a_hand_edited_table_or_a_changed_report_is_caught(tmp_path, edit):
    readme, report = tmp_path / "README.md", tmp_path / "report.json"
    readme.write_text((ROOT / "README.md").read_text())
    data = json.loads((ROOT / "docs" / "results" / "her2st_benchmark.json").read_text())
    if edit == "table":
        spahgc = data["methods"]["spahgc"]
        text = readme.read_text()
        assert f"| {spahgc['pcc_mean']:.3f} ± " in text
        readme.write_text(text.replace(f"| {spahgc['pcc_mean']:.3f} ± ", "| 0.999 ± ", 1))
    else:
        data["methods"]["spahgc"]["pcc_mean"] += 0.01
    report.write_text(json.dumps(data))
    assert _run(str(report), "--readme", str(readme), "--check").returncode == 1
    assert _run(str(report), "--readme", str(readme)).returncode == 0  # rendering repairs it
    assert _run(str(report), "--readme", str(readme), "--check").returncode == 0
    assert readme.read_text().count("<!-- results:begin -->") == 1
