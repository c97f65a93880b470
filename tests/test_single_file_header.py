"""The single-file loader's header handling (model.base.read_single_file: keys and shapes read,
structure checked, configs inferred, keys renamed, no model built) on damaged checkpoints: one
PiSAError naming the file and the tensor, never a KeyError or IndexError from inside the converter.
Each case is a finding of fuzz/fuzz_sd_single_file.py or a neighbour of one."""

from __future__ import annotations

import pytest
import torch
from model_files import ldm_state_dict, vae_with
from tiny_models import tiny_text_encoder, tiny_unet

from pisa_core.errors import PiSAError
from pisa_core.model.base import read_single_file

U, V, T = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."


@pytest.fixture(scope="module")
def state():
    return ldm_state_dict(tiny_unet(layers_per_block=1), vae_with(), tiny_text_encoder())


def _written(tmp_path, state: dict, change) -> str:
    state = dict(state)
    change(state)
    path = tmp_path / "damaged.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def test_the_intact_header_reads(tmp_path, state):
    parts = read_single_file(_written(tmp_path, state, lambda s: None))
    assert parts.unet_config["cross_attention_dim"] == parts.text_config.hidden_size


CASES = {
    # fuzz finding: KeyError 'out.2.weight' in infer_unet_config
    "missing UNet output": (lambda s: s.pop(U + "out.2.weight"), "'out.2.weight'"),
    "missing VAE input": (lambda s: s.pop(V + "encoder.conv_in.weight"), "'encoder.conv_in.weight'"),
    "missing positions": (lambda s: s.pop(T + "positional_embedding"), "'positional_embedding'"),
    "flat conv_in": (lambda s: s.update({U + "input_blocks.0.0.weight": torch.zeros(4)}),
                     "'input_blocks.0.0.weight' has shape (4,)"),
    "0-d token embedding": (lambda s: s.update({T + "token_embedding.weight": torch.tensor(1.0)}),
                            "'token_embedding.weight' has shape ()"),
    "qkv not divisible by 3": (lambda s: s.update({T + "transformer.resblocks.0.attn.in_proj_bias": torch.zeros(10)}),
                               "in_proj_bias' has shape (10,)"),
    "VAE attention 3x3": (lambda s: s.update({V + "encoder.mid.attn_1.q.weight": torch.zeros(64, 64, 3, 3)}),
                          "expected a 1x1 convolution"),
    # fuzz finding: AttributeError 'tuple' object has no attribute 'startswith' (a key that is no name)
    "tensor under a tuple key": (lambda s: s.update({(U, torch.zeros(2)): torch.zeros(1)}),
                                 "under a key that is a tuple, not a name"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_header_is_one_line_naming_the_tensor(tmp_path, state, case):
    change, fragment = CASES[case]
    path = _written(tmp_path, state, change)
    with pytest.raises(PiSAError) as error:
        read_single_file(path)
    message = str(error.value)
    assert str(path) in message and fragment in message and "\n" not in message, message
