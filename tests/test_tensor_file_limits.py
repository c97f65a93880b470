"""The sizes a tensor file declares are checked against the file before anything is allocated
(files.torch_pickles, files.tensors): a storage larger than the file, tensors repeating one element into
terabytes, overlapping safetensors entries, counted strings and memo indices beyond the pickle.
Each case is also a finding of the fuzz targets or their regression (fuzz/fuzz_tensor_files.py)."""

from __future__ import annotations

import io
import json
import re
import struct
import time

import pytest
import torch

from pisa_core.errors import PiSAError
from pisa_core.files.tensors import SafetensorsFile, load_pickle, read_tensors
from pisa_core.files.torch_pickles import MIN_DECLARED_BYTES, declared_limit

WHAT = "test tensors"


def _saved(data, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _refused_quickly(path, *fragments):
    """PiSAError naming the file, in well under a second (nothing of the declared size is allocated)."""
    tic = time.perf_counter()
    with pytest.raises(PiSAError) as error:
        read_tensors(path, WHAT)
    assert time.perf_counter() - tic < 2
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_legacy_pickle_declaring_a_storage_larger_than_the_file_is_refused(tmp_path):
    data = _saved({"a": torch.arange(4.0)}, legacy=True)
    # the storage's element count follows its location 'cpu' in the pickle (BININT1 4)
    count = re.search(rb"X\x03\x00\x00\x00cpuq.K\x04", data, re.DOTALL)
    assert count is not None
    patched = data[:count.end() - 2] + b"\x8a\x08" + (10**12).to_bytes(8, "little") + data[count.end():]
    path = tmp_path / "huge-storage.pt"
    path.write_bytes(patched)
    _refused_quickly(path, "declares 4,000,000,000,000 bytes of tensor data")


def test_a_view_repeating_one_element_into_terabytes_is_refused(tmp_path):
    path = tmp_path / "bomb.ckpt"
    path.write_bytes(_saved({"w": torch.zeros(1).expand(10**6, 10**6)}))
    assert path.stat().st_size < 4096
    _refused_quickly(path, "declares tensors of 4,000,000,000,000 bytes")


def test_views_sharing_a_small_file_up_to_the_floor_load(tmp_path):
    """Tied weights and views share data; a small file may declare up to MIN_DECLARED_BYTES."""
    path = tmp_path / "views.ckpt"
    elements = MIN_DECLARED_BYTES // 4 // 2
    path.write_bytes(_saved({"w": torch.zeros(1).expand(elements), "v": torch.ones(3)}))
    assert declared_limit(path.stat().st_size) == MIN_DECLARED_BYTES
    assert read_tensors(path, WHAT)["w"].shape == (elements,)


def _legacy_with_counted_string(length: int) -> bytes:
    """A legacy torch file whose data pickle opens with a BINBYTES8 claiming `length` bytes."""
    data = bytearray(_saved({"a": torch.arange(2.0)}, legacy=True))
    start = data.index(b"\x80\x02}", 20)  # the data pickle (after magic number, protocol, system info)
    return bytes(data[:start + 2] + b"\x8e" + struct.pack("<Q", length) + data[start + 2:])


def test_a_counted_string_beyond_the_pickle_is_refused_before_it_is_allocated(tmp_path):
    """Fuzz finding (fuzz_pisa_weights, fuzz_tensor_files): MemoryError from the unpickler, which
    allocates the count it reads before reading."""
    path = tmp_path / "counted.pt"
    path.write_bytes(_legacy_with_counted_string(2**60))
    _refused_quickly(path, "corrupted or not a torch.save file")


def test_a_memo_index_beyond_the_pickle_is_refused(tmp_path):
    data = bytearray(_saved({"a": torch.arange(2.0)}, legacy=True))
    start = data.index(b"\x80\x02}", 20)
    # LONG_BINPUT 2**32 - 1: the C unpickler would size its memo for four billion entries
    patched = data[:start + 3] + b"r\xff\xff\xff\xff" + data[start + 3:]
    path = tmp_path / "memo.pt"
    path.write_bytes(bytes(patched))
    _refused_quickly(path, "corrupted or not a torch.save file")


def test_a_torch_zip_named_safetensors_is_read_as_what_it_is(tmp_path):
    """Fuzz finding (fuzz_tensor_files seeds): torch.load hands any path ending in .safetensors to the
    safetensors package, so a torch.save file of that name failed with SafetensorError."""
    path = tmp_path / "renamed.safetensors"
    path.write_bytes(_saved({"a": torch.arange(3.0)}))
    assert torch.equal(load_pickle(path, WHAT)["a"], torch.arange(3.0))


def _safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_a_safetensors_header_claiming_terabytes_is_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(_safetensors({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}},
                                  bytes(16)))
    _refused_quickly(path, "does not match its shape")


def test_overlapping_safetensors_entries_are_refused(tmp_path):
    """Each entry fits the data, but together they declare more than it holds."""
    header = {f"w{i}": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]} for i in range(8)}
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(_safetensors(header, bytes(16)))
    with pytest.raises(PiSAError, match="overlap"):
        SafetensorsFile(path, WHAT)


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]},      # JSON 1e400 is infinity: OverflowError
    {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]},
    {"dtype": "F32", "shape": [2**70, 0], "data_offsets": [0, 0]},   # empty, but no int64 holds the side
    {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]},
    {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},
])
def test_a_safetensors_size_that_is_no_integer_is_refused(tmp_path, entry):
    """Found by review beside the fuzz target (not in its 10-minute run): OverflowError and TypeError
    from sizes that are JSON floats or beyond int64."""
    path = tmp_path / "sizes.safetensors"
    text = json.dumps({"w": entry}).replace("Infinity", "1e400").encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(4))
    with pytest.raises(PiSAError, match="not sizes"):
        SafetensorsFile(path, WHAT)
