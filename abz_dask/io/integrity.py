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
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["DamagedOutputError", "check_digest", "describe", "digest_outputs", "relative",
           "summarize", "verify_store"]

_SKIP_PREFIX = ".abz-dask"
_CACHE: dict[tuple[str, int, int], str] = {}


class DamagedOutputError(ValueError):
    """A finished output no longer matches the digest recorded when it was written."""


def _files(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith(_SKIP_PREFIX):
                yield Path(root) / name


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


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX form) if inside it, else its absolute path."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def digest_outputs(paths: Sequence[str | os.PathLike[str]], root: str | os.PathLike[str]
                   ) -> dict[str, list[int | str]]:
    """``{relative path: [size, sha256]}`` of every file under ``paths`` (files or folders).

    Paths inside ``root`` are keyed relative to it, others by their absolute path.
    """
    root = Path(root).absolute()
    files = [f.absolute() for p in paths if Path(p).exists() for f in _files(Path(p))]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        sums = list(pool.map(_sha256, files))
    return {relative(f, root): [f.stat().st_size, s] for f, s in zip(files, sums, strict=True)}


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


def check_digest(recorded: dict[str, list[int | str]], root: str | os.PathLike[str],
                 outputs: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """Problems of the files in ``recorded`` (missing, size or content changed) and of files
    under ``outputs`` that were not recorded; empty when everything matches.

    Only sizes are compared for files whose size changed; content hashes are computed for the
    rest (in threads).
    """
    root = Path(root).absolute()

    def where(rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else root / p

    problems: list[str] = []
    to_hash: list[tuple[str, Path, str]] = []
    for rel, (size, digest) in sorted(recorded.items()):
        p = where(rel)
        if not p.is_file():
            problems.append(f"{describe(rel)}: missing ({rel})")
        elif p.stat().st_size != size:
            problems.append(f"{describe(rel)}: size {p.stat().st_size} bytes, was {size} "
                            f"({rel})")
        else:
            to_hash.append((rel, p, str(digest)))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        sums = list(pool.map(_sha256, [p for _, p, _ in to_hash]))
    problems += [f"{describe(rel)}: content changed ({rel})"
                 for (rel, _, digest), s in zip(to_hash, sums, strict=True) if s != digest]
    for out in outputs:
        if Path(out).exists():
            problems += [f"{describe(r)}: not written by the stage ({r})"
                         for f in _files(Path(out)) if (r := relative(f.absolute(), root))
                         not in recorded]
    return problems


def summarize(problems: list[str], limit: int = 8) -> str:
    """One message listing the first ``limit`` problems and how many more there are."""
    more = f"\n  … and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n  " + "\n  ".join(problems[:limit]) + more


def verify_store(path: str | os.PathLike[str]) -> None:
    """Check a store against the digest of the stage that wrote it, if a stage record in its
    folder (or the one above) lists it.

    Raises
    ------
    DamagedOutputError
        A file of the store is missing, truncated or altered, or was added.
    """
    path = Path(path).absolute()
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
