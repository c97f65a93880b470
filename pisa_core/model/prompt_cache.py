"""A small on-disk cache of the empty-prompt embedding, per base model.

PiSA-SR conditions the UNet on the embedding of the empty prompt only (docs/release.md,
"Inference"), a [1, 77, D] constant of the base model. Computing it needs the text encoder (1.3 GB
for SD2.1), so it is kept in the user's cache folder, keyed by the identity of the files it came
from (path, size, modification time), and the text encoder is loaded only the first time. A
read-only or missing cache folder is not an error: the embedding is then computed every time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save

from ..errors import PiSAError
from ..files.atomic import atomic_output
from ..files.tensors import SafetensorsFile

log = logging.getLogger(__name__)

CACHE_ENV = "PISA_SR_CACHE_DIR"
VERSION = "1"  # bump when the way the embedding is computed changes


def cache_dir() -> Path:
    """$PISA_SR_CACHE_DIR, else $XDG_CACHE_HOME/pisa-sr, else ~/.cache/pisa-sr."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "pisa-sr"


def identity(files) -> str:
    """A key for the embedding made from these files: resolved paths, sizes, mtimes."""
    digest = hashlib.sha256(f"pisa-sr prompt v{VERSION}".encode())
    for path in sorted(Path(f).resolve() for f in files):
        stat = path.stat()
        digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_dir() / f"empty-prompt-{key}.safetensors"


def load(key: str) -> torch.Tensor | None:
    """The cached embedding (float32, CPU), or None when absent or unreadable."""
    path = _path(key)
    if not path.is_file():
        return None
    try:
        embeds = SafetensorsFile(path, "a cached prompt embedding").get("embeds")
    except (PiSAError, KeyError):
        log.debug("pisa-sr: ignoring the unreadable prompt cache %s", path)
        return None
    return embeds.float() if embeds.dim() == 3 and embeds.shape[0] == 1 else None


def store(key: str, embeds: torch.Tensor, source: str) -> None:
    """Write atomically (temporary file + rename); a failure only costs the next load time."""
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as f:
            f.write(save({"embeds": embeds.detach().float().cpu().contiguous()},
                         metadata={"source": source, "version": VERSION}))
    except (OSError, PiSAError) as exc:
        log.debug("pisa-sr: prompt cache not written (%s)", exc)
