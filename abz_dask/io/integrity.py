"""Outputs that verify themselves: a digest of every file a stage wrote, checked before use.

When a stage finishes, the runner records :func:`digest_outputs` of its outputs in the stage
record (``RUN/<stage>.stage.json``, key ``outputs_digest``: relative path → ``[size, sha256]``
of every file, Zarr chunks included). :func:`check_digest` finds missing, truncated, altered
and unexpected files and names them as a Zarr user thinks of them (store, variable, chunk). The
runner checks a finished stage's outputs before it skips the stage (a damaged output is rebuilt,
never used), consumers check a flux store before they read it (:func:`verify_store`), and
``abz-dask verify RUN`` checks a whole run.

Cost: one read of every output byte, hashed in threads (SHA-256 runs at ≈ 1–2 GB s⁻¹ per core),
so a 0.5 TB 1-km flux store takes minutes on a node — small next to the hundreds of core-hours
that made it. Results are cached per process for unchanged files (same size and mtime).
On object storage the content fingerprint is the object's ETag (``etag:<value>``, computed by
the server when the object was written), so checking reads no data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from abz_dask.io.location import Location, as_path, filesystem, is_url
from abz_dask.io.versioned import is_icechunk_repo, main_snapshot

__all__ = ["DamagedOutputError", "check_digest", "describe", "digest_outputs", "relative",
           "summarize", "verify_store"]

_SKIP_PREFIX = ".abz-dask"
_REPO = "icechunk:main@"
_CACHE: dict[tuple[str, int, int], str] = {}


class DamagedOutputError(ValueError):
    """A finished output no longer matches the digest recorded when it was written."""


def _files(path: Location) -> Iterable[Location]:
    if is_icechunk_repo(path):  # recorded by its snapshot (_repo_digest), not its files
        return
    if is_url(path):
        fs, key = filesystem(path)
        for name in sorted(fs.find(key)):
            if not name.rsplit("/", 1)[-1].startswith(_SKIP_PREFIX):
                yield path / name[len(key):].lstrip("/") if name != key else path
        return
    if path.is_file():
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith(_SKIP_PREFIX):
                yield Path(root) / name


def _size_and_sum(path: Location) -> tuple[int, str]:
    """Size and content fingerprint: SHA-256 of a local file, the ETag of an object."""
    if is_url(path):
        fs, key = filesystem(path)
        info = fs.info(key)
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
        return int(info["size"]), "etag:" + str(tag).strip('"')
    return path.stat().st_size, _sha256(path)


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def relative(path: Location, root: Location) -> str:
    """``path`` relative to ``root`` (POSIX form) if inside it, else its absolute path."""
    p, r = str(path), str(root).rstrip("/")
    return p[len(r) + 1:] if p.startswith(r + "/") else p


def _absolute(path: Any) -> Location:
    p = as_path(path)
    return p if is_url(p) else Path(p).absolute()


def digest_outputs(paths: Sequence[str | os.PathLike[str]], root: str | os.PathLike[str]
                   ) -> dict[str, list[int | str]]:
    """``{relative path: [size, sha256]}`` of every file under ``paths`` (files or folders).

    Paths inside ``root`` are keyed relative to it, others by their absolute path.
    """
    root = _absolute(root)
    files = [f for p in paths if as_path(p).exists() for f in _files(_absolute(p))]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        sums = list(pool.map(_size_and_sum, files))
    repos = {relative(_absolute(p), root): _repo_digest(p) for p in paths if is_icechunk_repo(p)}
    return {**{relative(f, root): [size, s] for f, (size, s) in zip(files, sums, strict=True)},
            **repos}


def _repo_digest(path: Any) -> list[int | str]:
    """An Icechunk repository's entry: ``[0, "icechunk:main@<snapshot id>"]`` (its snapshots
    are immutable; tags added later are releases, not damage)."""
    return [0, f"{_REPO}{main_snapshot(path)}"]


def describe(rel: str) -> str:
    """Name a file of a run the way a user thinks of it: ``fluxes.zarr variable NEE chunk
    0.3.1`` for a Zarr chunk, the path otherwise."""
    parts = rel.split("/")
    for i, part in enumerate(parts):
        if part.endswith(".zarr") and i + 1 < len(parts):
            store, rest = "/".join(parts[:i + 1]), parts[i + 1:]
            if rest == ["zarr.json"]:
                return f"{store} root metadata"
            if len(rest) >= 2 and rest[1] == "c":
                return f"{store} variable {rest[0]} chunk {'.'.join(rest[2:])}"
            if rest[1:] == ["zarr.json"]:
                return f"{store} variable {rest[0]} metadata"
    return rel


def check_digest(recorded: dict[str, list[int | str]], root: str | os.PathLike[str] | Location,
                 outputs: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """Problems of the files in ``recorded`` (missing, size or content changed) and of files
    under ``outputs`` that were not recorded; empty when everything matches.

    Only sizes are compared for files whose size changed; content hashes are computed for the
    rest (in threads).
    """
    root = _absolute(root)

    def where(rel: str) -> Location:
        return as_path(rel) if is_url(rel) or Path(rel).is_absolute() else root / rel

    def check(item: tuple[str, list[int | str]]) -> str | None:
        rel, (size, digest) = item
        p = where(rel)
        if str(digest).startswith(_REPO):
            if not is_icechunk_repo(p):
                return f"{rel}: Icechunk repository missing"
            now_sid = cast(str, _repo_digest(p)[1])  # [0, "icechunk:main@<id>"]
            return None if now_sid == digest else (
                f"{rel}: branch main is at snapshot {now_sid[len(_REPO):]}, the stage "
                f"committed {str(digest)[len(_REPO):]}")
        try:
            now, fingerprint = _size_and_sum(p)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return f"{describe(rel)}: missing ({rel})"
        if now != size:
            return f"{describe(rel)}: size {now} bytes, was {size} ({rel})"
        return None if fingerprint == digest else f"{describe(rel)}: content changed ({rel})"

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        problems = [m for m in pool.map(check, sorted(recorded.items())) if m]
    for out in outputs:
        if as_path(out).exists():
            problems += [f"{describe(r)}: not written by the stage ({r})"
                         for f in _files(_absolute(out)) if (r := relative(f, root))
                         not in recorded]
    return problems


def summarize(problems: list[str], limit: int = 8) -> str:
    """One message listing the first ``limit`` problems and how many more there are."""
    more = f"\n  … and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n  " + "\n  ".join(problems[:limit]) + more


def verify_store(path: str | os.PathLike[str] | Location) -> None:
    """Check a store against the digest of the stage that wrote it, if a stage record in its
    folder (or the one above) lists it.

    Raises
    ------
    DamagedOutputError
        A file of the store is missing, truncated or altered, or was added.
    """
    path = _absolute(path)
    for folder in (path.parent, path.parent.parent):
        for rec in sorted(folder.glob("*.stage.json")):
            try:
                digest = json.loads(rec.read_text()).get("outputs_digest") or {}
            except (OSError, ValueError):
                continue
            rel = relative(path, folder)
            mine = {k: v for k, v in digest.items() if k == rel or k.startswith(rel + "/")}
            if mine:
                problems = check_digest(mine, folder, [path])
                if problems:
                    raise DamagedOutputError(
                        f"{path} does not match what stage {rec.name.split('.')[0]!r} wrote "
                        f"(recorded in {rec}):{summarize(problems)}\nrerun the pipeline to "
                        "rebuild it")
                return
