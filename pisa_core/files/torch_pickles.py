"""What a torch.save file declares, found without loading it, so that the sizes it claims are
checked against the file before torch.load allocates anything.

A torch.save file is a zip archive (`<name>/data.pkl` plus one record per storage) or, in the legacy
format, a few pickles followed by the storages' bytes. Its pickle names each storage (dtype and
element count) and rebuilds each tensor from a storage with a shape and strides. `scan` reads that
pickle with an unpickler that imports nothing (every global it names becomes an inert placeholder),
noting what is declared. Limits, checked by `check_declared_sizes`:

- the storages together cannot be larger than the file: their bytes are inside it;
- the tensors together (a view sharing data counts in full: it is what materialising it costs)
  cannot declare more than MAX_EXPANSION times the file's size, or MIN_DECLARED_BYTES for small
  files, so that no stride trick (a view repeating one element a trillion times) turns a small
  file into an allocation of terabytes.
"""

from __future__ import annotations

import io
import math
import mmap
import pickle
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PiSAError

MAX_EXPANSION = 4                # tied weights may share data; a real checkpoint declares about its size
MIN_DECLARED_BYTES = 64 * 2**20  # what the tensors of a small file may declare in any case
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_PICKLES = 4               # the legacy format: magic number, protocol, system info, then the data

MEMO_OPCODES = ("PUT", "BINPUT", "LONG_BINPUT")
# Bytes per element of the storage classes torch.save names (a storage of another class counts 1 byte
# per element; torch.load refuses classes it does not know).
STORAGE_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1,
}
# Python's zipfile on a damaged archive (a bad directory, an entry cut short) raises these.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError)
# The pickle module on damaged data raises these besides UnpicklingError (a bad memo index, a call
# with arguments of the wrong kind, a truncated opcode).
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                 OverflowError, RecursionError)


@dataclass
class Declared:
    """What a pickle declares: storage key -> bytes, and the bytes of every tensor built on them."""

    storages: dict = field(default_factory=dict)
    tensor_bytes: int = 0


class _Storage:
    def __init__(self, itemsize: int):
        self.itemsize = itemsize


class _Placeholder:
    """Stands for any global the pickle names: takes every call, item and state, and does nothing.
    Subclassed per global (`name`), so that tensor rebuilds can be counted."""

    name = ""
    declared: Declared | None = None

    def __new__(cls, *args, **kwargs):
        if cls.name.rpartition(".")[2].startswith("_rebuild_") and cls.declared is not None:
            _count_tensor(cls.declared, args)
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


def _count_tensor(declared: Declared, args: tuple) -> None:
    """A rebuild call's (storage, offset, size, ...) arguments: the tensor's bytes."""
    if len(args) >= 3 and isinstance(args[0], _Storage) and isinstance(args[2], tuple) and \
            all(isinstance(s, int) for s in args[2]):
        declared.tensor_bytes += math.prod(max(0, s) for s in args[2]) * args[0].itemsize


class _DryUnpickler(pickle.Unpickler):
    def __init__(self, stream, declared: Declared):
        super().__init__(stream)
        self.declared, self.classes = declared, {}

    def find_class(self, module, name):
        key = f"{module}.{name}"
        if key not in self.classes:
            self.classes[key] = type(name, (_Placeholder,), {"name": key, "declared": self.declared})
        return self.classes[key]

    def persistent_load(self, pid):
        # ('storage', storage class, key, location, element count[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            return None
        storage_class, key, count = pid[1], pid[2], pid[4]
        itemsize = STORAGE_ITEMSIZE.get(getattr(storage_class, "name", "").rpartition(".")[2], 1)
        if isinstance(count, int) and isinstance(key, (str, int)):
            self.declared.storages[key] = max(self.declared.storages.get(key, 0), max(0, count) * itemsize)
        return _Storage(itemsize)


def _load_dry(stream, declared: Declared) -> None:
    """Dry-unpickle the pickle at the stream's position, after checking its opcodes without
    building anything (pickletools reads a counted string only as far as the data goes, where
    the unpickler would first allocate the count it reads), memo indices included (the unpickler
    sizes its memo by the largest index; a pickler numbers them from 0)."""
    start = stream.tell()
    for opcode, argument, position in pickletools.genops(stream):
        if opcode.name in MEMO_OPCODES and argument > position:
            raise pickle.UnpicklingError(f"memo index {argument} at byte {position}")
    stream.seek(start)
    _DryUnpickler(stream, declared).load()


def zip_pickle(path: Path, what: str) -> bytes:
    """The data.pkl record of a torch.save zip, as torch's reader finds it (under the folder of the
    archive's first entry). Records are stored uncompressed in every torch.save file."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            folder = names[0].partition("/")[0] if names else ""
            info = archive.getinfo(f"{folder}/data.pkl")
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or info.file_size > size:
                raise PiSAError(f"'{path}' is not a torch.save file ({what}): its pickle is compressed, encrypted or "
                                "larger than the file.")
            return archive.read(info)
    except KeyError:
        raise PiSAError(f"'{path}' is a zip archive without a torch.save pickle (no data.pkl); expected {what}.") from None
    except ZIP_ERRORS as error:
        raise PiSAError(f"'{path}' is a damaged zip archive ({type(error).__name__}: {error}); expected {what}.") from None


def is_torch_zip(path) -> bool:
    """torch.load's own test: the zip format starts with a local file header; anything else is read
    as the legacy format."""
    with open(path, "rb") as handle:
        return handle.read(4) == ZIP_MAGIC


def scan(path, what: str) -> Declared:
    """What the torch.save file at `path` declares (PiSAError when its archive or pickle is damaged)."""
    path = Path(path)
    declared = Declared()
    try:
        if is_torch_zip(path):
            _load_dry(io.BytesIO(zip_pickle(path, what)), declared)
        else:
            with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for _ in range(LEGACY_PICKLES):
                    _load_dry(data, declared)
    except PICKLE_ERRORS as error:
        raise corrupted(path, what, error) from None
    return declared


def corrupted(path, what: str, error: BaseException) -> PiSAError:
    return PiSAError(f"'{path}' could not be read as {what}: it is corrupted or not a torch.save file "
                     f"({type(error).__name__}).")


def declared_limit(file_size: int) -> int:
    return max(MAX_EXPANSION * file_size, MIN_DECLARED_BYTES)


def check_declared_sizes(path, what: str) -> None:
    """PiSAError unless what the file declares fits the limits of the module docstring."""
    path = Path(path)
    size = path.stat().st_size
    declared = scan(path, what)
    stored = sum(declared.storages.values())
    if stored > size:
        raise PiSAError(f"'{path}' declares {stored:,} bytes of tensor data, but the file has only {size:,} bytes: "
                        f"it is truncated or corrupted ({what}).")
    if declared.tensor_bytes > declared_limit(size):
        raise PiSAError(f"'{path}' declares tensors of {declared.tensor_bytes:,} bytes in all, more than "
                        f"{declared_limit(size):,} for a file of {size:,} bytes (tensors repeating the same data); "
                        f"refused ({what}).")
