"""The one place that talks to ComfyUI's runtime (`comfy.*`, `folder_paths`).

`HOST` is a `ComfyHost` inside ComfyUI: the host's device choice, model management, free memory,
progress bar, Cancel button and model folders. Without ComfyUI (tests, plain Python) it is a
`PlainHost`: the CPU (or `PISA_SR_DEVICE`), no model management (the weights stay on that
device), the device's own free memory,
no progress bar, Cancel only through `request_interrupt`, and model folders under
`PISA_SR_MODELS_DIR` (default `./models`) or added with `add_folder`.

What differs between the hosts we support (0.3.64 to 0.33 and later) is read, not assumed:
- `ModelPatcher.get_free_memory(device)` (0.12+) also counts what the dynamic memory manager can
  evict; where it exists it sizes the stages, else `model_management.get_free_memory`.
- `InterruptProcessingException` is a BaseException since 0.20, an Exception before: nothing here
  catches it, and the pipeline's clean-up sits in `finally` blocks.
- Only calls whose signatures are the same on every supported host are made: `ModelPatcher` with
  model, load_device and offload_device (0.38 adds `fast_disk`), `load_models_gpu` (which frees
  memory itself; `free_memory` gained keywords in 0.33 and is not called), `patch_model`,
  `ProgressBar(total).update_absolute(value, total)`.
- Dynamic VRAM (0.16+, NVIDIA): our handle is a plain `ModelPatcher`, never the dynamic
  `CoreModelPatcher`: its weights are loaded fully (our layers are plain torch layers, not the
  `comfy.ops` layers the dynamic manager streams), and ComfyUI unloads other models to fit them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..pisa_core.errors import PiSAError
from ..pisa_core.inference import hardware, memory
from ..pisa_core.inference.progress import Progress

try:  # ComfyUI present: these modules are already imported by the server.
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _cu
    import folder_paths as _fp
except ImportError:  # plain Python: PlainHost below is used.
    _mm = _patcher = _cu = _fp = None

IN_COMFY = _fp is not None
LOG = logging.getLogger("PiSA-SR")

PISA_FOLDER = "pisa_sr"
LORA_FOLDER = "loras"  # other packs and users keep pisa_sr.pkl there too
PISA_EXTENSIONS = {".pkl", ".safetensors"}
DECODER_EXTENSIONS = {".pth", ".pt", ".safetensors"}  # a fast decoder file, also kept in models/pisa_sr
CHECKPOINT_EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft"}
DIFFUSERS_PREFIX = "[diffusers] "


class Interrupted(Exception):
    """Raised by PlainHost when a test asked for cancellation (ComfyUI raises its own)."""


def on_device(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether every parameter and buffer of `module` is on `device`."""
    return all(t.device == device for t in (*module.parameters(), *module.buffers()))


class PlainHost:
    """Without ComfyUI."""

    def __init__(self):
        self.folders: dict[str, list[Path]] = {}
        self.interrupt_requested = False

    # devices and memory
    def compute_device(self) -> torch.device:
        return hardware.parse_device(os.environ.get("PISA_SR_DEVICE", "cpu"))

    def offload_device(self) -> torch.device:
        return self.compute_device()  # no model management: the weights stay where they compute

    def free_memory(self, device: torch.device, handle=None) -> int | None:
        return hardware.free_memory(device)

    def manage(self, module: torch.nn.Module, load: torch.device, offload: torch.device):
        return None

    def load(self, handle, device: torch.device, memory_required: int = 0) -> None:
        return None

    def size_changed(self, handle) -> None:
        return None

    def release_cache(self) -> None:
        memory.release_cached_memory()

    # progress and cancel
    def request_interrupt(self, value: bool = True) -> None:
        self.interrupt_requested = value

    def check_interrupt(self) -> None:
        if self.interrupt_requested:
            self.interrupt_requested = False
            raise Interrupted("processing interrupted")

    def progress(self, total_steps: int) -> Progress:
        return Progress(total_steps, lambda done, total: self.check_interrupt())

    # model folders
    def add_folder(self, kind: str, path) -> None:
        """Add a search folder for `checkpoints`, `diffusers`, `loras` or `pisa_sr` (first wins)."""
        self.folders.setdefault(kind, []).insert(0, Path(path))

    def register_model_folders(self) -> None:
        return None

    def folder_paths(self, kind: str) -> list[Path]:
        root = Path(os.environ.get("PISA_SR_MODELS_DIR", "models"))
        return [*self.folders.get(kind, []), root / kind]

    def files_in(self, kind: str, extensions: set[str]) -> list[str]:
        found = set()
        for folder in self.folder_paths(kind):
            if folder.is_dir():
                for p in folder.rglob("*"):
                    if p.is_file() and p.suffix.lower() in extensions:
                        found.add(p.relative_to(folder).as_posix())
        return sorted(found)


class ComfyHost(PlainHost):
    """Inside ComfyUI; `mm`, `patcher`, `utils`, `fp` are its modules comfy.model_management,
    comfy.model_patcher, comfy.utils and folder_paths."""

    def __init__(self, mm, patcher, utils, fp):
        super().__init__()
        self.mm, self.patcher, self.utils, self.fp = mm, patcher, utils, fp

    def compute_device(self) -> torch.device:
        return self.mm.get_torch_device()

    def offload_device(self) -> torch.device:
        return self.mm.unet_offload_device()

    def free_memory(self, device: torch.device, handle=None) -> int | None:
        if handle is not None and hasattr(handle, "get_free_memory"):  # 0.12+
            return int(handle.get_free_memory(device))
        return int(self.mm.get_free_memory(device))

    def manage(self, module: torch.nn.Module, load: torch.device, offload: torch.device):
        """Hand a module tree to ComfyUI's model management: a plain (non-dynamic) ModelPatcher."""
        return self.patcher.ModelPatcher(module, load_device=load, offload_device=offload)

    def load(self, handle, device: torch.device, memory_required: int = 0) -> None:
        """Ask ComfyUI to place the weights on the compute device, keeping `memory_required`
        bytes free for the stage (other models are offloaded first). Our layers are plain torch
        layers, which ComfyUI's low-VRAM mode cannot stream: in --lowvram / --novram mode, or after
        ComfyUI moved part of them away for another model, they are loaded fully here (through the
        patcher, so its bookkeeping stays right)."""
        self.mm.load_models_gpu([handle], memory_required=memory_required, force_full_load=True)
        self.ensure_loaded(handle, device)

    def ensure_loaded(self, handle, device: torch.device) -> None:
        """Complete a partial load (what --lowvram / --novram leave of plain layers) through the
        patcher's own full load."""
        if not on_device(handle.model, device):
            LOG.info("pisa-sr: ComfyUI loaded the model only partly (low-VRAM mode); it needs all its weights on "
                     "%s and is loaded fully", device)
            handle.patch_model(device_to=device, lowvram_model_memory=0, load_weights=True)

    def size_changed(self, handle) -> None:
        """After a part was switched to float32: ComfyUI caches the model's size; `size` is the
        patcher's constructor field, and 0 makes it measure again."""
        handle.size = 0

    def release_cache(self) -> None:
        self.mm.soft_empty_cache()

    def request_interrupt(self, value: bool = True) -> None:
        self.mm.interrupt_current_processing(value)

    def check_interrupt(self) -> None:
        self.mm.throw_exception_if_processing_interrupted()

    def progress(self, total_steps: int) -> Progress:
        bar = self.utils.ProgressBar(total_steps)

        def report(done: int, total: int) -> None:
            bar.update_absolute(done, total)
            self.check_interrupt()

        return Progress(total_steps, report)

    def register_model_folders(self) -> None:
        """Register `models/pisa_sr` (PiSA-SR weights .pkl/.safetensors, fast decoders .pth/.pt/.safetensors)
        so extra_model_paths.yaml works too."""
        fp = self.fp
        fp.add_model_folder_path(PISA_FOLDER, os.path.join(fp.models_dir, PISA_FOLDER))
        paths, exts = fp.folder_names_and_paths[PISA_FOLDER]
        # A folder first created by extra_model_paths.yaml has an empty extension set (= any file).
        fp.folder_names_and_paths[PISA_FOLDER] = (paths, set(exts) | PISA_EXTENSIONS | DECODER_EXTENSIONS)

    def folder_paths(self, kind: str) -> list[Path]:
        try:
            return [Path(p) for p in self.fp.get_folder_paths(kind)]
        except KeyError:
            return []

    def files_in(self, kind: str, extensions: set[str]) -> list[str]:
        try:
            names = self.fp.get_filename_list(kind)
        except KeyError:
            return []
        return [f for f in names if Path(f).suffix.lower() in extensions]


HOST: PlainHost = ComfyHost(_mm, _patcher, _cu, _fp) if IN_COMFY else PlainHost()


# ---------------------------------------------------------------- model files


def diffusers_folders() -> list[str]:
    found = set()
    for folder in HOST.folder_paths("diffusers"):
        if not folder.is_dir():
            continue
        for index in folder.rglob("model_index.json"):
            found.add(index.parent.relative_to(folder).as_posix())
        for unet_cfg in folder.glob("*/unet/config.json"):
            found.add(unet_cfg.parent.parent.relative_to(folder).as_posix())
    return sorted(found)


def base_model_choices() -> list[str]:
    """Single-file checkpoints by name, then diffusers folders as '[diffusers] name'."""
    return HOST.files_in("checkpoints", CHECKPOINT_EXTENSIONS) + [DIFFUSERS_PREFIX + d for d in diffusers_folders()]


def resolve_base_model(name: str) -> Path:
    """Full path of a base-model choice; PiSAError naming the folders searched when it is missing."""
    if name.startswith(DIFFUSERS_PREFIX):
        return find("diffusers", name[len(DIFFUSERS_PREFIX):], want_dir=True)
    return find("checkpoints", name, want_dir=False)


def find(kind: str, rel: str, want_dir: bool = False) -> Path:
    folders = HOST.folder_paths(kind)
    for folder in folders:
        candidate = folder / rel
        if (candidate.is_dir() if want_dir else candidate.is_file()):
            return candidate
    where = ", ".join(str(f) for f in folders) or f"(no '{kind}' folder registered)"
    raise PiSAError(f"Model '{rel}' was not found in the '{kind}' model folders ({where}); put it there and refresh.")
