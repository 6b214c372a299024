"""``python -m napari_spahgc.cli``: the ``spahgc`` command."""

from napari_spahgc.cli import main

main()
