"""A user's image files in and out (CLI, Python API, training): reading, writing, input lists."""

from .reading import (  # noqa: F401
    IMAGE_EXTENSIONS,
    SIXTEEN_BIT_FORMATS,
    SRGB,
    WRITE_FORMATS,
    ImageInfo,
    atomic_output,
    check_output_folder,
    folder_images,
    list_inputs,
    list_inputs_and_skipped,
    output_format,
    png_header,
    png_text,
    probe_image,
    quantize,
    read_image,
    read_mask,
    to_pil_8bit,
    write_image,
)
