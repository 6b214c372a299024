"""Errors raised for bad user input; each names the file and the problem."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """A user-supplied file or value cannot be used.

    The message always starts with the offending path (when there is one) so that the CLI,
    the Python API and napari notifications can show it as is.
    """

    def __init__(self, problem: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
