"""`pisa-sr caption`: same-stem caption files from a local image-captioning model (a tiny random
BLIP built here), and what `pisa-sr train` then reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pisa_core.cli.main import main as cli_main
from pisa_core.errors import PiSAError
from pisa_core.train.caption import Captioner, write_text_atomic
from pisa_core.train.data import build_items, missing_caption_warning

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "the", "red", "brick", "wall", "cat", "dog", "sky"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """A randomly initialised BlipForConditionalGeneration with its image processor and a BERT
    word-piece tokenizer, saved as a model folder (the layout of the hub's BLIP captioners)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    root = tmp_path_factory.mktemp("blip")
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    ids = {w: i for i, w in enumerate(WORDS)}
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**layers, "vocab_size": len(WORDS), "encoder_hidden_size": 32, "max_position_embeddings": 64,
            "bos_token_id": ids["[DEC]"], "eos_token_id": ids["[SEP]"], "sep_token_id": ids["[SEP]"],
            "pad_token_id": ids["[PAD]"]}
    vision = {**layers, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(root)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    BertTokenizer(str(root / "vocab.txt"), bos_token="[DEC]").save_pretrained(root)
    return root


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((24, 28, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def test_caption_writes_same_stem_files_and_keeps_existing_ones(blip_dir, tmp_path, capsys):
    data = tmp_path / "hq"
    write_image(data / "a.png", 0)
    write_image(data / "sub" / "b.jpg", 1)
    (data / "sub" / "b.txt").write_text("my own caption\n")
    assert "1 of 2 images" in missing_caption_warning(build_items([data]))
    assert cli_main(["caption", str(data), "--model", str(blip_dir), "--batch-size", "1"]) == 0
    assert "wrote 1 caption file(s), kept 1 existing" in capsys.readouterr().out
    expected = Captioner(blip_dir)([data / "a.png", data / "sub" / "b.jpg"])
    assert expected[0] and all(word in WORDS for word in expected[0].split())
    assert (data / "a.txt").read_text() == expected[0] + "\n"
    assert (data / "sub" / "b.txt").read_text() == "my own caption\n"
    assert sorted(p.name for p in data.rglob("*") if p.is_file()) == ["a.png", "a.txt", "b.jpg", "b.txt"]
    # training reads them: every image has a caption now
    items = build_items([data])
    assert [i.caption for i in items] == [expected[0], "my own caption"] and missing_caption_warning(items) is None
    assert cli_main(["caption", str(data), "--model", str(blip_dir), "--overwrite"]) == 0
    assert (data / "sub" / "b.txt").read_text() == expected[1] + "\n"


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no config.json"),
    (lambda d: (d / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}'), "no transformers model_type"),
    (lambda d: (d / "config.json").write_text('{"model_type": "clip_text_model"}'), "'clip_text_model' model"),
    (lambda d: (d / "config.json").write_text('{"model_type": "blip"}'), "could not be loaded"),
])
def test_caption_refuses_a_folder_that_is_not_a_captioner(tmp_path, capsys, make, message):
    write_image(tmp_path / "hq" / "a.png", 0)
    folder = tmp_path / "model"
    folder.mkdir()
    make(folder)
    assert cli_main(["caption", str(tmp_path / "hq"), "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "hq" / "a.txt").exists()
    # a hub-style name is a missing local folder, never a download
    with pytest.raises(PiSAError, match="no config.json"):
        Captioner("Salesforce/blip-image-captioning-base")


def test_caption_files_are_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "bad \ud800")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
