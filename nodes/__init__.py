"""ComfyUI nodes of PiSA-SR (V3 node schema). Node ids and input order are permanent."""

import logging

from comfy_api.latest import ComfyExtension, io

from .extras import PiSAGuidanceGrid, PiSAUpscale
from .host import HOST
from .stages import PiSADecode, PiSADualGuidance, PiSAEncode, PiSALoader

NODES: list[type[io.ComfyNode]] = [PiSALoader, PiSAEncode, PiSADualGuidance, PiSADecode, PiSAUpscale,
                                   PiSAGuidanceGrid]


class PiSAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> PiSAExtension:
    """Called by ComfyUI (0.3.64 and later) when it loads the pack; on_load is not called by 0.3.64,
    so the model folder is registered here."""
    HOST.register_model_folders()
    logging.getLogger("PiSA-SR").info("pisa-sr: %d nodes loaded (category image/upscaling/PiSA-SR)", len(NODES))
    return PiSAExtension()
