"""ComfyUI nodes of PiSA-SR. Classic node API; node ids and input order are permanent."""

from .extras import PiSAGuidanceGrid, PiSAUpscale
from .host import HOST
from .stages import PiSADecode, PiSADualGuidance, PiSAEncode, PiSALoader

HOST.register_model_folders()

NODE_CLASS_MAPPINGS = {
    "PiSALoader": PiSALoader,
    "PiSAEncode": PiSAEncode,
    "PiSADualGuidance": PiSADualGuidance,
    "PiSADecode": PiSADecode,
    "PiSAUpscale": PiSAUpscale,
    "PiSAGuidanceGrid": PiSAGuidanceGrid,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "PiSALoader": "PiSA-SR Loader",
    "PiSAEncode": "PiSA-SR Encode",
    "PiSADualGuidance": "PiSA-SR Dual Guidance",
    "PiSADecode": "PiSA-SR Decode",
    "PiSAUpscale": "PiSA-SR Upscale",
    "PiSAGuidanceGrid": "PiSA-SR Guidance Grid",
}
