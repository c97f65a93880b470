"""The PISA_MODEL value: a loaded PiSAPipeline handed to the host's model management, plus the
per-model cache of (ε_pix, ε_PiSA) that lets a λ change skip the UNet.

The pack's caches all live here (node classes hold no state): loaded models by file stamps, which
files hold PiSA-SR weights or a fast decoder, and each model's ε cache."""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from ..pisa_core import options
from ..pisa_core.errors import PiSAError
from ..pisa_core.inference import hardware, memory
from ..pisa_core.model import fast_decoder
from ..pisa_core.model.checkpoint import looks_like_pisa_weights
from . import host

LOG = logging.getLogger("PiSA-SR")
LORAS_PREFIX = "[loras] "

# Same files + dtype + device → the same loaded model, while anything still holds it (a cache).
_loaded: weakref.WeakValueDictionary[tuple, PiSAModel] = weakref.WeakValueDictionary()
_load_lock = threading.Lock()
# file version (path, size, mtime) → whether it holds PiSA-SR weights / a fast decoder (a cache).
_recognised: dict[tuple, bool] = {}


class EpsCache:
    """A small LRU of {branch: ε} per input latent (CPU float32), checked by content, not identity."""

    def __init__(self, max_entries: int = 4, max_bytes: int = 1 << 30):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[tuple, tuple[torch.Tensor, dict[str, torch.Tensor]]] = OrderedDict()

    @staticmethod
    def _key(latent: torch.Tensor, tile: int, overlap: int) -> tuple:
        flat = latent.detach().float().flatten()
        # cheap fingerprint; the stored latent is compared exactly on a hit
        return (tuple(latent.shape), tile, overlap, float(flat.sum()), float(flat.abs().sum()))

    def get(self, latent: torch.Tensor, tile: int, overlap: int) -> dict[str, torch.Tensor]:
        key = self._key(latent, tile, overlap)
        item = self._items.get(key)
        if item is None or not torch.equal(item[0], latent.detach().cpu().float()):
            return {}
        self._items.move_to_end(key)
        return dict(item[1])

    def put(self, latent: torch.Tensor, tile: int, overlap: int, eps: dict[str, torch.Tensor]) -> None:
        key = self._key(latent, tile, overlap)
        stored = self.get(latent, tile, overlap)
        stored.update({k: v.detach().float().cpu() for k, v in eps.items()})
        self._items[key] = (latent.detach().float().cpu().clone(), stored)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries or (len(self._items) > 1 and self.nbytes() > self.max_bytes):
            self._items.popitem(last=False)

    def nbytes(self) -> int:
        return sum(latent.numel() * 4 + sum(e.numel() * 4 for e in eps.values()) for latent, eps in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class PiSAModel:
    """What flows along a PISA_MODEL wire: the pipeline, its model-management handle, the ε cache."""

    def __init__(self, pipe, key: tuple, base_name: str, weights_name: str,
                 decoder_name: str = fast_decoder.BASE_DECODER):
        self.pipe = pipe
        self.key = key
        self.base_name, self.weights_name, self.decoder_name = base_name, weights_name, decoder_name
        self.eps_cache = EpsCache()
        self.unet_calls = 0  # UNet forward passes run through this model (tests and logs)
        self.container = torch.nn.ModuleDict({"unet": pipe.unet, "vae": pipe.vae})
        self.handle = host.HOST.manage(self.container, pipe.device, host.HOST.offload_device())
        me = weakref.ref(self)  # no reference cycle: the model is freed as soon as unused

        def count(module, args):
            owner = me()
            if owner is not None:
                owner.unet_calls += 1

        pipe.unet.register_forward_pre_hook(count)

    def ready(self, memory_required: int = 0) -> None:
        """Put the weights on the compute device (the host may have offloaded them), asking it to
        keep `memory_required` bytes free for the stage about to run."""
        host.HOST.load(self.handle, self.pipe.device, memory_required)

    def upcast_happened(self, part: str) -> None:
        """The pipeline switched a part to float32 (explicit, logged there): the host re-measures."""
        host.HOST.size_changed(self.handle)

    def __repr__(self) -> str:
        return f"PiSAModel({self.base_name!r}, {self.weights_name!r}, {self.decoder_name!r}, {self.pipe.dtype})"


# ---------------------------------------------------------------- weights files


def _is_pisa_weights(name: str) -> bool:
    """Recognise PiSA-SR weights in models/loras by their keys without loading them: a safetensors
    header, or the key strings inside an official pisa_sr.pkl's pickle (nothing is unpickled). A
    name the host listed that no longer leads to a file (a dangling link, a file removed since) is not."""
    try:
        path = host.find(host.LORA_FOLDER, name)
        stat = path.stat()
    except (PiSAError, OSError):
        return False
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _recognised:
        _recognised[key] = looks_like_pisa_weights(path)
    return _recognised[key]


def pisa_weight_choices() -> list[str]:
    """PiSA-SR weights in models/pisa_sr (its files but the fast decoders), then those in models/loras
    (as '[loras] name')."""
    own = [name for name in host.HOST.files_in(host.PISA_FOLDER, host.PISA_EXTENSIONS) if not _is_decoder(name)]
    loras = [name for name in host.HOST.files_in(host.LORA_FOLDER, host.PISA_EXTENSIONS) if _is_pisa_weights(name)]
    return own + [LORAS_PREFIX + name for name in loras]


def resolve_pisa_weights(name: str) -> Path:
    if name.startswith(LORAS_PREFIX):
        return host.find(host.LORA_FOLDER, name[len(LORAS_PREFIX):])
    return host.find(host.PISA_FOLDER, name)


def _is_decoder(name: str) -> bool:
    """Whether a file the host lists in models/pisa_sr is a fast decoder, judged by its content
    (fast_decoder.is_decoder_file: nothing is unpickled) once per file version. A name that no
    longer leads to a file (a dangling link, a file removed since) is not."""
    try:
        path = host.find(host.PISA_FOLDER, name)
        stat = path.stat()
    except (PiSAError, OSError):
        return False
    key = ("fast decoder", str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _recognised:
        _recognised[key] = fast_decoder.is_decoder_file(path)
    return _recognised[key]


def decoder_choices() -> list[str]:
    """The base model's own VAE decoder (the default, fast_decoder.BASE_DECODER), then the fast
    decoder files in models/pisa_sr."""
    files = host.HOST.files_in(host.PISA_FOLDER, host.DECODER_EXTENSIONS)
    return [fast_decoder.BASE_DECODER, *filter(_is_decoder, files)]


def resolve_decoder(name: str) -> Path | None:
    """None for the base VAE's decoder, else the decoder file's path (load_decoder checks its content)."""
    return None if name == fast_decoder.BASE_DECODER else host.find(host.PISA_FOLDER, name)


# ---------------------------------------------------------------- loading


def _file_stamp(path: Path) -> tuple:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _decoder_stamp(decoder_path: Path | None) -> tuple:
    return () if decoder_path is None else _file_stamp(decoder_path)


def files_fingerprint(base_name: str, weights_name: str, decoder_name: str = fast_decoder.BASE_DECODER) -> tuple | None:
    """What the loaded model depends on in the model folders (paths, sizes, times); None when a file
    is missing (the load then fails with its own clear error)."""
    try:
        return (_file_stamp(host.resolve_base_model(base_name)), _file_stamp(resolve_pisa_weights(weights_name)),
                _decoder_stamp(resolve_decoder(decoder_name)))
    except (PiSAError, OSError):
        return None


def load_model(base_name: str, weights_name: str, dtype_name: str = "auto", compile: bool = False,
               decoder_name: str = fast_decoder.BASE_DECODER) -> PiSAModel:
    """Resolve the model files, load them once (cached while in use) and hand them to the host.
    dtype 'auto' follows the same rule as the CLI and the Python API (hardware.auto_dtype). A fast
    decoder file is read and checked before the base model loads (PiSAPipeline.from_files)."""
    from ..pisa_core.inference.pipeline import PiSAPipeline

    base_path = host.resolve_base_model(base_name)
    weights_path = resolve_pisa_weights(weights_name)
    decoder_path = resolve_decoder(decoder_name)
    load = host.HOST.compute_device()
    dtype = hardware.resolve_dtype(dtype_name, load)
    key = (_file_stamp(base_path), _file_stamp(weights_path), _decoder_stamp(decoder_path), str(dtype), str(load),
           bool(compile))
    with _load_lock:
        cached = _loaded.get(key)
        if cached is not None:
            return cached
        owner: list[weakref.ref] = []  # filled below; weak, so the model stays free to go

        def on_upcast(part: str) -> None:
            model = owner[0]() if owner else None
            if model is not None:
                model.upcast_happened(part)

        def free_now() -> int | None:
            model = owner[0]() if owner else None
            return host.HOST.free_memory(load, None if model is None else model.handle)

        # Weights start on the offload device; the host moves them to `load` before each use.
        pipe = PiSAPipeline.from_files(base_path, weights_path, device=load, dtype=dtype, compile=compile,
                                       weights_device=host.HOST.offload_device(), decoder=decoder_path,
                                       free_memory=free_now, on_upcast=on_upcast)
        model = PiSAModel(pipe, key, base_name, weights_name, decoder_name)
        owner.append(weakref.ref(model))
        _loaded[key] = model
        LOG.info("pisa-sr: loaded %s + %s, decoder %s (%s on %s)", base_name, weights_name, decoder_name,
                 options.dtype_name(dtype), load)
        return model


def with_backoff(run, tile: int, *, minimum: int, what: str):
    """memory.with_backoff with the host's cache release."""
    return memory.with_backoff(run, tile, minimum=minimum, what=what, release=host.HOST.release_cache)
