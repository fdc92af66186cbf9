"""One writer per output: a lock beside (or inside) what a command writes.

A second ``abz-dask run`` on the same run folder, or a second upscale into the same flux store,
is refused with :class:`LockedError` naming the holder (host, pid, command, start time) instead
of interleaving with the first. The lock is an advisory ``flock`` on a small file, so the
operating system releases it when its owner dies: a lock left by a killed run is stale and is
simply taken over. Locks are re-entrant within one process, so a stage runner holding the run
folder's lock can call library functions that lock their own stores.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LockedError", "hold", "lock_path"]

_HELD: dict[Path, int] = {}


class LockedError(RuntimeError):
    """Another live process holds the lock of an output."""


def lock_path(target: str | os.PathLike[str], *, inside: bool = False) -> Path:
    """The lock file of ``target``: ``<target>/.abz-dask.lock`` (a run folder, ``inside``) or
    ``<target>.lock`` beside it (a store, which may not exist yet)."""
    target = Path(target)
    return target / ".abz-dask.lock" if inside else target.with_name(target.name + ".lock")


@contextlib.contextmanager
def hold(target: str | os.PathLike[str], what: str = "output", *, inside: bool = False
         ) -> Iterator[Path]:
    """Hold the lock of ``target`` (see :func:`lock_path`) for the duration of the block.

    Raises
    ------
    LockedError
        A live process holds it.
    """
    lock = lock_path(target, inside=inside).absolute()
    if _HELD.get(lock):
        _HELD[lock] += 1
        try:
            yield lock
        finally:
            _HELD[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                info = {}
            raise LockedError(
                f"{what} {target} is in use by pid {info.get('pid', '?')} on "
                f"{info.get('host', '?')} since {info.get('since', '?')} "
                f"({info.get('command', '?')}); wait for it to finish") from None
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "command": " ".join(sys.argv)[:300],
                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        _HELD[lock] = 1
        try:
            yield lock
        finally:
            _HELD.pop(lock, None)
    finally:
        os.close(fd)  # releases the flock
