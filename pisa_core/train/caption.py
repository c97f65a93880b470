"""`pisa-sr caption`: a same-stem .txt caption for every training image, from a local captioner.

The release tags every HQ crop online with an image tagger (docs/release.md, "Training"); the
CSD loss's conditional branch is guided by that text. Here the captions are made once, offline,
by an image-to-text model of transformers loaded from a folder the user gives (never downloaded),
and written beside the images where `pisa-sr train` reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import PiSAError
from ..files.atomic import atomic_output
from .data import list_images, load_rgb

# transformers model types that caption an image without a text prompt
CAPTIONER_TYPES = {"blip": "BLIP", "git": "GIT", "vision-encoder-decoder": "VisionEncoderDecoder"}


class Captioner:
    """An image-to-text model, its image processor and tokenizer, from a local folder."""

    def __init__(self, folder, device="cpu", max_new_tokens: int = 40):
        import transformers

        folder = Path(folder).expanduser()
        kinds = ", ".join(CAPTIONER_TYPES.values())
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise PiSAError(f"Captioner '{folder}' is not a transformers model folder (no config.json); expected "
                            f"a local image-captioning model ({kinds}).")
        try:
            model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
        except (json.JSONDecodeError, AttributeError) as error:
            raise PiSAError(f"Captioner '{folder}': config.json is not a JSON object ({error}).") from error
        if model_type not in CAPTIONER_TYPES:
            found = f"a {model_type!r} model" if model_type else "no transformers model_type"
            raise PiSAError(f"Captioner '{folder}' holds {found}; pisa-sr caption runs local image-captioning "
                            f"models ({kinds}).")
        # the auto class is named differently across transformers versions
        auto_model = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
        try:
            self.processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = auto_model.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            first = str(error).strip().split("\n")[0].split(". ")[0] or type(error).__name__
            raise PiSAError(f"Captioner '{folder}' could not be loaded: {first.rstrip('.')}.") from error
        self.model.to(device).eval()
        self.device, self.max_new_tokens = torch.device(device), int(max_new_tokens)

    @torch.no_grad()
    def __call__(self, paths: list[Path]) -> list[str]:
        """One caption per image: generated text, special tokens dropped, whitespace collapsed."""
        images = [(load_rgb(p) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for p in paths]
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device)
        ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens)
        return [" ".join(text.split()) for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def caption_path(image: Path) -> Path:
    """Where `pisa-sr train` looks for an image's caption: the same stem with .txt."""
    return image.with_suffix(".txt")


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a new hidden file in the same folder and rename it into place, so an
    interrupted run never leaves a half-written caption."""
    with atomic_output(path) as f:
        f.write((text + "\n").encode("utf-8"))


def caption_images(inputs, model_folder, *, overwrite: bool = False, batch_size: int = 8,
                   max_new_tokens: int = 40, device: str = "auto", log=print) -> tuple[int, int]:
    """Caption every listed image (folders recursive, .txt lists, image files) into a same-stem
    .txt; existing caption files are kept unless `overwrite`. Returns (written, kept)."""
    if batch_size < 1:
        raise PiSAError(f"--batch-size must be at least 1; got {batch_size}.")
    images = [path for source in inputs for path in list_images(source)]
    todo = [p for p in images if overwrite or not caption_path(p).exists()]
    kept = len(images) - len(todo)
    if todo:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        captioner = Captioner(model_folder, device=device, max_new_tokens=max_new_tokens)
        with tqdm(total=len(todo), desc="pisa-sr caption", unit="image", dynamic_ncols=True) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                for path, text in zip(chunk, captioner(chunk)):
                    write_text_atomic(caption_path(path), text)
                bar.update(len(chunk))
    note = f", kept {kept} existing (--overwrite replaces them)" if kept else ""
    log(f"pisa-sr caption: wrote {len(todo)} caption file(s){note}")
    return len(todo), kept
