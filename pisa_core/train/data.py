"""Training data: HQ images (folders or list files), optional paired LQ, captions, crops and flips.

Reproducibility: the loader asks for *global positions* p = 0, 1, 2, ... (see PositionSampler).
Position p is image `perm_e[p mod N]` of epoch e = p div N (a seeded permutation per epoch), and
every random choice of that sample (crop, flip, degradation) is seeded from (seed, p), and the
null-text draw from (seed, p div group), group = the batch size when it is drawn once per batch.
So a sample never depends on worker count or order, and a resumed run that restarts the stream at
the right position sees exactly the data the interrupted run would have seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..errors import PiSAError
from ..files.images import IMAGE_EXTENSIONS, read_image
from .degradation import DegradationConfig, SampleRNG, degrade

CAPTION_IMAGE_KEYS = ("file", "file_name", "image", "path", "name")
CAPTION_TEXT_KEYS = ("text", "caption", "prompt", "tags")
# Offsets that separate the random streams of one position (crop/flip, null text, degradation).
_CROP_STREAM = 1_000_003
_NULL_TEXT_STREAM = 2_000_003
# `pisa-sr train` warns when CSD is on and more than this share of the images has no caption.
MISSING_CAPTION_SHARE = 0.1
_VALIDATION_BASE = 1 << 40


@dataclass
class Item:
    hq: Path
    lq: Path | None
    caption: str


# ----------------------------------------------------------------------------- listing


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(source) -> list[Path]:
    """Images of one source: a folder (recursive, sorted), a .txt list file (one path a line, relative
    paths against the list's folder, '#' comments) or a single image file."""
    path = Path(source)
    if path.is_dir():
        found = sorted((p for p in path.rglob("*") if _is_image(p)), key=lambda p: str(p.relative_to(path)))
        if not found:
            raise PiSAError(f"Training data folder '{path}' has no image files ({', '.join(IMAGE_EXTENSIONS)}).")
        return found
    if path.is_file() and path.suffix.lower() == ".txt":
        found = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry = Path(line) if Path(line).is_absolute() else path.parent / line
            if not entry.is_file():
                raise PiSAError(f"List file '{path}' names '{line}', which is not a file.")
            found.append(entry)
        if not found:
            raise PiSAError(f"List file '{path}' names no images.")
        return found
    if _is_image(path):
        return [path]
    raise PiSAError(f"Training data '{path}' should be a folder of images, a .txt list of images or an image file.")


def _key_forms(path: Path, root: Path | None) -> list[str]:
    """The names a caption entry may use for an image: relative path, file name, stem."""
    forms = []
    if root is not None:
        try:
            rel = path.relative_to(root)
            forms += [rel.as_posix(), rel.with_suffix("").as_posix()]
        except ValueError:
            pass
    return forms + [path.name, path.stem, str(path)]


def read_caption_jsonl(path) -> dict[str, str]:
    """JSONL captions: one object a line with an image key (file/file_name/image/path/name) and a text
    key (text/caption/prompt/tags; a list of tags is joined with ', ')."""
    path = Path(path)
    if not path.is_file():
        raise PiSAError(f"Captions file '{path}' does not exist.")
    table = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise PiSAError(f"Captions file '{path}' line {number} is not JSON ({error.msg}).") from error
        image = next((entry[k] for k in CAPTION_IMAGE_KEYS if isinstance(entry, dict) and k in entry), None)
        text = next((entry[k] for k in CAPTION_TEXT_KEYS if isinstance(entry, dict) and k in entry), None)
        if image is None or text is None:
            raise PiSAError(f"Captions file '{path}' line {number} needs an image key ({'/'.join(CAPTION_IMAGE_KEYS)}) "
                            f"and a text key ({'/'.join(CAPTION_TEXT_KEYS)}).")
        if isinstance(text, list):
            text = ", ".join(str(t) for t in text)
        table[str(image)] = str(text).strip()
        table.setdefault(Path(str(image)).stem, str(text).strip())
    return table


def caption_for(path: Path, root: Path | None, table: dict[str, str] | None) -> str:
    """JSONL entry if given and found, else the same-stem .txt beside the image, else ''."""
    if table is not None:
        for key in _key_forms(path, root):
            if key in table:
                return table[key]
    txt = path.with_suffix(".txt")
    if txt.is_file():
        return txt.read_text(encoding="utf-8").strip()
    return ""


def missing_caption_warning(items: list[Item]) -> str | None:
    """One line when more than MISSING_CAPTION_SHARE of the images has no caption: CSD then guides
    those images unconditionally, where the release tags every image (docs/release.md, "Training")."""
    missing = sum(not item.caption for item in items)
    if missing <= MISSING_CAPTION_SHARE * len(items):
        return None
    return (f"pisa-sr train: warning: {missing} of {len(items)} images have no caption, so CSD guides them "
            f"without one; write captions with `pisa-sr caption DATA --model CAPTIONER_FOLDER`.")


def build_items(sources, lq_source=None, captions=None) -> list[Item]:
    """All training items. Paired LQ images are matched by path relative to the LQ folder (stem, any
    image extension) when `lq_source` is given."""
    table = read_caption_jsonl(captions) if captions else None
    items = []
    for source in sources:
        root = Path(source) if Path(source).is_dir() else None
        for path in list_images(source):
            items.append(Item(path, None, caption_for(path, root, table)))
    if lq_source is not None:
        lq_root = Path(lq_source)
        if not lq_root.is_dir():
            raise PiSAError(f"Paired LQ folder '{lq_root}' is not a folder.")
        lq_by_stem = {p.relative_to(lq_root).with_suffix("").as_posix(): p for p in list_images(lq_root)}
        for item in items:
            root = next((Path(s) for s in sources if Path(s).is_dir() and Path(s) in item.hq.parents), None)
            key = (item.hq.relative_to(root) if root else Path(item.hq.name)).with_suffix("").as_posix()
            if key not in lq_by_stem:
                raise PiSAError(f"No LQ image for '{item.hq}' in '{lq_root}' (expected '{key}.<ext>').")
            item.lq = lq_by_stem[key]
    return items


# ----------------------------------------------------------------------------- images


def load_rgb(path: Path) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1]; gray is repeated, alpha dropped."""
    image, _ = read_image(path)
    image = image.permute(2, 0, 1)
    if image.shape[0] in (1, 2):
        image = image[:1].expand(3, -1, -1)
    return image[:3].contiguous()


def resize_bicubic(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)


def ensure_min_size(image: torch.Tensor, crop: int) -> torch.Tensor:
    """Enlarge (bicubic) so that the shorter side is at least the crop size."""
    h, w = image.shape[-2:]
    if min(h, w) >= crop:
        return image
    factor = crop / min(h, w)
    return resize_bicubic(image, (max(crop, round(h * factor)), max(crop, round(w * factor))))


# ----------------------------------------------------------------------------- dataset


class PositionSampler(Sampler):
    """Endless stream of global positions for one process: micro-batch c of process r holds positions
    (c·world + r)·batch + j, j < batch. `start_chunk` skips the chunks a resumed run already used."""

    def __init__(self, batch_size: int, rank: int = 0, world_size: int = 1, start_chunk: int = 0):
        self.batch_size, self.rank, self.world_size, self.start_chunk = batch_size, rank, world_size, start_chunk

    def __iter__(self):
        chunk = self.start_chunk
        while True:
            first = (chunk * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            chunk += 1


class PairDataset(Dataset):
    """Items by global position -> dict(hq, lq: [3,S,S] in [0,1], caption, drop_caption, position).

    `caption` is always the image's own caption; `drop_caption` says whether the generator gets
    the empty prompt instead (null-text dropout, drawn for each group of `null_text_group`
    consecutive positions: 1 = per sample, the batch size = once per micro-batch as the release)."""

    def __init__(self, items: list[Item], *, crop_size: int = 512, seed: int = 0, hflip: bool = True,
                 vflip: bool = False, null_text_ratio: float = 0.5, null_text_group: int = 1,
                 degradation: DegradationConfig | None = None):
        if not items:
            raise PiSAError("The training data holds no images.")
        self.items, self.crop, self.seed = items, int(crop_size), int(seed)
        self.hflip, self.vflip, self.null_text_ratio = hflip, vflip, float(null_text_ratio)
        self.null_text_group = max(1, int(null_text_group))
        self.degradation = degradation or DegradationConfig()
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def item_index(self, position: int) -> int:
        """Image index of a global position: a seeded permutation of the images per epoch."""
        epoch, offset = divmod(int(position), len(self.items))
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.items))}
        return int(self._perm_cache[epoch][offset])

    def __getitem__(self, position: int) -> dict:
        item = self.items[self.item_index(position)]
        rng = SampleRNG(self.seed + _CROP_STREAM, int(position))
        hq, lq = self._crop_pair(item, rng, random=True)
        if self.hflip and rng.chance(0.5):
            hq, lq = hq.flip(-1), (lq.flip(-1) if lq is not None else None)
        if self.vflip and rng.chance(0.5):
            hq, lq = hq.flip(-2), (lq.flip(-2) if lq is not None else None)
        if lq is None:
            lq = degrade(hq, seed=self.seed, index=int(position), config=self.degradation)
        return {"hq": hq, "lq": lq, "caption": item.caption, "drop_caption": self.caption_dropped(position),
                "position": int(position)}

    def caption_dropped(self, position: int) -> bool:
        """Null-text dropout of a position; PositionSampler's micro-batches are aligned groups of
        the batch size, so group = batch size gives one draw per micro-batch."""
        group = int(position) // self.null_text_group
        return SampleRNG(self.seed + _NULL_TEXT_STREAM, group).chance(self.null_text_ratio)

    def validation_sample(self, number: int) -> dict:
        """A fixed sample for validation images: centre crop, no flip, the item's caption."""
        item = self.items[number % len(self.items)]
        hq, lq = self._crop_pair(item, None, random=False)
        if lq is None:
            lq = degrade(hq, seed=self.seed, index=_VALIDATION_BASE + number, config=self.degradation)
        return {"hq": hq, "lq": lq, "caption": item.caption, "drop_caption": False, "position": -1 - number}

    def _crop_pair(self, item: Item, rng: SampleRNG | None, random: bool):
        hq = ensure_min_size(load_rgb(item.hq), self.crop)
        lq = None
        if item.lq is not None:
            lq = load_rgb(item.lq)
            if lq.shape[-2:] != hq.shape[-2:]:
                lq = resize_bicubic(lq, tuple(hq.shape[-2:]))
        h, w = hq.shape[-2:]
        if random:
            top, left = int(rng.np.integers(0, h - self.crop + 1)), int(rng.np.integers(0, w - self.crop + 1))
        else:
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
        window = (slice(None), slice(top, top + self.crop), slice(left, left + self.crop))
        return hq[window].contiguous(), (lq[window].contiguous() if lq is not None else None)


def collate(samples: list[dict]) -> dict:
    return {
        "hq": torch.stack([s["hq"] for s in samples]),
        "lq": torch.stack([s["lq"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "drop_caption": [s["drop_caption"] for s in samples],
        "position": torch.tensor([s["position"] for s in samples]),
    }
