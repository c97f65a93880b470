"""The one safe reader of tensor files: `.safetensors` (memory-mapped, tensor by tensor) and
torch pickles (`.pkl`, `.ckpt`, `.pt`, `.pth`, `.bin`) read only with `weights_only=True`, so no
pickled code ever runs. Every failure becomes one PiSAError line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import PiSAError
from .kinds import SAFETENSORS, TENSOR_KINDS, sniff_file
from .torch_pickles import check_declared_sizes, corrupted, is_torch_zip

# torch's weights-only unpickler on a global it will not import (the pickle would run code)
_CODE_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL (\S+)", re.IGNORECASE)


def is_safetensors(path: Path, what: str) -> bool:
    """Judge by content (files.kinds.sniff_file), not by the name: True for safetensors, False for
    torch.save zips and pickles. Anything else (an image, a text file, an unknown binary, whatever
    its name) is a PiSAError saying what the file is instead of `what`."""
    kind = sniff_file(path)
    if kind.kind not in TENSOR_KINDS:
        raise PiSAError(f"'{path}' is {kind.describe()}, not {what}.")
    return kind.kind == SAFETENSORS


# safetensors dtype names -> torch dtypes (the ones SD and PiSA-SR files use, and their kin)
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 2**20


def _is_size(value) -> bool:
    """A JSON integer that fits a tensor dimension (the format's sizes are unsigned 64-bit; torch's
    are signed)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


class SafetensorsFile:
    """A safetensors file read tensor by tensor into buffers of their own.

    The safetensors package maps the whole file; a 5 GB fp32 checkpoint then counts in the
    process's resident memory until the map closes, while loading converts each tensor and drops
    it. Reading each tensor with a plain read keeps the peak at the converted model's size. The
    header is validated against the file before any tensor is read."""

    def __init__(self, path, what: str):
        self.path, self.what = Path(path), what
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                head = handle.read(8)
                length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
                if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                    raise ValueError(f"header length {length} does not fit a file of {size} bytes")
                header = json.loads(handle.read(length))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise PiSAError(f"'{self.path}' is not a readable safetensors file ({what}): truncated or corrupted "
                            f"({exc}).") from None
        self.data_start = 8 + length
        self.metadata = self._check_metadata(header.pop("__metadata__", {}) if isinstance(header, dict) else None)
        self.entries = self._check_entries(header, size - self.data_start)
        self.keys = list(self.entries)

    def _fail(self, detail: str):
        raise PiSAError(f"'{self.path}' is not a readable safetensors file ({self.what}): truncated or corrupted "
                        f"({detail}).")

    def _check_metadata(self, metadata) -> dict[str, str]:
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            self._fail("its metadata is not a map of strings")
        return dict(metadata)

    def _check_entries(self, header, data_length: int) -> dict:
        if not isinstance(header, dict):
            self._fail("its header is not a JSON object")
        entries = {}
        for key, info in header.items():
            if not key.isprintable():
                self._fail(f"the tensor name {key!r:.80} holds control characters")
            try:
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                shape, (start, end) = list(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                self._fail(f"tensor '{key}' has an unknown dtype or a malformed entry")
            if not all(_is_size(n) for n in (*shape, start, end)):
                self._fail(f"tensor '{key}' has a shape or offsets that are not sizes (integers from 0 to 2**63)")
            numel = math.prod(shape)
            if not 0 <= start <= end <= data_length or \
                    end - start != numel * dtype.itemsize:
                self._fail(f"tensor '{key}' lies outside the file or does not match its shape")
            entries[key] = (dtype, shape, start)
        stored = sum(math.prod(shape) * dtype.itemsize for dtype, shape, _ in entries.values())
        if stored > data_length:
            self._fail(f"its tensors overlap: they declare {stored:,} bytes in a data section of {data_length:,}")
        return entries

    def get(self, key: str) -> torch.Tensor:
        dtype, shape, start = self.entries[key]
        tensor = torch.empty(shape, dtype=dtype)
        view = tensor.reshape(-1).view(torch.uint8).numpy()
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.data_start + start)
                read = handle.readinto(view)
        except OSError as exc:
            raise PiSAError(f"'{self.path}': tensor '{key}' cannot be read ({exc}).") from None
        if read != view.size:
            raise PiSAError(f"'{self.path}' is truncated: tensor '{key}' is incomplete.")
        return tensor

    def items(self, keys=None) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys if keys is None else keys:
            yield key, self.get(key)

    def read_all(self) -> dict[str, torch.Tensor]:
        return dict(self.items())


def load_pickle(path, what: str) -> object:
    """torch.load(weights_only=True) on the CPU (memory-mapped when the file is a zip), after the
    sizes its pickle declares were checked against the file (torch_pickles). A file that would need
    code to unpickle is refused, never retried unsafely."""
    path = Path(path)
    check_declared_sizes(path, what)
    try:
        if os.fspath(path).endswith(".safetensors"):  # torch.load would hand such a name to safetensors
            with open(path, "rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_torch_zip(path))
    except Exception as exc:  # noqa: BLE001 - any failure to read untrusted bytes is the file's fault
        code = _CODE_GLOBAL.search(str(exc))
        if code:
            raise PiSAError(
                f"'{path}' was refused for safety: it is a pickle that would run code ('{code[1]}'), while "
                f"{what} hold only tensors (and lists, ints and strings); convert it to .safetensors with a "
                "tool you trust and load that file instead.") from None
        raise corrupted(path, what, exc) from None


class LazyTensor:
    """A tensor of a safetensors file that is read only when loaded; shape queries, reshapes and
    chunks (what key conversion does) cost nothing. Keeps a converted checkpoint from ever being
    in memory in full."""

    def __init__(self, file: SafetensorsFile, key: str, shape=None, ops=()):
        self.file, self.key, self.ops = file, key, ops
        self.shape = torch.Size(file.entries[key][1] if shape is None else shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def reshape(self, *shape) -> LazyTensor:
        shape = torch.Size(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
        if math.prod(shape) != math.prod(self.shape):
            raise PiSAError(f"'{self.file.path}': tensor '{self.key}' of shape {tuple(self.shape)} cannot be "
                            f"reshaped to {tuple(shape)}.")
        return LazyTensor(self.file, self.key, shape, (*self.ops, ("reshape", tuple(shape))))

    def chunk(self, chunks: int, dim: int = 0) -> list[LazyTensor]:
        size = self.shape[dim] // chunks
        out = []
        for i in range(chunks):
            shape = list(self.shape)
            shape[dim] = size
            out.append(LazyTensor(self.file, self.key, shape, (*self.ops, ("narrow", dim, i * size, size))))
        return out

    def contiguous(self) -> LazyTensor:
        return self

    def float(self) -> torch.Tensor:
        return self.load().float()

    def load(self) -> torch.Tensor:
        tensor = self.file.get(self.key)
        for op, *args in self.ops:
            tensor = tensor.reshape(args[0]) if op == "reshape" else tensor.narrow(*args)
        return tensor


def read_tensors(path, what: str, *, lazy: bool = False) -> dict:
    """All tensors of a single-file checkpoint (safetensors or pickle). A top-level `state_dict`
    wrapper is unwrapped; non-tensor entries (e.g. `global_step`) are dropped. lazy: safetensors
    entries are LazyTensors (nothing read yet); pickles are memory-mapped either way."""
    path = Path(path)
    if is_safetensors(path, what):
        file = SafetensorsFile(path, what)
        return {key: LazyTensor(file, key) for key in file.keys} if lazy else file.read_all()
    data = load_pickle(path, what)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return named_tensors(data, path, what)


def is_name(value) -> bool:
    """A tensor or module name from a file, fit to be quoted in a one-line message."""
    return isinstance(value, str) and value.isprintable()


def named_tensors(data, path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of an unpickled dict by name; its other entries (e.g. `global_step`) are
    dropped. PiSAError when a tensor's key is not a name, or when there is no tensor at all."""
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    unnamed = next((k for k in tensors if not is_name(k)), None)
    if unnamed is not None:
        shown = f"{unnamed!r:.80}" if isinstance(unnamed, str) else f"a {type(unnamed).__name__}"
        raise PiSAError(f"'{path}' holds a tensor under a key that is {shown}, not a name; expected {what}.")
    if not tensors:
        raise PiSAError(f"'{path}' holds no tensors; expected {what}.")
    return tensors
