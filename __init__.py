"""ComfyUI entry point of the PiSA-SR node pack (this folder goes into ComfyUI/custom_nodes/).

Without ComfyUI, use the `pisa_core` package (CLI, Python API) instead.
"""

import logging

if __package__:  # ComfyUI imports this folder as a package, whatever its name
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    logging.getLogger("PiSA-SR").info("pisa-sr: %d nodes loaded (category image/upscaling/PiSA-SR)",
                                      len(NODE_CLASS_MAPPINGS))
else:  # loaded as a lone module (pytest does so when the checkout's folder name is no identifier)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
