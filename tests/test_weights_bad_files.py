"""Damaged PiSA-SR weights and training states as `pisa-sr convert` and `info` read them: one
PiSAError naming the file, whatever the damage. Each case is a finding of fuzz/fuzz_convert.py or
fuzz/fuzz_pisa_weights.py (or the neighbour of one)."""

from __future__ import annotations

import json

import pytest
import torch

from pisa_core.errors import PiSAError
from pisa_core.model.checkpoint import load_convertible, official_pisa_dict


def _train_state(pix: dict, stage: str = "sem", sem: dict | None = None) -> dict:
    sem = sem or {"conv_in": {"A": torch.randn(1, 4, 3, 3), "B": torch.randn(4, 1, 1, 1)}}
    return {"step": 1, "stage": stage, "config": json.dumps({"alpha_pix": 8.0, "alpha_sem": 8.0}),
            "lora": {"pix": pix, "sem": sem}}


GOOD = {"A": torch.randn(1, 4), "B": torch.randn(4, 1)}
CASES = {
    # fuzz finding: RuntimeError from Tensor.__contains__ when a module name is a tensor
    "module named by a tensor": _train_state({torch.zeros(2): GOOD}),
    "module named by an int": _train_state({3: GOOD}),
    # neighbours: in the pix stage the sem family is zeroed, which met non-tensors unchecked
    "sem factor that is a list, pix stage": _train_state({"to_q": GOOD}, "pix",
                                                         {"to_q": GOOD, "to_k": {"A": [1.0], "B": GOOD["B"]}}),
    "factors of another rank": _train_state({"to_q": GOOD, "to_k": {"A": torch.randn(2, 4), "B": torch.randn(4, 2)}}),
}


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_training_state_is_one_line(tmp_path, case):
    path = tmp_path / "train.pt"
    torch.save(CASES[case], path)
    with pytest.raises(PiSAError) as error:
        official_pisa_dict(load_convertible(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_an_intact_training_state_converts(tmp_path):
    path = tmp_path / "train.pt"
    torch.save(_train_state({"to_q": GOOD}), path)
    weights = load_convertible(path)
    assert weights.format == "training-state" and weights.pix.rank == 1


@pytest.mark.parametrize("name", [torch.zeros(3, 3), ("a", 1)])
def test_an_official_tensor_name_that_is_no_string_is_one_line(tmp_path, name):
    """A tensor's repr spans lines; the message names the kind of key instead."""
    from pisa_core.model.checkpoint import load_pisa_weights
    from pisa_core.model.lora import FAMILIES, GROUPS

    data = {f"unet_lora_{group}_modules_{family}": [] for family in FAMILIES for group in GROUPS}
    data.update(lora_rank_unet_pix=4, lora_rank_unet_sem=4, state_dict_unet={name: torch.zeros(1)})
    path = tmp_path / "pisa_sr.pkl"
    torch.save(data, path)
    with pytest.raises(PiSAError) as error:
        load_pisa_weights(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_tensor_name_with_a_line_break_is_one_line(tmp_path):
    """Fuzz finding (fuzz_pisa_weights, its one-line check): a safetensors tensor name holding a newline
    was quoted as it is, so the error spanned two lines."""
    from safetensors.torch import save_file

    from pisa_core.model.checkpoint import load_pisa_weights

    path = tmp_path / "names.safetensors"
    save_file({"pix.conv_in.lora_A": torch.zeros(1, 4), "conv_in.lora_A.default_\ncoder_sem.weight": torch.zeros(1)},
              str(path))
    with pytest.raises(PiSAError, match="holds control characters") as error:
        load_pisa_weights(path)
    assert "\n" not in str(error.value)


def test_a_module_list_with_a_line_break_is_one_line(tmp_path):
    from pisa_core.model.checkpoint import load_pisa_weights
    from pisa_core.model.lora import FAMILIES, GROUPS

    data = {f"unet_lora_{group}_modules_{family}": ["conv_in\nx"] for family in FAMILIES for group in GROUPS}
    data.update(lora_rank_unet_pix=4, lora_rank_unet_sem=4, state_dict_unet={})
    path = tmp_path / "pisa_sr.pkl"
    torch.save(data, path)
    with pytest.raises(PiSAError, match="printable") as error:
        load_pisa_weights(path)
    assert "\n" not in str(error.value)
