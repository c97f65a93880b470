"""The one place that talks to ComfyUI (`comfy.*`, `folder_paths`).

Inside ComfyUI it uses the host's device choice, model management, progress bar, interrupt flag
and model folders. Without ComfyUI (tests, plain Python) it falls back to plain torch: the CPU
(or `PISA_SR_DEVICE`), no model management, progress as a no-op, never interrupted, and model
folders under `PISA_SR_MODELS_DIR` (default `./models`) or added with `add_fallback_folder`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..pisa_core.errors import PiSAError

try:  # ComfyUI present: these modules are already imported by the server.
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _cu
    import folder_paths as _fp
except ImportError:  # plain Python: the fallbacks below are used.
    _mm = _patcher = _cu = _fp = None

IN_COMFY = _fp is not None
LOG = logging.getLogger("PiSA-SR")

PISA_FOLDER = "pisa_sr"
PISA_EXTENSIONS = {".pkl", ".safetensors"}
CHECKPOINT_EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft"}
DIFFUSERS_PREFIX = "[diffusers] "

_fallback_folders: dict[str, list[Path]] = {}


class Interrupted(Exception):
    """Raised by the fallback when a test asks for cancellation (ComfyUI raises its own)."""


# ---------------------------------------------------------------- model folders


def register_model_folders() -> None:
    """Register `models/pisa_sr` (extensions .pkl/.safetensors) so extra_model_paths.yaml works too."""
    if not IN_COMFY:
        return
    default = os.path.join(_fp.models_dir, PISA_FOLDER)
    _fp.add_model_folder_path(PISA_FOLDER, default)
    paths, exts = _fp.folder_names_and_paths[PISA_FOLDER]
    # A folder first created by extra_model_paths.yaml has an empty extension set (= any file).
    _fp.folder_names_and_paths[PISA_FOLDER] = (paths, set(exts) | PISA_EXTENSIONS)


def add_fallback_folder(kind: str, path) -> None:
    """Without ComfyUI: add a search folder for `checkpoints`, `diffusers` or `pisa_sr` (first wins)."""
    _fallback_folders.setdefault(kind, []).insert(0, Path(path))


def folder_paths_for(kind: str) -> list[Path]:
    if IN_COMFY:
        try:
            return [Path(p) for p in _fp.get_folder_paths(kind)]
        except KeyError:
            return []
    root = Path(os.environ.get("PISA_SR_MODELS_DIR", "models"))
    return [*_fallback_folders.get(kind, []), root / kind]


def _files_in(kind: str, extensions: set[str]) -> list[str]:
    if IN_COMFY:
        return [f for f in _fp.get_filename_list(kind) if Path(f).suffix.lower() in extensions]
    found = set()
    for folder in folder_paths_for(kind):
        if folder.is_dir():
            for p in folder.rglob("*"):
                if p.is_file() and p.suffix.lower() in extensions:
                    found.add(p.relative_to(folder).as_posix())
    return sorted(found)


def _diffusers_folders() -> list[str]:
    found = set()
    for folder in folder_paths_for("diffusers"):
        if not folder.is_dir():
            continue
        for index in folder.rglob("model_index.json"):
            found.add(index.parent.relative_to(folder).as_posix())
        for unet_cfg in folder.glob("*/unet/config.json"):
            found.add(unet_cfg.parent.parent.relative_to(folder).as_posix())
    return sorted(found)


def base_model_choices() -> list[str]:
    """Single-file checkpoints by name, then diffusers folders as '[diffusers] name'."""
    return _files_in("checkpoints", CHECKPOINT_EXTENSIONS) + [DIFFUSERS_PREFIX + d for d in _diffusers_folders()]


def pisa_weight_choices() -> list[str]:
    return _files_in(PISA_FOLDER, PISA_EXTENSIONS)


def resolve_base_model(name: str) -> Path:
    """Full path of a base-model choice; PiSAError naming the folders searched when it is missing."""
    if name.startswith(DIFFUSERS_PREFIX):
        rel = name[len(DIFFUSERS_PREFIX):]
        return _find("diffusers", rel, want_dir=True)
    return _find("checkpoints", name, want_dir=False)


def resolve_pisa_weights(name: str) -> Path:
    return _find(PISA_FOLDER, name, want_dir=False)


def _find(kind: str, rel: str, want_dir: bool) -> Path:
    folders = folder_paths_for(kind)
    for folder in folders:
        candidate = folder / rel
        if (candidate.is_dir() if want_dir else candidate.is_file()):
            return candidate
    where = ", ".join(str(f) for f in folders) or f"(no '{kind}' folder registered)"
    raise PiSAError(f"Model '{rel}' was not found in the '{kind}' model folders ({where}); put it there and refresh.")


# ---------------------------------------------------------------- devices, dtypes, memory


def compute_device() -> torch.device:
    if IN_COMFY:
        return _mm.get_torch_device()
    return torch.device(os.environ.get("PISA_SR_DEVICE", "cpu"))


def offload_device() -> torch.device:
    if IN_COMFY:
        return _mm.unet_offload_device()
    return torch.device("cpu")


def auto_dtype(device: torch.device) -> torch.dtype:
    """fp16 where the host prefers it (the release runs fp16), else bf16, else fp32."""
    if IN_COMFY:
        if _mm.should_use_fp16(device):
            return torch.float16
        if _mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float32
    return torch.float16 if device.type == "cuda" else torch.float32


def wrap_for_management(module: torch.nn.Module, load: torch.device, offload: torch.device):
    """Hand a module tree to ComfyUI's model management; None without ComfyUI."""
    if not IN_COMFY:
        return None
    return _patcher.ModelPatcher(module, load_device=load, offload_device=offload)


def load_to_device(handle, memory_required: int = 0) -> None:
    """Ask ComfyUI to place the weights on the compute device (evicting others if needed)."""
    if handle is not None:
        # Full load: our modules have no ComfyUI cast ops, so a partial (low-VRAM) load would
        # leave some weights on the CPU.
        _mm.load_models_gpu([handle], memory_required=memory_required, force_full_load=True)


def free_cache() -> None:
    if IN_COMFY:
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return IN_COMFY and _mm.OOM_EXCEPTION is not Exception and isinstance(error, _mm.OOM_EXCEPTION)


# ---------------------------------------------------------------- progress and cancel

_fallback_interrupt = False


def request_interrupt(value: bool = True) -> None:
    """Without ComfyUI: make the next progress update raise `Interrupted` (tests use it)."""
    global _fallback_interrupt
    if IN_COMFY:
        _mm.interrupt_current_processing(value)
    else:
        _fallback_interrupt = value


def check_interrupt() -> None:
    """Raise the host's interrupt exception when the user pressed Cancel."""
    global _fallback_interrupt
    if IN_COMFY:
        _mm.throw_exception_if_processing_interrupted()
    elif _fallback_interrupt:
        _fallback_interrupt = False
        raise Interrupted("processing interrupted")


class Progress:
    """Node-level progress over several stages; `stage(n)` gives a `progress(done, total)` callable.

    Every update is an interruption point, so Cancel stops within one tile.
    """

    def __init__(self, total_steps: int = 1):
        self.total = max(1, int(total_steps))
        self.done = 0
        self.bar = _cu.ProgressBar(self.total) if IN_COMFY else None

    def _set(self, value: int) -> None:
        self.done = min(value, self.total)
        if self.bar is not None:
            self.bar.update_absolute(self.done, self.total)
        check_interrupt()

    def stage(self, share: int = 1):
        """A callback for one stage worth `share` steps of the node's total."""
        start = self.done

        def progress(done: int, total: int) -> None:
            frac = done / total if total else 1.0
            self._set(start + round(frac * share))

        return progress

    def advance(self, steps: int = 1) -> None:
        self._set(self.done + steps)
