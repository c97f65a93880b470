"""ComfyUI entry point of the PiSA-SR node pack (this folder goes into ComfyUI/custom_nodes/).

ComfyUI calls `comfy_entrypoint` (V3 node schema, ComfyUI 0.3.64 or newer). No NODE_CLASS_MAPPINGS
here: ComfyUI looks for it first and would then never call the entry point. Without ComfyUI, use
the `pisa_core` package (CLI, Python API) instead.
"""

import logging

if __package__:  # ComfyUI imports this folder as a package, whatever its name
    try:
        import comfy_api.latest  # noqa: F401  (the V3 node API the nodes are written in)
    except ImportError:
        logging.getLogger("PiSA-SR").error(
            "pisa-sr: this ComfyUI has no V3 node API (comfy_api.latest); update ComfyUI to 0.3.64 or newer. "
            "The PiSA-SR nodes are not registered.")
    else:
        from .nodes import comfy_entrypoint

        __all__ = ["comfy_entrypoint"]
