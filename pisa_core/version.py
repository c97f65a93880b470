"""The pack's version, from one home: the `version` of pyproject.toml, as installed (package
metadata) or, when the pack is used without installing it (a ComfyUI custom_nodes checkout), read
from the pyproject.toml beside the package. No network."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "comfyui-pisa-sr"  # [project] name in pyproject.toml
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
UNKNOWN = "unknown"


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return pyproject_version(PYPROJECT)


def pyproject_version(path: Path) -> str:
    """The `version = "..."` of the [project] table (UNKNOWN when the file or the key is missing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return UNKNOWN
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    found = project and re.search(r"^version\s*=\s*[\"']([^\"']+)[\"']", project[1], re.MULTILINE)
    return found[1] if found else UNKNOWN
