"""PiSA-SR weights: official pisa_sr.pkl (safe loading), our .safetensors, deltas, compatibility."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from pisa_files import official_pisa_dict, write_official_pkl, write_pisa_safetensors
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import tiny_unet

from pisa_core.cli.main import main as cli_main
from pisa_core.errors import PiSAError
from pisa_core.model.checkpoint import (
    FORMAT_MARKER,
    FORMAT_VERSION,
    check_compatible,
    convert_pisa_weights,
    describe,
    load_pisa_weights,
    save_official_pkl,
    save_pisa_weights,
)
from pisa_core.model.lora import GROUPS, lora_delta, merged_weight, module_group, release_target_modules

SD21_BASE_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 64,
    "use_linear_projection": True,
    "in_channels": 4,
    "out_channels": 4,
}


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def _kind(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    assert isinstance(module, torch.nn.Conv2d)
    return f"conv{module.kernel_size[0]}x{module.kernel_size[1]}"


def _expected_counts(unet):
    modules = dict(unet.named_modules())
    names = release_target_modules(unet)
    return Counter(module_group(n) for n in names), Counter(_kind(modules[n]) for n in names)


# ---------------------------------------------------------------- release rule


def test_release_rule_on_real_size_sd21_architecture():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_BASE_UNET)
    groups, kinds = _expected_counts(unet)
    assert (groups["encoder"], groups["decoder"], groups["others"]) == (94, 148, 16)
    assert (kinds["linear"], kinds["conv3x3"], kinds["conv1x1"]) == (192, 52, 14)
    names = release_target_modules(unet)
    assert len(names) == len(set(names)) == 258
    assert "conv_in" in names and "conv_out" in names and "mid_block.resnets.0.conv1" in names
    assert "down_blocks.0.downsamplers.0.conv" in names and "up_blocks.0.upsamplers.0.conv" in names
    assert not any("time_emb" in n or "norm" in n for n in names)


def test_module_group_follows_release_order():
    assert module_group("conv_in") == "encoder"
    assert module_group("down_blocks.1.resnets.0.conv_shortcut") == "encoder"
    assert module_group("conv_out") == "decoder"
    assert module_group("up_blocks.2.attentions.1.proj_out") == "decoder"
    assert module_group("mid_block.attentions.0.transformer_blocks.0.attn1.to_q") == "others"
    # down_blocks/conv_in is tested before up_blocks/conv_out.
    assert module_group("up_blocks.0.conv_in") == "encoder"


# ---------------------------------------------------------------- official pkl and conversion


def test_official_pkl_loads(tmp_path, unet):
    path = tmp_path / "pisa_sr.pkl"
    data = write_official_pkl(unet, path)
    weights = load_pisa_weights(path)
    assert weights.format == "official-pkl" and weights.source == str(path)
    check_compatible(weights, unet, path)
    groups, kinds = _expected_counts(unet)
    info = describe(weights)
    assert info["format"] == "official-pkl"
    for name in ("pix", "sem"):
        family = weights.family(name)
        assert (family.rank, family.alpha, family.scale) == (4, 8.0, 2.0)
        summary = info["families"][name]
        assert (summary["rank"], summary["alpha"], summary["scale"]) == (4, 8.0, 2.0)
        assert summary["groups"] == {g: groups[g] for g in GROUPS}
        assert summary["kinds"] == dict(kinds)
        assert summary["modules"] == len(release_target_modules(unet))
        for group in GROUPS:
            listed = data[f"unet_lora_{group}_modules_{name}"]
            assert [m for m in family.factors if module_group(m) == group] == listed
        for module, (A, B) in family.factors.items():
            adapter = f"default_{module_group(module)}_{name}"
            assert A.dtype == B.dtype == torch.float32
            assert torch.equal(A, data["state_dict_unet"][f"{module}.lora_A.{adapter}.weight"])
            assert torch.equal(B, data["state_dict_unet"][f"{module}.lora_B.{adapter}.weight"])
    total = sum(t.numel() for t in data["state_dict_unet"].values())
    assert info["parameters"] == total
    assert info["families"]["pix"]["parameters"] + info["families"]["sem"]["parameters"] == total


def test_official_pkl_with_different_sem_rank(tmp_path, unet):
    path = tmp_path / "pisa_sr.pkl"
    write_official_pkl(unet, path, rank=4, rank_sem=2)
    weights = load_pisa_weights(path)
    assert (weights.pix.rank, weights.pix.scale) == (4, 2.0)
    assert (weights.sem.rank, weights.sem.scale) == (2, 4.0)


def test_convert_gives_identical_tensors_and_metadata(tmp_path, unet):
    src, dst = tmp_path / "pisa_sr.pkl", tmp_path / "out" / "pisa_sr.safetensors"
    write_official_pkl(unet, src, rank=4, rank_sem=2)
    original = load_pisa_weights(src)
    convert_pisa_weights(src, dst)
    converted = load_pisa_weights(dst)
    assert converted.format == "pisa-safetensors"
    for name in ("pix", "sem"):
        a, b = original.family(name), converted.family(name)
        assert (a.rank, a.alpha) == (b.rank, b.alpha)
        assert list(a.factors) == list(b.factors)
        for module in a.factors:
            assert all(torch.equal(x, y) for x, y in zip(a.factors[module], b.factors[module]))
    with safe_open(str(dst), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == FORMAT_MARKER and meta["format_version"] == str(FORMAT_VERSION)
    assert (meta["pix.rank"], meta["sem.rank"]) == ("4", "2")
    assert float(meta["pix.alpha"]) == float(meta["sem.alpha"]) == 8.0
    assert json.loads(meta["pix.target_modules"]) == list(original.pix.factors)
    assert describe(converted)["families"] == describe(original)["families"]


def test_convert_refuses_bad_destinations(tmp_path, unet):
    pkl = tmp_path / "pisa_sr.pkl"
    write_official_pkl(unet, pkl)
    with pytest.raises(PiSAError, match=r"\.safetensors .*\.pkl .*'\.bin'"):
        convert_pisa_weights(pkl, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    ours = tmp_path / "ours.safetensors"
    convert_pisa_weights(pkl, ours)
    before = ours.read_bytes()
    with pytest.raises(PiSAError, match="onto itself"):
        convert_pisa_weights(ours, tmp_path / "." / "ours.safetensors")
    assert ours.read_bytes() == before
    with pytest.raises(PiSAError, match=r"\.safetensors"):
        save_pisa_weights(load_pisa_weights(ours), tmp_path / "x.bin")
    with pytest.raises(PiSAError, match=r"\.pkl"):
        save_official_pkl(load_pisa_weights(ours), tmp_path / "x.safetensors")


# ---------------------------------------------------------------- writing the official layout


def read_as_released(path, unet) -> dict:
    """A reader of pisa_sr.pkl written from the release's documented layout (docs/release.md,
    "Weights file"), not from our loader: plain torch.load(weights_only=True), the nine key names,
    and per listed module the two tensors of its adapter, shaped for the UNet's layer. Returns
    {(family, module): (A, B)} after checking every key, type, dtype and shape."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    lists = {(family, group): f"unet_lora_{group}_modules_{family}" for family in ("pix", "sem")
             for group in ("encoder", "decoder", "others")}
    ranks = {family: f"lora_rank_unet_{family}" for family in ("pix", "sem")}
    assert set(data) == {*lists.values(), *ranks.values(), "state_dict_unet"}
    assert all(type(data[key]) is int for key in ranks.values())
    layers = dict(unet.named_modules())
    state = data["state_dict_unet"]
    factors, expected_keys = {}, set()
    for (family, group), key in lists.items():
        assert all(isinstance(name, str) for name in data[key])
        rank = data[ranks[family]]
        for module in data[key]:
            a_key = f"{module}.lora_A.default_{group}_{family}.weight"
            b_key = f"{module}.lora_B.default_{group}_{family}.weight"
            expected_keys |= {a_key, b_key}
            A, B = state[a_key], state[b_key]
            weight = layers[module].weight
            if isinstance(layers[module], torch.nn.Conv2d):
                assert A.shape == (rank, weight.shape[1], *weight.shape[2:]) and B.shape == (weight.shape[0], rank, 1, 1)
            else:
                assert A.shape == (rank, weight.shape[1]) and B.shape == (weight.shape[0], rank)
            assert A.dtype == B.dtype == torch.float32
            factors[(family, module)] = (A, B)
    assert set(state) == expected_keys
    return data, factors


def _release_delta(A, B, rank):
    """ΔW as the release merges it: peft's default alpha 8 over the stored rank."""
    return lora_delta(A, B, 8.0 / rank)


@pytest.mark.parametrize("rank, rank_sem, alpha, alpha_sem", [(4, 2, 8.0, 8.0), (2, 4, 4.0, 16.0)])
def test_written_pkl_reads_as_the_release_reads_it(tmp_path, unet, rank, rank_sem, alpha, alpha_sem):
    """Our .safetensors -> OUT.pkl: every module the release targets is listed in its group, every
    key and shape is the release's, and the release's scale (8 / rank) gives our ΔW, also for an
    alpha other than 8 (folded into B)."""
    src, dst = tmp_path / "ours.safetensors", tmp_path / "pisa_sr.pkl"
    written = write_pisa_safetensors(unet, src, rank=rank, rank_sem=rank_sem, alpha=alpha, alpha_sem=alpha_sem)
    convert_pisa_weights(src, dst)
    data, factors = read_as_released(dst, unet)
    targets = release_target_modules(unet)
    for family in ("pix", "sem"):
        assert data[f"lora_rank_unet_{family}"] == written.family(family).rank
        for group in GROUPS:
            assert data[f"unet_lora_{group}_modules_{family}"] == [m for m in targets if module_group(m) == group]
        ours = written.family(family)
        for module, (A, B) in ours.factors.items():
            stored_A, stored_B = factors[(family, module)]
            assert torch.equal(stored_A, A)
            expected = lora_delta(A, B, ours.scale)
            torch.testing.assert_close(_release_delta(stored_A, stored_B, ours.rank), expected, rtol=1e-6, atol=1e-7)
    back = load_pisa_weights(dst)
    assert back.format == "official-pkl" and describe(back)["families"]["pix"]["modules"] == len(targets)


def test_official_round_trip_gives_identical_tensors(tmp_path, unet):
    """official -> ours -> official: the same keys, lists, ranks, and tensors of the same dtype and values."""
    original, ours, again = tmp_path / "pisa_sr.pkl", tmp_path / "ours.safetensors", tmp_path / "again.pkl"
    write_official_pkl(unet, original, rank=4, rank_sem=2)
    convert_pisa_weights(original, ours)
    convert_pisa_weights(ours, again)
    first = torch.load(original, map_location="cpu", weights_only=True)
    second = torch.load(again, map_location="cpu", weights_only=True)
    assert set(first) == set(second)
    for key in first:
        if key != "state_dict_unet":
            assert first[key] == second[key] and type(first[key]) is type(second[key])
    a, b = first["state_dict_unet"], second["state_dict_unet"]
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert torch.equal(a[name], b[name])


def test_a_damaged_training_state_is_refused_in_one_line(tmp_path):
    """A train.pt whose LoRA entry is not the family -> module -> {A, B} of save_train_state."""
    state = tmp_path / "state_step000001"
    state.mkdir()
    torch.save({"step": 1, "stage": "pix", "config": "{}", "lora": {"pix": {"conv_in": torch.zeros(2)}}},
               state / "train.pt")
    with pytest.raises(PiSAError, match=r"looks like a training state") as caught:
        convert_pisa_weights(state, tmp_path / "out.pkl")
    assert "\n" not in str(caught.value) and "train.pt" in str(caught.value)
    assert not (tmp_path / "out.pkl").exists()


def test_cli_convert_picks_the_format_from_the_suffix(tmp_path, unet, capsys):
    src = tmp_path / "ours.safetensors"
    write_pisa_safetensors(unet, src)
    assert cli_main(["convert", str(src), str(tmp_path / "out.pkl")]) == 0
    assert load_pisa_weights(tmp_path / "out.pkl").format == "official-pkl"
    capsys.readouterr()
    assert cli_main(["convert", str(src), str(tmp_path / "out.ckpt")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".safetensors" in err and ".pkl" in err and "out.ckpt" in err
    assert not (tmp_path / "out.ckpt").exists()


def test_our_safetensors_keeps_alpha_and_detects_format_by_content(tmp_path, unet):
    path = tmp_path / "weights.safetensors"
    written = write_pisa_safetensors(unet, path, rank=2, alpha=4.0, alpha_sem=16.0)
    renamed = tmp_path / "weights.pkl"  # the content decides, not the extension
    os.replace(path, renamed)
    loaded = load_pisa_weights(renamed)
    assert loaded.format == "pisa-safetensors"
    assert (loaded.pix.alpha, loaded.pix.scale, loaded.sem.alpha, loaded.sem.scale) == (4.0, 2.0, 16.0, 8.0)
    for module, (A, B) in written.sem.factors.items():
        assert torch.equal(loaded.sem.factors[module][0], A) and torch.equal(loaded.sem.factors[module][1], B)


def test_official_names_in_safetensors_are_accepted(tmp_path, unet):
    data = official_pisa_dict(unet)
    path = tmp_path / "pisa_sr.safetensors"
    save_file(data["state_dict_unet"], str(path))
    from_pkl = load_pisa_weights(_saved(tmp_path / "pisa_sr.pkl", data))
    loaded = load_pisa_weights(path)
    assert loaded.format == "official-safetensors"
    assert (loaded.pix.rank, loaded.pix.scale) == (4, 2.0)
    assert describe(loaded)["families"] == describe(from_pkl)["families"]
    for module, (A, B) in from_pkl.pix.factors.items():
        assert torch.equal(loaded.pix.factors[module][0], A) and torch.equal(loaded.pix.factors[module][1], B)


# ---------------------------------------------------------------- deltas vs the peft computation


def test_linear_delta_matches_peft_forward(unet, tmp_path):
    path = tmp_path / "pisa_sr.pkl"
    write_official_pkl(unet, path)
    family = load_pisa_weights(path).pix
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    layer = dict(unet.named_modules())[name]
    A, B = family.factors[name]
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        peft = layer(x) + family.scale * F.linear(F.linear(x, A), B)
        merged = F.linear(x, layer.weight + lora_delta(A, B, family.scale), layer.bias)
    assert lora_delta(A, B, family.scale).dtype == torch.float32
    assert (peft - layer(x)).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(merged, peft, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [
    "down_blocks.0.downsamplers.0.conv",  # 3x3, stride 2, padding 1
    "down_blocks.0.resnets.0.conv1",      # 3x3, stride 1, padding 1
    "down_blocks.1.resnets.0.conv_shortcut",  # 1x1
])
def test_conv_delta_matches_peft_forward(unet, tmp_path, name):
    path = tmp_path / "pisa_sr.pkl"
    write_official_pkl(unet, path, seed=3)
    family = load_pisa_weights(path).sem
    layer = dict(unet.named_modules())[name]
    A, B = family.factors[name]
    x = torch.randn(2, layer.in_channels, 9, 11)
    with torch.no_grad():
        lora = F.conv2d(F.conv2d(x, A, stride=layer.stride, padding=layer.padding), B)
        peft = layer(x) + family.scale * lora
        merged = F.conv2d(x, layer.weight + lora_delta(A, B, family.scale), layer.bias,
                          stride=layer.stride, padding=layer.padding)
    assert lora.abs().max() > 1e-3
    torch.testing.assert_close(merged, peft, rtol=1e-5, atol=1e-5)


def test_stride2_conv_delta_on_random_factors():
    torch.manual_seed(0)
    W, bias = torch.randn(6, 5, 3, 3), torch.randn(6)
    A, B = torch.randn(3, 5, 3, 3), torch.randn(6, 3, 1, 1)
    x = torch.randn(1, 5, 8, 7)
    peft = F.conv2d(x, W, bias, stride=2, padding=1) + 0.5 * F.conv2d(F.conv2d(x, A, stride=2, padding=1), B)
    merged = F.conv2d(x, W + lora_delta(A, B, 0.5), bias, stride=2, padding=1)
    torch.testing.assert_close(merged, peft, rtol=1e-5, atol=1e-5)
    with pytest.raises(PiSAError, match="do not fit"):
        lora_delta(A, torch.randn(6, 3, 3, 3), 0.5)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_weight_sums_pairs_of_different_ranks_once(shape, dtype):
    """Both LoRAs in one product (ranks 3 and 2 here) equal W0 + Σ s·ΔW summed in float32, rounded
    once to the weight's dtype; the weight itself is left alone; a pair of another shape is refused."""
    torch.manual_seed(1)
    W = torch.randn(shape).to(dtype)
    kernel = shape[2:]
    pairs = [(torch.randn(r, shape[1], *kernel), torch.randn(shape[0], r, *([1, 1] if kernel else [])), s)
             for r, s in ((3, 2.0), (2, -0.5))]
    before = W.clone()
    merged = merged_weight(W, pairs)
    expected = (W.float() + sum(lora_delta(A, B, s) for A, B, s in pairs)).to(dtype)
    assert merged.dtype == dtype and merged.shape == W.shape
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16: at most one unit in the last place apart
    torch.testing.assert_close(merged, expected, rtol=tol, atol=tol)
    assert torch.equal(W, before)
    assert merged_weight(W, pairs, torch.float32).dtype == torch.float32
    assert merged_weight(W, []).data_ptr() != W.data_ptr()
    with pytest.raises(PiSAError, match="shape"):
        merged_weight(torch.randn(7, *shape[1:]), pairs)


# ---------------------------------------------------------------- bad inputs


def _saved(path, data):
    torch.save(data, path)
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("lora_rank_unet_sem"), "lacks key.*lora_rank_unet_sem"),
    (lambda d: d.update(lora_rank_unet_pix=4.0), "lora_rank_unet_pix.*positive int"),
    (lambda d: d.update(lora_rank_unet_pix=True), "lora_rank_unet_pix.*positive int"),
    (lambda d: d.update(unet_lora_encoder_modules_pix=[1, 2]), "list of module names"),
    (lambda d: d.update(state_dict_unet=[1]), "state_dict_unet.*dict"),
    (lambda d: d.update(lora_rank_unet_pix=8), "rank 4, but 'lora_rank_unet_pix' is 8"),
    (lambda d: d["unet_lora_others_modules_sem"].pop(), "has 'default_others_sem' tensors but is not listed"),
    (lambda d: d["unet_lora_decoder_modules_pix"].append("up_blocks.9.conv"), "listed in .* but has no"),
    (lambda d: d["state_dict_unet"].update({"conv_in.lora_C.default_encoder_pix.weight": torch.ones(1)}),
     "not of the form"),
    (lambda d: d["state_dict_unet"].update({"conv_in.lora_B.default_encoder_pix.weight": torch.ones(32, 4, 3, 3)}),
     r"lora_B of pix module 'conv_in'.*\(out, r, 1, 1\)"),
    (lambda d: d["state_dict_unet"].pop("conv_in.lora_A.default_encoder_sem.weight"), "no lora_A"),
    (lambda d: d["state_dict_unet"].update({"conv_in.lora_A.default_encoder_pix.weight": torch.ones(4, 4, 3, 3,
                                                                                              dtype=torch.int64)}),
     "floating-point"),
])
def test_official_schema_errors(tmp_path, unet, mutate, message):
    data = official_pisa_dict(unet)
    mutate(data)
    path = _saved(tmp_path / "pisa_sr.pkl", data)
    with pytest.raises(PiSAError, match=message) as info:
        load_pisa_weights(path)
    assert str(path) in str(info.value)


def test_non_dict_pickle(tmp_path):
    path = _saved(tmp_path / "pisa_sr.pkl", [torch.ones(2)])
    with pytest.raises(PiSAError, match="holds a list"):
        load_pisa_weights(path)


class _CreatesMarker:
    """Unpickling this would call open(marker, 'w'): code execution, which must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_carrying_pickle_is_refused(tmp_path, unet):
    marker = tmp_path / "marker"
    data = official_pisa_dict(unet)
    data["payload"] = _CreatesMarker(marker)
    path = _saved(tmp_path / "pisa_sr.pkl", data)
    with pytest.raises(PiSAError, match="refused for safety") as info:
        load_pisa_weights(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # The payload is live: an unsafe load would have created the marker.
    torch.load(path, weights_only=False)["payload"].close()  # noqa: S614 - proves the test can fail
    assert marker.exists()


@pytest.mark.parametrize("name", ["pisa_sr.pkl", "pisa_sr.safetensors", "noext"])
def test_random_bytes_are_rejected(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(PiSAError) as info:
        load_pisa_weights(path)
    assert str(path) in str(info.value)


def test_truncated_files_are_rejected(tmp_path, unet):
    pkl = tmp_path / "pisa_sr.pkl"
    write_official_pkl(unet, pkl)
    ours = tmp_path / "ours.safetensors"
    write_pisa_safetensors(unet, ours)
    for path in (pkl, ours):
        cut = tmp_path / f"cut_{path.name}"
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(PiSAError) as info:
            load_pisa_weights(cut)
        assert str(cut) in str(info.value)
    with pytest.raises(PiSAError, match="truncated or corrupted"):
        load_pisa_weights(tmp_path / "cut_ours.safetensors")
    with pytest.raises(PiSAError, match="does not exist"):
        load_pisa_weights(tmp_path / "missing.pkl")


def test_sd_checkpoint_in_safetensors_is_rejected(tmp_path, unet):
    path = tmp_path / "v2-1_512-ema-pruned.safetensors"
    state = {f"model.diffusion_model.{k}": v.contiguous() for k, v in list(unet.state_dict().items())[:20]}
    state["first_stage_model.encoder.conv_in.weight"] = torch.ones(2, 3, 3, 3)
    save_file(state, str(path))
    with pytest.raises(PiSAError, match="Stable Diffusion checkpoint"):
        load_pisa_weights(path)


def test_generic_lora_is_rejected(tmp_path):
    path = tmp_path / "style_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(32, 4)}, str(path))
    with pytest.raises(PiSAError, match="LoRA in another format"):
        load_pisa_weights(path)


def test_mixed_safetensors_is_rejected(tmp_path, unet):
    ours = tmp_path / "ours.safetensors"
    write_pisa_safetensors(unet, ours)
    tensors = load_file(str(ours))
    tensors["model.diffusion_model.out.2.weight"] = torch.ones(2)
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(PiSAError, match="mixes PiSA-SR LoRA tensors"):
        load_pisa_weights(path)


@pytest.mark.parametrize("key, value, message", [
    ("pix.rank", "8", "metadata says pix rank 8"),
    ("sem.rank", "four", "should be an integer"),
    ("format", "something-else", "metadata format"),
    ("format_version", str(FORMAT_VERSION + 1), "newer"),
    ("sem.target_modules", json.dumps(["conv_in"]), "does not match the sem tensors"),
    ("pix.target_modules", "not json", "JSON list"),
])
def test_metadata_is_cross_checked(tmp_path, unet, key, value, message):
    ours = tmp_path / "ours.safetensors"
    write_pisa_safetensors(unet, ours)
    with safe_open(str(ours), framework="pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(ours))
    meta[key] = value
    path = tmp_path / "tampered.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(PiSAError, match=message):
        load_pisa_weights(path)


def test_inconsistent_ranks_in_our_file(tmp_path, unet):
    ours = tmp_path / "ours.safetensors"
    write_pisa_safetensors(unet, ours)
    tensors = load_file(str(ours))
    tensors["pix.conv_out.lora_A"] = torch.ones(2, *tensors["pix.conv_out.lora_A"].shape[1:])
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(PiSAError, match="rank 2"):
        load_pisa_weights(path)


def test_weights_for_another_unet_width_are_incompatible(tmp_path, unet):
    wide = tiny_unet(block_out_channels=(64, 64))
    path = tmp_path / "wide.pkl"
    write_official_pkl(wide, path)
    weights = load_pisa_weights(path)
    check_compatible(weights, wide, path)
    with pytest.raises(PiSAError, match=r"another base model") as info:
        check_compatible(weights, unet, path)
    text = str(info.value)
    assert str(path) in text and "conv_in" in text and "(64, 4, 3, 3)" in text and "(32, 4, 3, 3)" in text


def test_weights_with_unknown_modules_are_incompatible(tmp_path, unet):
    deeper = tiny_unet(layers_per_block=3)
    path = tmp_path / "deeper.safetensors"
    write_pisa_safetensors(deeper, path)
    with pytest.raises(PiSAError, match=r"which the base UNet does not have"):
        check_compatible(load_pisa_weights(path), unet, path)
