"""One training at a time per run directory: ``<run>/.train.lock`` names the host and process that trains.

Two ``atomgen train`` commands on the same ``train.output_dir`` (a queue and a benchmark that both resume
a missing model, say) would write each other's checkpoints and exports. The second one is refused, with
the first one's process named. A lock whose process is gone (killed, crashed) is taken over: a killed
run resumes with ``--resume latest`` without any cleanup. :func:`acquire_lock` and :func:`release_lock`
are the same lock on any file, for other work that processes share.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = ".train.lock"


class RunLocked(RuntimeError):
    """Another live process is training the run directory."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir``'s training lock for the ``with`` block (call it on the main process only).

    Raises:
        RunLocked: a live process holds it (on another host: a process atomgen cannot check, so it is
            assumed alive; delete the lock file once that training is known to have stopped).
    """
    path = Path(run_dir) / LOCK
    owner = acquire_lock(path)
    if owner == ("", 0):
        raise RunLocked(f"{run_dir} is being trained: another process has just taken {path}")
    if owner is not None:
        host, pid = owner
        raise RunLocked(
            f"{run_dir} is being trained by process {pid} on {host} ({path}): wait for it to finish "
            "or stop it, then resume with --resume latest"
            + ("" if host == socket.gethostname() else f"; if it has stopped, delete {path}")
        )
    try:
        yield path
    finally:
        release_lock(path)


def acquire_lock(path: str | Path) -> tuple[str, int] | None:
    """Take the lock file ``path`` for this process (its folders are made): ``None`` once taken, else the
    ``(host, pid)`` of the live process that holds it (``("", 0)`` while that one is still writing its
    name). A lock whose process is gone is taken over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            if owner is None and _fresh(path):
                owner = ("", 0)  # being written by a process that has just taken it
            if owner is not None and _alive(owner):
                return owner
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # the lock of a process that is gone
            continue
        with os.fdopen(fd, "w") as file:
            file.write(_me())
        return None


def release_lock(path: str | Path) -> None:
    """Give back the lock file ``path`` when this process holds it (else leave it)."""
    path = Path(path)
    if _read(path) == _parse(_me()):
        path.unlink()


def _me() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _parse(text: str) -> tuple[str, int] | None:
    host, _, pid = text.strip().rpartition(" ")
    return (host, int(pid)) if host and pid.isdigit() else None


def _read(path: Path) -> tuple[str, int] | None:
    try:
        return _parse(path.read_text())
    except FileNotFoundError:
        return None


def _fresh(path: Path, seconds: float = 5.0) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False


def _alive(owner: tuple[str, int]) -> bool:
    host, pid = owner
    if host != socket.gethostname():
        return True  # another machine's process: not checkable from here
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM  # exists, owned by another user
    return True


__all__ = ["LOCK", "RunLocked", "acquire_lock", "release_lock", "run_lock"]
