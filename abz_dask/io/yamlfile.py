"""Reading the YAML configuration files of every stage, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["flat_errors", "read_mapping"]


def read_mapping(path: str | Path, what: str = "configuration",
                 error: type[Exception] = ValueError) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``).

    Parameters
    ----------
    path : path
        The YAML file.
    what : str
        What the file is, for the messages (e.g. ``"training profile"``).
    error : exception class
        Raised, with the file named in the message, when the file is missing, is not valid YAML
        or does not hold a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {what} file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{p}: a {what} must be a YAML mapping, got {type(data).__name__}")
    return data


def flat_errors(err: ValidationError, prefix: str = "", tags: tuple[str, ...] = ()) -> str:
    """A pydantic error as one line per problem, ``key.path: reason (value …)``, joined by
    ``; ``: unknown and missing keys by name, no pydantic links or type codes. ``tags`` are the
    names pydantic gives the members of a tagged union, which are not keys of the file."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "" and p not in tags)
        msg = str(e["msg"]).removeprefix("Value error, ")
        if not loc:  # a check across keys: the message names them
            lines.append(msg)
        elif e["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r}")
        elif e["type"] == "missing":
            lines.append(f"missing key {loc!r}")
        else:
            lines.append(f"{loc}: {msg} (value {e.get('input')!r})")
    return "; ".join(lines)
