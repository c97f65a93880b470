"""The PISA_MODEL value: a loaded PiSAPipeline handed to the host's model management, plus the
per-model cache of (ε_pix, ε_PiSA) that lets a λ change skip the UNet."""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from ..pisa_core.errors import PiSAError
from . import host

LOG = logging.getLogger("PiSA-SR")
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# Same files + dtype + device → the same loaded model, while anything still holds it.
_loaded: weakref.WeakValueDictionary[tuple, PiSAModel] = weakref.WeakValueDictionary()
_load_lock = threading.Lock()


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
        total = 0
        for latent, eps in self._items.values():
            total += latent.numel() * 4 + sum(e.numel() * 4 for e in eps.values())
        return total

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class PiSAModel:
    """What flows along a PISA_MODEL wire."""

    def __init__(self, pipe, handle, key: tuple, base_name: str, weights_name: str):
        self.pipe = pipe
        self.handle = handle  # ComfyUI ModelPatcher, or None without ComfyUI
        self.key = key
        self.base_name, self.weights_name = base_name, weights_name
        self.eps_cache = EpsCache()
        self.unet_calls = 0  # UNet forward passes run through this model (tests and logs)
        me = weakref.ref(self)  # no reference cycle: the model is freed as soon as unused

        def count(module, args):
            owner = me()
            if owner is not None:
                owner.unet_calls += 1

        pipe.unet.register_forward_pre_hook(count)

    def ready(self, memory_required: int = 0) -> None:
        """Put the weights on the compute device (ComfyUI may have offloaded them), asking the host
        to keep `memory_required` bytes free for the activations of the stage about to run."""
        host.load_to_device(self.handle, memory_required)

    def __repr__(self) -> str:
        return f"PiSAModel({self.base_name!r}, {self.weights_name!r}, {self.pipe.dtype})"


def working_memory(stage: str, tile: int, size_hw: tuple[int, int], dtype: torch.dtype, batch: int = 1) -> int:
    """Rough peak activation bytes of one tile (at most `tile` a side of a `size_hw` input) of a
    stage, for the host's model management.

    tile and size_hw are in image pixels for "encode", in latent pixels for "unet" and "decode".
    The factors are ComfyUI's own estimates for this VAE (encode 1767 B, decode 2178·64 B per
    element and dtype byte) and for an SD UNet with SDPA (0.01 MiB per latent pixel and dtype byte).
    """
    per_element = {"encode": 1767, "decode": 2178 * 64, "unet": 0.01 * 2 ** 20}
    if stage not in per_element:
        raise ValueError(f"unknown stage {stage!r}")
    area = batch * min(tile, int(size_hw[0])) * min(tile, int(size_hw[1]))
    return int(area * dtype.itemsize * per_element[stage])


def _file_stamp(path: Path) -> tuple:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return host.auto_dtype(device)
    if name not in _DTYPES:
        raise PiSAError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}.")
    return _DTYPES[name]


def load_model(base_name: str, weights_name: str, dtype_name: str = "auto", compile: bool = False) -> PiSAModel:
    """Resolve the model files, load them once (cached while in use) and hand them to the host."""
    from ..pisa_core.base_model import load_base_model
    from ..pisa_core.checkpoint import load_pisa_weights
    from ..pisa_core.pipeline import PiSAPipeline

    base_path = host.resolve_base_model(base_name)
    weights_path = host.resolve_pisa_weights(weights_name)
    load, offload = host.compute_device(), host.offload_device()
    dtype = resolve_dtype(dtype_name, load)
    key = (_file_stamp(base_path), _file_stamp(weights_path), str(dtype), str(load), bool(compile))
    with _load_lock:
        cached = _loaded.get(key)
        if cached is not None:
            return cached
        base = load_base_model(base_path)
        weights = load_pisa_weights(weights_path)
        # Weights start on the offload device; the host moves them to `load` before each use.
        pipe = PiSAPipeline(base, weights, device=load, weights_device=offload, dtype=dtype, compile=compile)
        container = torch.nn.ModuleDict({"unet": pipe.unet, "vae": pipe.vae})
        handle = host.wrap_for_management(container, load, offload)
        model = PiSAModel(pipe, handle, key, base_name, weights_name)
        model._container = container
        _loaded[key] = model
        LOG.info("PiSA-SR: loaded %s + %s (%s on %s)", base_name, weights_name, dtype, load)
        return model


def with_backoff(run, tile: int, *, minimum: int, what: str):
    """run(tile) with the tile halved on out-of-memory until `minimum`; then one clear error."""
    while True:
        try:
            return run(tile)
        except Exception as error:  # only OOM is handled; everything else propagates unchanged
            if not host.is_oom(error):
                raise
            host.free_cache()
            if tile // 2 < minimum:
                raise PiSAError(
                    f"Out of memory in the {what} even with a tile of {tile}; use a smaller image or "
                    f"upscale factor, or free memory (close other models) and try again.") from None
            LOG.warning("PiSA-SR: out of memory in the %s at tile %d; retrying with %d", what, tile, tile // 2)
            tile //= 2
