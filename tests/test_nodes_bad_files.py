"""Damaged weights files inside ComfyUI: listing the model folders skips what cannot be PiSA-SR
weights without a traceback, and loading a damaged file raises our one-line PiSAError naming it
(nodes/model.py's helpers, as the loader node calls them)."""

from __future__ import annotations

import io
import re
import sys
import zipfile

import pytest
import torch
from test_nodes import PACK  # noqa: F401  (imports the pack as ComfyUI does)

model = sys.modules["pisa_sr_pack_under_test.nodes.model"]
PiSAError = sys.modules["pisa_sr_pack_under_test.pisa_core.errors"].PiSAError


def _rezip(data: bytes, compression=zipfile.ZIP_STORED, flag_bits: int = 0) -> bytes:
    """The same torch.save archive written again with another compression or header flags."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", compression) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    data = bytearray(out.getvalue())
    if flag_bits:
        for match in re.finditer(rb"PK\x01\x02|PK\x03\x04", bytes(data)):
            at = match.start() + (8 if data[match.start() + 2] == 1 else 6)
            data[at:at + 2] = (int.from_bytes(data[at:at + 2], "little") | flag_bits).to_bytes(2, "little")
    return bytes(data)


DAMAGED = ("truncated.pkl", "no-directory.pkl", "deflated.pkl", "encrypted.pkl", "bit-flips.pkl",
           "truncated.safetensors", "header.safetensors", "legacy-garbage.pkl")


def _damaged(model_dir) -> dict:
    """name -> bytes of damaged PiSA-SR weights files (each read in full would fail)."""
    pkl = (model_dir / "pisa_sr.pkl").read_bytes()
    ours = (model_dir / "pisa_sr.safetensors").read_bytes()
    legacy = io.BytesIO()
    torch.save({"state_dict_unet": {"a": torch.zeros(4)}}, legacy, _use_new_zipfile_serialization=False)
    directory = pkl.rindex(b"PK\x01\x02")
    files = {
        "truncated.pkl": pkl[:len(pkl) // 2],
        "no-directory.pkl": pkl[:directory] + b"\0" * (len(pkl) - directory),
        "deflated.pkl": _rezip(pkl, zipfile.ZIP_DEFLATED),
        "encrypted.pkl": _rezip(pkl, flag_bits=0x1),
        "bit-flips.pkl": pkl[:200] + bytes(b ^ 0x5A for b in pkl[200:400]) + pkl[400:],
        "truncated.safetensors": ours[:len(ours) - 100],
        "header.safetensors": ours[:8] + b"{" + ours[9:200].replace(b'"', b"'") + ours[200:],
        "legacy-garbage.pkl": legacy.getvalue()[:60] + b"\xff" * 40,
    }
    assert tuple(files) == DAMAGED
    return files


@pytest.fixture()
def models_folder(model_dir, tmp_path, monkeypatch):
    """ComfyUI model folders: the tiny base model, the damaged files in pisa_sr/ and loras/."""
    (tmp_path / "diffusers").mkdir()
    (tmp_path / "diffusers" / "sd21-tiny").symlink_to(model_dir / "sd21-tiny", target_is_directory=True)
    for folder in ("pisa_sr", "loras"):
        (tmp_path / folder).mkdir()
        for name, data in _damaged(model_dir).items():
            (tmp_path / folder / name).write_bytes(data)
    (tmp_path / "loras" / "dangling.pkl").symlink_to(tmp_path / "gone.pkl")
    (tmp_path / "loras" / "good.pkl").write_bytes((model_dir / "pisa_sr.pkl").read_bytes())
    monkeypatch.setenv("PISA_SR_MODELS_DIR", str(tmp_path))
    return tmp_path


def test_damaged_files_in_the_loras_folder_are_not_offered(models_folder):
    loras = [name for name in model.pisa_weight_choices() if name.startswith(model.LORAS_PREFIX)]
    assert loras == [model.LORAS_PREFIX + "good.pkl"]


def test_a_lora_removed_after_the_listing_is_not_offered(models_folder, monkeypatch):
    """ComfyUI's own listing can name a file that is gone (a dangling link, removed since)."""
    listing = model.host.HOST.files_in
    monkeypatch.setattr(model.host.HOST, "files_in", lambda kind, extensions: [
        *listing(kind, extensions), *(["removed.pkl"] if kind == model.host.LORA_FOLDER else [])])
    loras = [name for name in model.pisa_weight_choices() if name.startswith(model.LORAS_PREFIX)]
    assert loras == [model.LORAS_PREFIX + "good.pkl"]


@pytest.mark.parametrize("name", DAMAGED)
def test_loading_damaged_weights_is_one_line_naming_the_file(models_folder, name):
    with pytest.raises(PiSAError) as error:
        model.load_model("[diffusers] sd21-tiny", name, "fp32")
    message = str(error.value)
    assert name in message and "\n" not in message, message
