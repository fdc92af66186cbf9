"""Reading the YAML configuration files of every stage, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["read_mapping"]


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
