"""A user's image files in and out (CLI, Python API, training), one module per concern:

    listing    files, folders and glob patterns -> image files, and what is skipped and why
    reading    read_image, probe_image (header only), read_mask, to_pil_8bit
    writing    write_image, output_format, check_output_folder
    png16      16-bit PNGs (pypng)          tiff      16-bit colour TIFFs, page count, writer
    icc        embedded ICC profiles        png_text  PNG text chunks and the recorded settings
    info       ImageInfo and the EXIF orientation

Images are tensors [H, W, C] float32 in 0..1 with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or
4 (RGBA). Pillow reads and writes most formats, but keeps colour samples in 8 bits, so 16-bit
PNGs go through pypng and 16-bit colour TIFFs through the TIFF module. Colours are sRGB in memory:
an embedded ICC profile is converted to sRGB on reading and kept in ImageInfo, so write_image can
convert back to it and embed it again. Tensors handed to the pipeline are taken as sRGB.
"""

from .info import ImageInfo
from .listing import IMAGE_EXTENSIONS, folder_images, list_inputs, list_inputs_and_skipped, special_file_kind
from .png16 import png_header
from .png_text import SETTINGS_KEYWORD, png_text, read_png_settings
from .reading import probe_image, read_image, read_mask, to_pil_8bit
from .writing import SIXTEEN_BIT_FORMATS, SRGB, WRITE_FORMATS, check_output_folder, output_format, quantize, write_image

__all__ = [
    "IMAGE_EXTENSIONS", "SETTINGS_KEYWORD", "SIXTEEN_BIT_FORMATS", "SRGB", "WRITE_FORMATS", "ImageInfo",
    "check_output_folder", "folder_images", "list_inputs", "list_inputs_and_skipped", "output_format",
    "png_header", "png_text", "probe_image", "quantize", "read_image", "read_mask", "read_png_settings",
    "special_file_kind", "to_pil_8bit", "write_image",
]
