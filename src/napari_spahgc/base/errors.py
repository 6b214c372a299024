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


def describe(error: BaseException) -> str:
    """``error`` for a message or notification: an :class:`InputError` as it is, anything else as its
    type and the first line of its text (never a traceback)."""
    if isinstance(error, InputError):
        return str(error)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
