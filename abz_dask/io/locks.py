"""One writer per output: a lock beside (or inside) what a command writes.

A second ``abz-dask run`` on the same run folder, or a second upscale into the same flux store,
is refused with :class:`LockedError` naming the holder (host, pid, command, start time) instead
of interleaving with the first. The lock is an advisory ``flock`` on a small file, so the
operating system releases it when its owner dies: a lock left by a killed run is stale and is
simply taken over. Locks are re-entrant within one process, so a stage runner holding the run
folder's lock can call library functions that lock their own stores.

On object storage (a URL target) there is no ``flock``: the lock is an object created with a
conditional write (``If-None-Match: *``, so exactly one of two racing writers gets it) holding
the owner and a heartbeat refreshed every :data:`HEARTBEAT_S` seconds by a thread. It is stale,
and taken over, when its owner is a dead process on this host or its heartbeat is older than
:data:`STALE_S` (an owner on another machine that stopped); the owner deletes it when done.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from abz_dask.io.location import Location, as_path, filesystem, is_url

__all__ = ["HEARTBEAT_S", "STALE_S", "LockedError", "hold", "lock_path"]

HEARTBEAT_S = 20.0
"""Seconds between heartbeats of an object-store lock."""
STALE_S = 120.0
"""Age of the last heartbeat after which an object-store lock of another host is stale."""

_HELD: dict[str, int] = {}


class LockedError(RuntimeError):
    """Another live process holds the lock of an output."""


def lock_path(target: str | os.PathLike[str] | Location, *, inside: bool = False) -> Location:
    """The lock file of ``target``: ``<target>/.abz-dask.lock`` (a run folder, ``inside``) or
    ``<target>.lock`` beside it (a store, which may not exist yet)."""
    target = as_path(target)
    return target / ".abz-dask.lock" if inside else target.with_name(target.name + ".lock")


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "command": " ".join(sys.argv)[:300], "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _locked(what: str, target: Any, info: dict[str, Any]) -> LockedError:
    return LockedError(
        f"{what} {target} is in use by pid {info.get('pid', '?')} on "
        f"{info.get('host', '?')} since {info.get('since', '?')} "
        f"({info.get('command', '?')}); wait for it to finish")


def _stale(info: dict[str, Any]) -> bool:
    """Whether an object-store lock's owner is gone (see the module docstring)."""
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            pass
        else:
            return False
    return time.time() - float(info.get("heartbeat", 0)) > STALE_S


@contextlib.contextmanager
def _hold_remote(lock: Location, target: Any, what: str) -> Iterator[Location]:
    fs, key = filesystem(lock)
    owner = _owner()

    def body() -> bytes:
        return json.dumps({**owner, "heartbeat": time.time()}).encode()

    for _ in range(3):
        try:
            with fs.open(key, "xb") as f:
                f.write(body())
            break
        except FileExistsError:
            try:
                info = json.loads(fs.cat_file(key))
            except FileNotFoundError:
                continue  # released in between
            except ValueError:
                info = {}
            if not _stale(info):
                raise _locked(what, target, info) from None
            fs.rm_file(key)  # a dead owner's lock
    else:
        raise _locked(what, target, {})
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                fs.pipe_file(key, body())

    t = threading.Thread(target=beat, name="abz-dask-lock-heartbeat", daemon=True)
    t.start()
    try:
        yield lock
    finally:
        stop.set()
        t.join()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(key)


@contextlib.contextmanager
def hold(target: str | os.PathLike[str], what: str = "output", *, inside: bool = False
         ) -> Iterator[Location]:
    """Hold the lock of ``target`` (see :func:`lock_path`) for the duration of the block.

    Raises
    ------
    LockedError
        A live process holds it.
    """
    remote = is_url(target)
    lock = lock_path(target, inside=inside)
    lock = lock if remote else Path(lock).absolute()
    name = str(lock)
    if _HELD.get(name):
        _HELD[name] += 1
        try:
            yield lock
        finally:
            _HELD[name] -= 1
        return
    if remote:
        _HELD[name] = 1
        try:
            with _hold_remote(lock, target, what):
                yield lock
        finally:
            _HELD.pop(name, None)
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
            raise _locked(what, target, info) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        _HELD[name] = 1
        try:
            yield lock
        finally:
            _HELD.pop(name, None)
    finally:
        os.close(fd)  # releases the flock
