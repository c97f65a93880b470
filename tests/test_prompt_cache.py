"""The empty-prompt embedding is cached per base model: the text encoder is loaded the first time
only; a changed file, an unwritable or a damaged cache never give a wrong embedding."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from transformers import CLIPTextModel

from pisa_core.model import prompt_cache
from pisa_core.model.base import load_base_model


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(prompt_cache.CACHE_ENV, str(folder))
    return folder


def text_encoders_made(load) -> tuple[object, int]:
    """load() and how many CLIPTextModel objects were built meanwhile (counted by a constructor hook)."""
    made = []
    original = CLIPTextModel.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        original(self, *args, **kwargs)

    CLIPTextModel.__init__ = counting
    try:
        return load(), len(made)
    finally:
        CLIPTextModel.__init__ = original
        gc.collect()


@pytest.mark.parametrize("source", ["sd21-tiny", "sd21-tiny.safetensors"])
def test_the_text_encoder_is_loaded_only_the_first_time(model_dir, cache, source):
    first, built = text_encoders_made(lambda: load_base_model(model_dir / source))
    assert built == 1 and not first.prompt_from_cache
    assert len(list(cache.glob("empty-prompt-*.safetensors"))) == 1
    second, built = text_encoders_made(lambda: load_base_model(model_dir / source))
    assert built == 0 and second.prompt_from_cache
    assert torch.equal(first.prompt_embeds, second.prompt_embeds)
    kept, built = text_encoders_made(lambda: load_base_model(model_dir / source, keep_text_encoder=True))
    assert built == 1 and kept.text_encoder is not None  # training asks for the encoder itself


def test_a_changed_base_file_is_a_new_entry(model_dir, cache, tmp_path):
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes((model_dir / "sd21-tiny.safetensors").read_bytes())
    load_base_model(copy)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the same path, another file version
    assert not load_base_model(copy).prompt_from_cache
    assert len(list(cache.glob("empty-prompt-*.safetensors"))) == 2


def test_an_unwritable_cache_falls_back_silently(model_dir, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(prompt_cache.CACHE_ENV, str(blocker / "cache"))
    for _ in range(2):
        base = load_base_model(model_dir / "sd21-tiny")
        assert not base.prompt_from_cache and base.prompt_embeds.shape[:2] == (1, 77)
    assert "PiSA-SR" not in caplog.text or "WARNING" not in caplog.text


def test_a_damaged_cache_file_is_recomputed(model_dir, cache):
    reference = load_base_model(model_dir / "sd21-tiny").prompt_embeds
    (entry,) = cache.glob("empty-prompt-*.safetensors")
    entry.write_bytes(entry.read_bytes()[:40])
    again = load_base_model(model_dir / "sd21-tiny")
    assert not again.prompt_from_cache and torch.equal(again.prompt_embeds, reference)
    assert load_base_model(model_dir / "sd21-tiny").prompt_from_cache  # written anew
