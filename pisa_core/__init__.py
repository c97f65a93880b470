"""PiSA-SR inference core: pure torch + diffusers; no ComfyUI import.

    from pisa_core import PiSAPipeline
    pipe = PiSAPipeline.from_files("v2-1_512-ema-pruned.safetensors", "pisa_sr.pkl")
    out = pipe(images)  # [B,H,W,C] float 0..1 -> [B,4H,4W,C]
"""

from importlib import import_module

from .errors import PiSAError
from .version import package_version

__version__ = package_version()

_LAZY = {
    "PiSAPipeline": ".inference.pipeline",
    "load_base_model": ".model.base",
    "load_pisa_weights": ".model.checkpoint",
    "save_pisa_weights": ".model.checkpoint",
    "save_official_pkl": ".model.checkpoint",
    "dual_guidance": ".inference.guidance",
    "plan_passes": ".inference.guidance",
    "read_image": ".files.images",
    "read_mask": ".files.images",
    "read_png_settings": ".files.images",
    "write_image": ".files.images",
}

# The public API: what `from pisa_core import ...` gives, from every layer (files, model, inference).
__all__ = [
    "PiSAError", "__version__",
    "PiSAPipeline", "dual_guidance", "plan_passes",
    "load_base_model", "load_pisa_weights", "save_pisa_weights", "save_official_pkl",
    "read_image", "read_mask", "read_png_settings", "write_image",
]


def __getattr__(name: str):
    """Heavy modules (diffusers) load on first use, so `pisa-sr --help` and imports stay fast."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
