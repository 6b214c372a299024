"""Which native libraries survive being loaded into napari's process after its first frame?

For each entry, a fresh process creates and shows a viewer, draws a frame (OpenGL context; with Mesa
its LLVM), then imports the modules and runs a little work with them, then draws again. Prints one row
per entry: the exit code (-11 is a segmentation fault) and seconds. Run under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/native_after_gl.py

``no triton`` entries put ``sys.modules["triton"] = None`` first (torch then reports no triton).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

CHECKS = {
    "triton": "import triton",
    "torch (matmul)": "import torch; torch.randn(64, 64) @ torch.randn(64, 64)",
    "torch_geometric": "import torch_geometric",
    "no triton: torch_geometric": "sys.modules['triton'] = None; import torch_geometric",
    "no triton: timm + torchvision (build a model)": (
        "sys.modules['triton'] = None; import timm, torchvision; timm.create_model('efficientnet_lite0')"
    ),
    "scipy (cKDTree)": "from scipy.spatial import cKDTree; import numpy; cKDTree(numpy.random.rand(99, 2))",
    "scikit-learn (Ridge)": "from sklearn.linear_model import Ridge; import numpy; Ridge().fit(numpy.eye(3), [1, 2, 3])",
    "h5py + anndata": "import h5py, anndata",
    "numba (JIT compile)": "import numba; numba.njit(lambda x: x + 1)(1)",
    "scanpy": "import scanpy",
}

TEMPLATE = """
import sys
import napari, numpy
viewer = napari.Viewer(show=True)
viewer.add_image(numpy.random.rand(256, 256))
viewer.screenshot(flash=False)
{code}
viewer.screenshot(flash=False)
viewer.close()
"""


def main() -> None:
    print("| loaded after the first frame | exit code | seconds |")
    print("|---|---|---|")
    for label, code in CHECKS.items():
        started = time.perf_counter()
        script = textwrap.dedent(TEMPLATE).format(code=code)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True)
        outcome = (
            "0 (ok)"
            if done.returncode == 0
            else f"{done.returncode}" + (" (segmentation fault)" if done.returncode == -11 else "")
        )
        print(f"| {label} | {outcome} | {time.perf_counter() - started:.1f} |")


if __name__ == "__main__":
    main()
