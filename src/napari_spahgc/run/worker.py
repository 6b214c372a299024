"""Run a progress generator in a separate Python process, streaming what it yields back.

Why: the napari process must never load torch's native stack. Importing ``torch_geometric`` pulls in
``torch._dynamo`` and through it ``triton``, whose native library segfaults a process in which Mesa's
LLVM is already loaded (any viewer drawn with software or radeonsi OpenGL). A child process has no
OpenGL context, keeps the viewer responsive while torch holds the cores, and a crash in it becomes an
exception here, not a dead viewer. See docs/architecture.md.

Protocol: the parent starts ``python -m napari_spahgc.run.worker`` and writes a random key to its stdin;
the child listens on a local address (a Unix socket or a named pipe), prints the address, and the
parent connects with that key (multiprocessing's HMAC-authenticated connection, so only this parent
can talk to the child). The parent sends ``(sys.path, "module:function", args, kwargs)``; the child
calls the function, which returns a generator, and sends ``("progress", item)`` for every item,
then ``("result", value)``, ``("error", type name, message, is_input_error)`` or ``("cancelled",)``.
A ``"cancel"`` from the parent is honoured between two items: the child closes the generator (its
``finally`` blocks run, so no half-written file is left) and exits. The child also exits when the
parent's end of its stdin closes, so a parent that dies never leaves a child behind.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Generator
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from signal import Signals
from typing import Any

from napari_spahgc.base.errors import InputError
from napari_spahgc.base.progress import Progress

CANCEL = "cancel"
_POLL_S = 0.1
_EXIT_GRACE_S = 30.0  # a cancel is honoured at the child's next item


class WorkerProcessError(Exception):
    """The child process failed: an exception in the task, or the process died without an answer.

    Not a ``RuntimeError``: napari's generator workers return a ``RuntimeError`` as a result instead of
    reporting it as an error.
    """


def run_in_child(
    flow: Callable[..., Generator], *args: Any, cancel: threading.Event | None = None, **kwargs: Any
) -> Generator[Any, None, Any]:
    """Run ``flow(*args, **kwargs)`` (a module-level generator function, imported in the child by its
    module and name: a renamed flow fails where it is named, not in the child) in a new Python process;
    yield what it yields and return what it returns.

    Setting ``cancel`` stops the child between two of its items; this generator then yields the last
    item once more (a :class:`Progress` if there was none, so a napari worker sees its abort flag) and returns ``None``. An
    :class:`InputError` in the child is raised here as an :class:`InputError` with the same message;
    any other failure, a crash included, as :class:`WorkerProcessError`.
    """
    target = importable_name(flow)
    key = secrets.token_bytes(32)
    process = subprocess.Popen(
        [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    connection: Connection | None = None
    address = ""
    try:
        address = _handshake(process, key)
        connection = _connect(process, address, key)
        connection.send((list(sys.path), target, args, kwargs))
        last, cancel_sent = None, False
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                connection.send(CANCEL)
                cancel_sent = True
            if not connection.poll(_POLL_S):
                continue
            try:
                kind, *payload = connection.recv()
            except (EOFError, ConnectionError) as err:
                raise WorkerProcessError(_ended(process)) from err
            if kind == "progress":
                last = payload[0]
                yield last
            elif kind == "result":
                return payload[0]
            elif kind == "error":
                name, message, is_input = payload
                raise InputError(message) if is_input else WorkerProcessError(f"{name}: {message}")
            else:  # cancelled: the child closed its generator and is exiting
                _stop(process, connection)
                yield last if last is not None else Progress(0, 1, "cancelled")
                return None
    finally:
        _stop(process, connection)
        _remove_socket_folder(address)  # left behind when the worker was killed


def importable_name(flow: Callable) -> str:
    """``"package.module:function"`` of a module-level function, which the child imports."""
    module, name = getattr(flow, "__module__", None), getattr(flow, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in name or "." in name:
        raise ValueError(f"{flow!r} is not a module-level function a worker process can import")
    return f"{module}:{name}"


def _handshake(process: subprocess.Popen, key: bytes) -> str:
    """Hand the worker its key on stdin; return the address it then prints and listens on."""
    process.stdin.write(key.hex().encode() + b"\n")
    process.stdin.flush()
    address = process.stdout.readline().decode().strip()
    process.stdout.close()
    if not address:
        raise WorkerProcessError(_ended(process))
    return address


def _connect(process: subprocess.Popen, address: str, key: bytes) -> Connection:
    try:
        return Client(address, authkey=key)
    except OSError as err:  # the worker died between printing its address and accepting
        raise WorkerProcessError(_ended(process)) from err


def _remove_socket_folder(address: str) -> None:
    """Remove the private folder of a Unix-socket address (multiprocessing's ``pymp-*``); the worker
    removes it when it exits normally, not when it is killed."""
    folder = Path(address).parent
    if address and os.path.isabs(address) and folder.name.startswith("pymp-"):
        shutil.rmtree(folder, ignore_errors=True)


def _stop(process: subprocess.Popen, connection: Connection | None) -> None:
    """Let the child finish (asking it to cancel if it is still working), then make sure it is gone."""
    if process.poll() is None and connection is not None and not connection.closed:
        with contextlib.suppress(OSError, ValueError):
            connection.send(CANCEL)
    try:
        process.wait(_EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    finally:
        if connection is not None:
            connection.close()
        if process.stdin and not process.stdin.closed:
            process.stdin.close()


def _ended(process: subprocess.Popen) -> str:
    try:
        code = process.wait(_EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    how = f"was killed by {Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return f"the worker process {how} before it finished (its error output is in the terminal)"


# ------------------------------------------------------------------------------------ child side
def _watch_parent(address: str) -> None:
    """Exit as soon as the parent's end of stdin closes (the parent finished, or died)."""
    while os.read(0, 4096):  # raw reads: a buffered reader's lock would trouble interpreter shutdown
        pass
    _remove_socket_folder(address)
    os._exit(3)


def _serve(connection: Connection) -> None:
    paths, target, args, kwargs = connection.recv()
    sys.path[:] = paths
    module, _, name = target.partition(":")
    try:
        generator = getattr(importlib.import_module(module), name)(*args, **kwargs)
        while True:
            if connection.poll() and connection.recv() == CANCEL:
                generator.close()
                connection.send(("cancelled",))
                return
            try:
                item = next(generator)
            except StopIteration as stop:
                connection.send(("result", stop.value))
                return
            connection.send(("progress", item))
    except Exception as err:
        traceback.print_exc()
        connection.send(("error", type(err).__name__, str(err), isinstance(err, InputError)))


def main() -> None:
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            return
        line += chunk
    key = bytes.fromhex(line.decode().strip())
    with Listener(authkey=key) as listener:
        threading.Thread(target=_watch_parent, args=(str(listener.address),), daemon=True).start()
        print(listener.address, flush=True)
        os.dup2(2, 1)  # stray prints of the task go to stderr, never into the parent's pipe
        with listener.accept() as connection:
            _serve(connection)


if __name__ == "__main__":
    main()
