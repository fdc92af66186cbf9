"""Versioned stores: Icechunk repositories on a local disk or object storage.

An Icechunk repository holds a Zarr hierarchy under version control: writes happen in a
*session* and become visible to readers only when the session is committed, as one snapshot
on a branch (``main``). Each commit of the package carries metadata naming the stage that made
it, the stage's settings hash, its input identities and the package version
(:func:`commit_metadata`); a release is a tag on a snapshot. Readers open a read-only session
at ``main`` (the last committed snapshot), a tag or a snapshot id (:func:`readonly_session`),
so a killed writer never exposes half a stage.

Locations are those of :mod:`abz_dask.io.location`: a local path
(``icechunk.local_filesystem_storage``), ``s3://bucket/prefix`` (``AWS_*`` environment,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible servers, region from
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``), ``gs://bucket/prefix`` and
``az://container/prefix`` (account from ``AZURE_STORAGE_ACCOUNT_NAME``); credentials always come
from the environment, never from the location.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from abz_dask import __version__
from abz_dask.io.location import as_path, is_url, redact, url

if TYPE_CHECKING:
    import icechunk
    import xarray as xr

__all__ = ["BRANCH", "commit_metadata", "history", "is_icechunk_repo", "main_snapshot",
           "open_repo", "readonly_session", "resolve_version", "storage", "tag", "tags",
           "write_template"]

BRANCH = "main"
"""The branch every stage commits to; readers see its tip."""


def _quiet() -> None:
    """Silence Icechunk's warning that local-disk repositories do not arbitrate concurrent
    commits (the package's locks do), unless the user set ``ICECHUNK_LOG``."""
    import icechunk

    if "ICECHUNK_LOG" not in os.environ:
        icechunk.set_logs_filter("icechunk=error")


def storage(location: Any) -> icechunk.Storage:
    """The Icechunk storage of a location (see the module docstring for the schemes).

    Raises
    ------
    ValueError
        An unsupported URL scheme, or an ``az://`` location without
        ``AZURE_STORAGE_ACCOUNT_NAME``.
    """
    import icechunk

    _quiet()
    if not is_url(location):
        return icechunk.local_filesystem_storage(str(as_path(location).absolute()))
    text = url(location)
    scheme, _, rest = text.partition("://")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    scheme = scheme.lower()
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                  or "us-east-1")
        return icechunk.s3_storage(bucket=bucket, prefix=prefix, region=region,
                                   endpoint_url=endpoint,
                                   allow_http=bool(endpoint and endpoint.startswith("http://")),
                                   force_path_style=endpoint is not None, from_env=True)
    if scheme in ("gs", "gcs"):
        return icechunk.gcs_storage(bucket=bucket, prefix=prefix, from_env=True)
    if scheme in ("az", "abfs", "abfss"):
        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        if "@" in bucket:  # abfs://container@account.dfs.core.windows.net/prefix
            bucket, _, host = bucket.partition("@")
            account = host.split(".")[0]
        if not account:
            raise ValueError(f"{redact(text)}: set AZURE_STORAGE_ACCOUNT_NAME to the storage "
                             "account of the container")
        return icechunk.azure_storage(account=account, container=bucket, prefix=prefix,
                                      from_env=True)
    raise ValueError(f"{redact(text)}: no Icechunk storage for scheme {scheme!r}; use a local "
                     "path, s3://, gs:// or az://")


def is_icechunk_repo(location: Any) -> bool:
    """Whether ``location`` holds an Icechunk repository (its ``refs/`` and ``snapshots/``
    folders), without opening it."""
    p = as_path(location)
    try:
        return (p / "refs").exists() and (p / "snapshots").exists()
    except OSError:
        return False


def open_repo(location: Any, *, create: bool = False) -> icechunk.Repository:
    """Open the repository at ``location`` (created if absent and ``create``).

    Raises
    ------
    FileNotFoundError
        No repository there and not ``create``.
    """
    import icechunk

    st = storage(location)
    if create:
        return icechunk.Repository.open_or_create(st)
    if not icechunk.Repository.exists(st):
        raise FileNotFoundError(f"no Icechunk repository at {redact(url(location))}")
    return icechunk.Repository.open(st)


def commit_metadata(stage: str, config_hash: str | None = None,
                    inputs: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """The metadata of a stage's commit: ``stage``, ``config_hash`` (the stage record's key),
    ``inputs`` (name → identity) and ``abz_dask_version``, plus ``extra`` items."""
    return {"stage": stage, "config_hash": config_hash, "inputs": dict(inputs or {}),
            "abz_dask_version": __version__, **extra}


def tags(location: Any) -> dict[str, str]:
    """Tag name → snapshot id of the repository at ``location``."""
    repo = open_repo(location)
    return {t: repo.lookup_tag(t) for t in sorted(repo.list_tags())}


def main_snapshot(location: Any) -> str:
    """The snapshot id at the tip of :data:`BRANCH`."""
    return str(open_repo(location).lookup_branch(BRANCH))


def resolve_version(repo: icechunk.Repository, version: str | None, where: str = "") -> str:
    """The snapshot id of ``version``: ``None`` (the tip of :data:`BRANCH`), a tag name or a
    snapshot id.

    Raises
    ------
    ValueError
        ``version`` is neither a tag nor a snapshot of the repository (naming the tags).
    """
    if version is None or version == BRANCH:
        return str(repo.lookup_branch(BRANCH))
    known = sorted(repo.list_tags())
    if version in known:
        return str(repo.lookup_tag(version))
    try:
        return str(repo.lookup_snapshot(version).id)
    except Exception:  # icechunk raises IcechunkError or ValueError for a bad id
        raise ValueError(f"{where or 'repository'}: version {version!r} is neither a tag "
                         f"({', '.join(known) or 'none'}) nor a snapshot id") from None


def readonly_session(location: Any, version: str | None = None) -> icechunk.Session:
    """A read-only session at ``version`` (see :func:`resolve_version`)."""
    repo = open_repo(location)
    sid = resolve_version(repo, version, redact(url(location)))
    return repo.readonly_session(snapshot_id=sid)


def tag(location: Any, name: str, snapshot: str | None = None) -> str:
    """Tag ``snapshot`` (default: the tip of :data:`BRANCH`) as ``name``; returns its id.

    Raises
    ------
    FileExistsError
        A tag ``name`` exists already (tags are never moved).
    """
    repo = open_repo(location)
    if name in repo.list_tags():
        raise FileExistsError(f"{redact(url(location))}: tag {name!r} exists already "
                              f"(snapshot {repo.lookup_tag(name)})")
    sid = snapshot or str(repo.lookup_branch(BRANCH))
    repo.create_tag(name, sid)
    return sid


def history(location: Any, branch: str = BRANCH) -> list[dict[str, Any]]:
    """The commits of ``branch``, newest first: ``id``, ``time`` (UTC, ISO), ``message`` and
    ``metadata``; the repository's initial empty snapshot is left out."""
    repo = open_repo(location)
    out = []
    for info in repo.ancestry(branch=branch):
        if info.parent_id is None:
            continue
        when: datetime = info.written_at
        out.append({"id": info.id, "time": when.isoformat(timespec="seconds"),
                    "message": info.message, "metadata": dict(info.metadata)})
    return out


def write_template(template: xr.Dataset, store: Any) -> None:
    """Write the metadata and coordinates of the lazy ``template`` into a Zarr store object
    (a session's store), replacing what the root group held, with the encoding of
    :func:`abz_dask.io.store.create_store`: the template's dask chunks as store chunks, NaN
    fill value for floats, text coordinates as variable-length strings and the provenance
    attributes at the root."""
    from abz_dask.io.store import provenance

    encoding: dict[str, dict[str, Any]] = {}
    for name, var in template.data_vars.items():
        enc: dict[str, Any] = {"chunks": tuple(c[0] for c in var.chunks)} if var.chunks else {}
        if np.issubdtype(var.dtype, np.floating):
            enc["_FillValue"] = np.nan
        encoding[str(name)] = enc
    text = {k: v.astype(object) for k, v in template.coords.items() if v.dtype.kind == "U"}
    template = template.assign_coords(text)
    template.attrs = {**provenance(), **template.attrs}
    template.to_zarr(store, mode="w", compute=False, encoding=encoding, zarr_format=3,
                     consolidated=False)
