"""Training end to end on a tiny SD2-structured model: both stages, checkpoints the inference
pipeline loads, overfitting, bit-for-bit resume, data and captions, the release's recipe, and one
step on the meta device."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from launcher import accelerate_two_processes, run_launched
from PIL import Image
from safetensors.torch import load_file

from pisa_core.cli.main import build_parser
from pisa_core.cli.main import main as cli_main
from pisa_core.errors import PiSAError
from pisa_core.inference.pipeline import PiSAPipeline
from pisa_core.model.base import load_base_model
from pisa_core.model.checkpoint import PiSAWeights, load_convertible, load_pisa_weights, save_pisa_weights
from pisa_core.model.lora import LoRAFamily
from pisa_core.train.config import TrainConfig, config_from_args
from pisa_core.train.data import Item, PairDataset, PositionSampler, build_items, collate, missing_caption_warning
from pisa_core.train.lpips import LPIPS
from pisa_core.train.step import build_step, caption_prompts, generator_prompts
from pisa_core.train.trainer import Trainer, frozen_weight_dtype, train

CROP = 32
CAPTION = "a red brick wall, sharp"  # img0's caption in data_dir; img1 and img2 have none
FAST = ["--crop-size", str(CROP), "--batch-size", "1", "--num-workers", "0", "--report-to", "none",
        "--validate-every", "2", "--val-count", "1", "--log-every", "1"]


def write_photo(path: Path, w: int, h: int, seed: int) -> None:
    g = np.random.default_rng(seed)
    coarse = (g.random((max(2, h // 6), max(2, w // 6), 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    for i in range(3):
        write_photo(root / "hq" / f"img{i}.png", 40 + 8 * i, 36, seed=i)
    (root / "hq" / "img0.txt").write_text(CAPTION + "\n")
    return root


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    """Random VGG16 + LPIPS heads (the real file's layout; values don't matter here)."""
    g = torch.Generator().manual_seed(0)
    state = {k: torch.rand(v.shape, generator=g) * 0.05 for k, v in LPIPS().state_dict().items()}
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def two_stages(model_dir, data_dir, lpips_file, tmp_path_factory):
    """Stage pix (2 steps) then stage sem (2 steps, ℓ2 + LPIPS + CSD, gradient checkpointing and
    accumulation) through the CLI."""
    out = tmp_path_factory.mktemp("runs")
    base = str(model_dir / "sd21-tiny")
    assert cli_main(["train", "--stage", "pix", "--base", base, "--data", str(data_dir / "hq"),
                     "--output-dir", str(out / "pix"), "--max-steps", "2", "--checkpoint-every", "1", *FAST]) == 0
    assert cli_main(["train", "--stage", "sem", "--base", base, "--data", str(data_dir / "hq"),
                     "--output-dir", str(out / "sem"), "--max-steps", "2", "--init", str(out / "pix/pisa_sr_pix.safetensors"),
                     "--lpips-weights", str(lpips_file), "--gradient-checkpointing",
                     "--gradient-accumulation-steps", "2", *FAST]) == 0
    return out


def zero_weights(like: PiSAWeights) -> PiSAWeights:
    def zeros(f: LoRAFamily) -> LoRAFamily:
        return LoRAFamily(f.rank, f.alpha, {n: (torch.zeros_like(A), torch.zeros_like(B)) for n, (A, B) in f.factors.items()})

    return PiSAWeights(zeros(like.pix), zeros(like.sem), "pisa-safetensors")


@functools.lru_cache(maxsize=8)
def _upscale(base: str, weights_path: str) -> torch.Tensor:
    pipe = PiSAPipeline.from_files(base, weights_path, device="cpu", dtype="fp32")
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(12, 12), mode="bilinear")
    return pipe(image.permute(0, 2, 3, 1))


def upscale(model_dir, weights_path) -> torch.Tensor:
    return _upscale(str(model_dir / "sd21-tiny"), str(weights_path))


# ----------------------------------------------------------------------------- stages


def test_pix_stage_writes_loadable_weights_that_change_the_output(two_stages, model_dir, tmp_path):
    final = two_stages / "pix" / "pisa_sr_pix.safetensors"
    weights = load_pisa_weights(final)
    assert weights.pix.rank == 4 and weights.pix.scale == 2.0
    assert any(B.abs().max() > 0 for _, B in weights.pix.factors.values())  # trained
    assert all(A.abs().max() == 0 and B.abs().max() == 0 for A, B in weights.sem.factors.values())
    for step in (1, 2):
        stem = two_stages / "pix" / "checkpoints" / f"pisa_sr_pix_step{step:06d}"
        assert stem.with_suffix(".safetensors").is_file()
        record = json.loads(stem.with_suffix(".json").read_text())
        assert record["step"] == step and record["config"]["stage"] == "pix"
        assert record["config"]["lambda_csd"] == 0.0 and record["config"]["lr"] == 5e-5
    assert (two_stages / "pix" / "validation" / "step000002.png").is_file()
    untrained = tmp_path / "untrained.safetensors"
    save_pisa_weights(zero_weights(weights), untrained)
    trained_out, untrained_out = upscale(model_dir, final), upscale(model_dir, untrained)
    assert trained_out.shape == (1, 48, 48, 3)
    assert not torch.allclose(trained_out, untrained_out)


def test_sem_stage_keeps_pix_and_trains_sem(two_stages, model_dir):
    pix = load_pisa_weights(two_stages / "pix" / "pisa_sr_pix.safetensors")
    sem = load_pisa_weights(two_stages / "sem" / "pisa_sr_sem.safetensors")
    assert pix.pix.factors.keys() == sem.pix.factors.keys()
    for name, (A, B) in pix.pix.factors.items():
        assert torch.equal(A, sem.pix.factors[name][0]) and torch.equal(B, sem.pix.factors[name][1])
    assert any(B.abs().max() > 0 for _, B in sem.sem.factors.values())
    record = json.loads((two_stages / "sem" / "pisa_sr_sem.json").read_text())
    assert (record["config"]["lambda_lpips"], record["config"]["lambda_csd"]) == (2.0, 1.0)
    log = [json.loads(line) for line in (two_stages / "sem" / "train_log.jsonl").read_text().splitlines()]
    assert {"l2", "lpips", "csd", "loss"} <= set(log[-1])
    pix_out = upscale(model_dir, two_stages / "pix" / "pisa_sr_pix.safetensors")
    sem_out = upscale(model_dir, two_stages / "sem" / "pisa_sr_sem.safetensors")
    assert not torch.allclose(pix_out, sem_out)


def _same_weights(a: PiSAWeights, b: PiSAWeights) -> bool:
    return all(
        (fa.rank, fa.scale, set(fa.factors)) == (fb.rank, fb.scale, set(fb.factors))
        and all(torch.equal(x, y) for m in fa.factors for x, y in zip(fa.factors[m], fb.factors[m]))
        for fa, fb in ((a.pix, b.pix), (a.sem, b.sem)))


def test_convert_reads_a_training_state(two_stages, tmp_path):
    """`pisa-sr convert` of a state folder (or its train.pt) gives the weights the run wrote at that
    step, in either output format; after stage pix the sem LoRA is zero."""
    state = two_stages / "pix" / "checkpoints" / "state_step000002"
    written = load_pisa_weights(two_stages / "pix" / "pisa_sr_pix.safetensors")
    assert cli_main(["convert", str(state), str(tmp_path / "from_state.pkl")]) == 0
    assert cli_main(["convert", str(state / "train.pt"), str(tmp_path / "from_state.safetensors")]) == 0
    for name in ("from_state.pkl", "from_state.safetensors"):
        assert _same_weights(load_pisa_weights(tmp_path / name), written)
    sem_state = two_stages / "sem" / "checkpoints" / "state_step000002"
    assert cli_main(["convert", str(sem_state), str(tmp_path / "sem.pkl")]) == 0
    assert _same_weights(load_pisa_weights(tmp_path / "sem.pkl"),
                         load_pisa_weights(two_stages / "sem" / "pisa_sr_sem.safetensors"))


def test_training_writes_the_official_layout_on_request(model_dir, data_dir, tmp_path):
    """--save-format official: every weights file is a .pkl in the release's layout, holding what
    the resumable state holds."""
    out = tmp_path / "run"
    assert cli_main(["train", "--stage", "pix", "--base", str(model_dir / "sd21-tiny"), "--data", str(data_dir / "hq"),
                     "--output-dir", str(out), "--max-steps", "1", "--save-format", "official", *FAST]) == 0
    final = out / "pisa_sr_pix.pkl"
    assert sorted(p.name for p in out.glob("pisa_sr_pix.*")) == ["pisa_sr_pix.json", "pisa_sr_pix.pkl"]
    assert (out / "checkpoints" / "pisa_sr_pix_step000001.pkl").is_file()
    weights = load_pisa_weights(final)
    assert weights.format == "official-pkl"
    raw = torch.load(final, map_location="cpu", weights_only=True)
    assert len(raw) == 9 and raw["lora_rank_unet_pix"] == 4
    assert _same_weights(weights, load_convertible(out / "checkpoints" / "state_step000001"))


def test_pix_stage_overfits_one_image(model_dir, tmp_path):
    """Paired LQ/HQ, one image, no flips: the ℓ2 loss falls steadily (lr raised for a short test;
    the posterior mean, as the tiny random VAE's posterior sample is mostly noise)."""
    write_photo(tmp_path / "hq" / "a.png", CROP, CROP, seed=4)
    Image.open(tmp_path / "hq" / "a.png").resize((CROP // 4, CROP // 4), Image.BICUBIC).save(tmp_path / "a.png")
    (tmp_path / "lq").mkdir()
    shutil.move(tmp_path / "a.png", tmp_path / "lq" / "a.png")
    train(TrainConfig(stage="pix", base=str(model_dir / "sd21-tiny"), data=[str(tmp_path / "hq")],
                      lq_data=str(tmp_path / "lq"), output_dir=str(tmp_path / "out"), max_steps=12, batch_size=1,
                      crop_size=CROP, hflip=False, num_workers=0, checkpoint_every=0, validate_every=0, log_every=1,
                      lr=3e-3, encode_sample=False, report_to="none"))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.8 * losses[0]
    assert losses[-1] < losses[0]


def test_resume_continues_bit_for_bit(model_dir, data_dir, tmp_path):
    """4 straight steps == 2 steps, stop, resume to 4: same weights, same losses. CSD and posterior
    sampling are on so that the random generator state must be restored too."""
    common = {"stage": "pix", "base": str(model_dir / "sd21-tiny"), "data": [str(data_dir / "hq")], "batch_size": 1,
              "crop_size": CROP, "num_workers": 0, "checkpoint_every": 2, "validate_every": 0, "log_every": 1,
              "lambda_csd": 1.0, "encode_sample": True, "lr": 1e-3, "report_to": "none"}
    train(TrainConfig(output_dir=str(tmp_path / "a"), max_steps=4, **common))
    train(TrainConfig(output_dir=str(tmp_path / "b"), max_steps=2, **common))
    train(TrainConfig(output_dir=str(tmp_path / "b"), max_steps=4, resume="latest", **common))
    a = load_file(str(tmp_path / "a" / "pisa_sr_pix.safetensors"))
    b = load_file(str(tmp_path / "b" / "pisa_sr_pix.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    mid = load_file(str(tmp_path / "a" / "checkpoints" / "pisa_sr_pix_step000002.safetensors"))
    assert not all(torch.equal(a[k], mid[k]) for k in a)  # steps 3-4 did change the weights


# ----------------------------------------------------------------------------- the release's recipe

def test_defaults_are_the_release_recipe_and_each_has_its_flag():
    cfg = TrainConfig(stage="sem", base="b", data=["d"], output_dir="o", init="w").resolved()
    assert (cfg.lora_init, cfg.csd_caption, cfg.null_text_draw, cfg.null_text_ratio) == ("gaussian", "real", "batch", 0.5)
    assert cfg.encode_sample is True
    assert (cfg.lr, cfg.max_grad_norm, cfg.cfg_scale, cfg.csd_t_min, cfg.csd_t_max) == (5e-5, 1.0, 7.5, 20, 500)
    assert (cfg.rank_sem, cfg.alpha_sem, cfg.batch_size, cfg.max_steps) == (4, 8.0, 4, 8500)
    assert (cfg.caption_suffix, cfg.save_format, cfg.half_frozen_weights) == (", ", "ours", False)
    args = build_parser().parse_args(["train", "--base", "b", "--data", "d", "--output-dir", "o", "--no-encode-sample",
                                      "--lora-init", "kaiming", "--csd-caption", "generator", "--null-text-draw", "sample",
                                      "--caption-suffix", "", "--save-format", "official", "--half-frozen-weights"])
    other = config_from_args(args).resolved()
    assert (other.encode_sample, other.lora_init, other.csd_caption, other.null_text_draw) == (
        False, "kaiming", "generator", "sample")
    assert (other.caption_suffix, other.save_format, other.half_frozen_weights) == ("", "official", True)


@pytest.fixture(scope="module")
def sem_trainer(model_dir, data_dir, tmp_path_factory):
    """A stage-sem Trainer (CSD on, LPIPS off) whose generator always loses its caption, and what
    its construction wrote to stderr."""
    cfg = TrainConfig(stage="sem", base=str(model_dir / "sd21-tiny"), data=[str(data_dir / "hq")],
                      output_dir=str(tmp_path_factory.mktemp("sem_trainer")), init=str(model_dir / "pisa_sr.safetensors"),
                      lambda_lpips=0.0, null_text_ratio=1.0, crop_size=CROP, batch_size=2, num_workers=0,
                      report_to="none")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        trainer = Trainer(cfg)
    return trainer, err.getvalue()


def captioned_batch(dataset: PairDataset) -> dict:
    """A one-image batch of img0, the image with a caption."""
    position = next(p for p in range(len(dataset)) if dataset.items[dataset.item_index(p)].caption)
    return collate([dataset[position]])


def test_csd_sees_the_real_caption_when_the_generator_drops_it(sem_trainer):
    """The release drops the generator's caption only; the CSD conditional branch keeps it. The
    UNet's text embeddings are read at its input (a forward pre-hook)."""
    trainer, _ = sem_trainer
    step = trainer.step
    batch = captioned_batch(trainer.dataset)
    assert batch["caption"] == [CAPTION] and batch["drop_caption"] == [True]
    seen = []
    hook = step.lora.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    try:
        step.losses(batch)
        step.config = dataclasses.replace(step.config, csd_caption="generator")
        step.losses(batch)
    finally:
        step.config = dataclasses.replace(step.config, csd_caption="real")
        hook.remove()
    assert step.config.caption_suffix == ", "  # the release appends ", " to every caption
    empty, caption = step.prompts([""]), step.prompts([CAPTION + ", "])
    assert not torch.equal(empty, caption) and not torch.equal(step.prompts([CAPTION]), caption)
    generator, csd, _, csd_generator = seen
    assert torch.equal(generator, empty)
    assert torch.equal(csd[:1], step.negative_embeds) and torch.equal(csd[1:], caption)
    assert torch.equal(csd_generator[1:], empty)
    # peft's adapter switches around the CSD call left the frozen pix LoRA frozen
    assert not any(p.requires_grad for p in step.lora.parameters("pix"))
    assert all(p.requires_grad for p in step.lora.parameters("sem"))
    assert {id(p) for p in step.params} == {id(p) for p in step.lora.parameters("sem")}


def test_training_samples_the_latent_by_default(sem_trainer):
    trainer, _ = sem_trainer
    generator = trainer.step.generator
    lq = captioned_batch(trainer.dataset)["lq"] * 2 - 1
    assert generator.encode_sample
    sample = generator.encode(lq, torch.Generator().manual_seed(0))
    assert torch.equal(sample, generator.encode(lq, torch.Generator().manual_seed(0)))
    assert not torch.allclose(sample, generator.encode(lq), atol=1e-4)  # without a generator: the mean


def test_null_text_dropout_is_drawn_once_per_micro_batch(sem_trainer):
    """Per micro-batch (the release): all images of one micro-batch of one process share the draw,
    at the configured rate; per sample is the same rate, drawn image by image."""
    trainer, _ = sem_trainer
    assert trainer.dataset.null_text_group == trainer.config.batch_size
    items = [Item(Path(f"{i}.png"), None, "tag") for i in range(7)]
    per_batch = PairDataset(items, null_text_ratio=0.5, null_text_group=4)
    per_sample = PairDataset(items, null_text_ratio=0.5, null_text_group=1)
    for dataset, uniform in ((per_batch, True), (per_sample, False)):
        draws = []
        for rank in (0, 1):
            positions = iter(PositionSampler(4, rank=rank, world_size=2))
            for _ in range(1000):
                batch = [dataset.caption_dropped(next(positions)) for _ in range(4)]
                assert uniform is False or len(set(batch)) == 1
                draws += batch
        assert abs(np.mean(draws) - 0.5) < 0.04
    batches = np.array(draws).reshape(-1, 4)  # per sample: micro-batches mix dropped and kept captions
    assert ((batches.min(1) == 0) & (batches.max(1) == 1)).mean() > 0.5


def test_missing_captions_warn_in_one_line(sem_trainer):
    _, stderr = sem_trainer
    lines = [line for line in stderr.splitlines() if "no caption" in line]
    assert len(lines) == 1 and "2 of 3 images" in lines[0] and "pisa-sr caption" in lines[0]
    ten = [Item(Path(f"{i}.png"), None, "tag" if i else "") for i in range(10)]
    assert missing_caption_warning(ten) is None  # 10 % may lack a caption
    ten[1].caption = ""
    assert "2 of 10 images" in missing_caption_warning(ten)


def test_one_training_step_runs_with_the_model_on_the_meta_device(model_dir, data_dir, lpips_file, tmp_path):
    """Device placement, provable on the CPU: every tensor the step makes must follow the model to
    its device. The model is on `meta`, the batch on the CPU as the data loader hands it over; one
    full step (generator, ℓ2 + LPIPS + CSD, backward, clipping, AdamW) must not raise."""
    from accelerate import Accelerator

    cfg = TrainConfig(stage="sem", base=str(model_dir / "sd21-tiny"), data=[str(data_dir / "hq")], output_dir=str(tmp_path),
                      init=str(model_dir / "pisa_sr.safetensors"), lpips_weights=[str(lpips_file)], crop_size=CROP,
                      batch_size=2, null_text_ratio=0.5, null_text_draw="sample").resolved()
    base = load_base_model(cfg.base, keep_text_encoder=True)
    step = build_step(cfg, base, load_pisa_weights(cfg.init), Accelerator(cpu=True), torch.device("meta"), torch.float32)
    assert step.device.type == "meta"
    dataset = PairDataset(build_items(cfg.data), crop_size=CROP, null_text_ratio=0.5)
    batch = collate([dataset[0], dataset[1]])
    assert batch["lq"].device.type == "cpu"
    (parts,) = step([batch])
    assert set(parts) == {"l2", "lpips", "csd", "loss"}
    assert all(v.device.type == "meta" for v in parts.values())
    assert all(p.device.type == "meta" for p in step.params)


# ----------------------------------------------------------------------------- mixed precision


def stored_dtypes(step) -> tuple[set, set]:
    """(dtypes of every frozen parameter: UNet base weights, VAE, text encoder, LPIPS;
    dtypes of both LoRAs' factors)."""
    lora = {id(p) for family in ("pix", "sem") for p in step.lora.parameters(family)}
    frozen = [p for p in step.generator.unet.parameters() if id(p) not in lora]
    frozen += [*step.generator.vae.parameters(), *step.prompts.text_encoder.parameters()]
    frozen += list(step.lpips.parameters()) if step.lpips is not None else []
    assert not any(p.requires_grad for p in frozen)
    trained = [p for family in ("pix", "sem") for p in step.lora.parameters(family)]
    return {p.dtype for p in frozen}, {p.dtype for p in trained}


@pytest.mark.parametrize("mixed", ["fp16", "bf16"])
@pytest.mark.parametrize("half_frozen", [False, True])
def test_frozen_weights_are_stored_as_the_option_says(model_dir, lpips_file, tmp_path, mixed, half_frozen):
    """As the release: with fp16/bf16 mixed precision every frozen weight stays fp32 (autocast does
    the half-precision compute); --half-frozen-weights stores them in the half type. The LoRA
    factors are fp32 either way."""
    dtype = frozen_weight_dtype(mixed, half_frozen)
    cfg = TrainConfig(stage="sem", base=str(model_dir / "sd21-tiny"), data=["unused"], output_dir=str(tmp_path),
                      init=str(model_dir / "pisa_sr.safetensors"), lpips_weights=[str(lpips_file)],
                      mixed_precision=mixed, half_frozen_weights=half_frozen).resolved()
    base = load_base_model(cfg.base, keep_text_encoder=True)
    from accelerate import Accelerator

    step = build_step(cfg, base, load_pisa_weights(cfg.init), Accelerator(cpu=True), torch.device("meta"), dtype)
    frozen, trained = stored_dtypes(step)
    assert frozen == {torch.float16 if mixed == "fp16" else torch.bfloat16} if half_frozen else {torch.float32}
    assert trained == {torch.float32}
    assert frozen_weight_dtype("no", half_frozen) == torch.float32


def _bf16_training_step(model_dir: str, data_dir: str, lpips_file: str, out: str) -> None:
    """Run in a fresh process (accelerate fixes the mixed precision once per process): a stage-sem
    Trainer with bf16 mixed precision on the CPU, both storage settings, one full step each; prints
    what the test checks as JSON."""
    results = {}
    for half in (False, True):
        cfg = TrainConfig(stage="sem", base=str(Path(model_dir) / "sd21-tiny"), data=[str(Path(data_dir) / "hq")],
                          output_dir=str(Path(out) / f"half{half}"), init=str(Path(model_dir) / "pisa_sr.safetensors"),
                          lpips_weights=[lpips_file], crop_size=CROP, batch_size=2, num_workers=0, report_to="none",
                          device="cpu", mixed_precision="bf16", half_frozen_weights=half)
        trainer = Trainer(cfg)
        frozen, trained = stored_dtypes(trainer.step)
        layer = trainer.step.lora.layers[next(iter(trainer.step.lora.layers))].get_base_layer()
        computed = []  # one entry per UNet forward: the generator's, then the CSD teacher's
        hook = layer.register_forward_hook(lambda module, args, output, seen=computed: seen.append(str(output.dtype)))
        before = [p.detach().clone() for p in trainer.step.params]
        (parts,) = trainer.step([collate([trainer.dataset[0], trainer.dataset[1]])])
        hook.remove()
        results[str(half)] = {
            "frozen": sorted(str(d) for d in frozen), "trained": sorted(str(d) for d in trained),
            "computed": computed, "losses": {k: float(v) for k, v in parts.items()},
            "moved": any(not torch.equal(a, b) for a, b in zip(before, trainer.step.params)),
            "mixed": trainer.accelerator.mixed_precision,
        }
    print(json.dumps(results))


def test_training_step_runs_under_bf16_autocast_on_the_cpu(model_dir, data_dir, lpips_file, tmp_path):
    """bf16 mixed precision, as a GPU run would use it (CPU autocast supports bf16): the frozen
    weights stored in fp32 (or bf16 with --half-frozen-weights), the UNet's layers, the CSD teacher's
    included, computing in bf16, finite losses and a LoRA that moves."""
    done = subprocess.run([sys.executable, __file__, "bf16-step", str(model_dir), str(data_dir), str(lpips_file),
                           str(tmp_path)], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["False"]["frozen"] == ["torch.float32"] and results["True"]["frozen"] == ["torch.bfloat16"]
    for run in results.values():
        assert run["mixed"] == "bf16" and run["trained"] == ["torch.float32"]
        assert len(run["computed"]) >= 2 and set(run["computed"]) == {"torch.bfloat16"}
        assert set(run["losses"]) == {"l2", "lpips", "csd", "loss"}
        assert all(np.isfinite(v) for v in run["losses"].values())
        assert run["moved"]


# ----------------------------------------------------------------------------- errors


def test_sem_stage_needs_init(model_dir, data_dir, tmp_path):
    with pytest.raises(PiSAError, match="--init"):
        train(TrainConfig(stage="sem", base=str(model_dir / "sd21-tiny"), data=[str(data_dir / "hq")],
                          output_dir=str(tmp_path)))


def test_lpips_without_weights_names_the_option(model_dir, data_dir, tmp_path):
    with pytest.raises(PiSAError, match="--lpips-weights"):
        train(TrainConfig(stage="pix", base=str(model_dir / "sd21-tiny"), data=[str(data_dir / "hq")],
                          output_dir=str(tmp_path), lambda_lpips=1.0, crop_size=CROP, num_workers=0))


def test_cli_reports_config_errors(model_dir, data_dir, tmp_path, capsys):
    code = cli_main(["train", "--stage", "pix", "--base", str(model_dir / "sd21-tiny"), "--data", str(data_dir / "hq"),
                     "--output-dir", str(tmp_path), "--crop-size", "30"])
    assert code == 2 and "--crop-size" in capsys.readouterr().err


# ----------------------------------------------------------------------------- data


def test_captions_from_txt_and_jsonl_and_null_text(tmp_path):
    for name in ("a", "b", "c"):
        write_photo(tmp_path / "hq" / "sub" / f"{name}.png", 40, 40, seed=ord(name))
    (tmp_path / "hq" / "sub" / "a.txt").write_text("cat, fur\n")
    (tmp_path / "caps.jsonl").write_text(json.dumps({"file": "sub/b.png", "tags": ["dog", "grass"]}) + "\n")
    items = build_items([tmp_path / "hq"], captions=tmp_path / "caps.jsonl")
    assert [i.caption for i in items] == ["cat, fur", "dog, grass", ""]
    kept = PairDataset(items, crop_size=CROP, null_text_ratio=0.0)
    dropped = PairDataset(items, crop_size=CROP, null_text_ratio=1.0)
    assert not any(kept[p]["drop_caption"] for p in range(3))
    # a dropped caption is still handed over: only the generator gets "" (generator_prompts)
    samples = [dropped[p] for p in range(3)]
    assert all(s["drop_caption"] for s in samples)
    assert {s["caption"] for s in samples} == {"cat, fur", "dog, grass", ""}
    batch = collate(samples)
    assert generator_prompts(caption_prompts(batch["caption"], ", "), batch["drop_caption"]) == ["", "", ""]
    # the release's ", " goes after every caption, never onto a missing one
    assert caption_prompts(batch["caption"], ", ") == [f"{s['caption']}, " if s["caption"] else "" for s in samples]


def test_dataset_positions_are_reproducible_and_cover_each_epoch(data_dir):
    items = build_items([data_dir / "hq"])
    ds = PairDataset(items, crop_size=CROP, seed=1)
    a, b = ds[5], ds[5]
    assert torch.equal(a["hq"], b["hq"]) and torch.equal(a["lq"], b["lq"]) and a["caption"] == b["caption"]
    assert a["hq"].shape == a["lq"].shape == (3, CROP, CROP)
    assert 0 <= a["lq"].min() and a["lq"].max() <= 1
    assert sorted(ds.item_index(p) for p in range(3)) == [0, 1, 2]
    assert sorted(ds.item_index(p) for p in range(3, 6)) == [0, 1, 2]
    assert not torch.equal(ds[0]["lq"], ds[3]["lq"])  # a new epoch draws new crops/degradations


def test_paired_folders_and_list_files(tmp_path):
    write_photo(tmp_path / "hq" / "x.png", 48, 40, seed=1)
    write_photo(tmp_path / "lq" / "x.jpg", 12, 10, seed=2)
    (tmp_path / "list.txt").write_text("# training set\nhq/x.png\n")
    items = build_items([tmp_path / "list.txt"])
    assert [i.hq.name for i in items] == ["x.png"]
    paired = build_items([tmp_path / "hq"], lq_source=tmp_path / "lq")
    assert paired[0].lq.name == "x.jpg"
    sample = PairDataset(paired, crop_size=CROP)[0]
    assert sample["lq"].shape == (3, CROP, CROP)
    with pytest.raises(PiSAError, match="No LQ image"):
        (tmp_path / "hq2").mkdir()
        write_photo(tmp_path / "hq2" / "y.png", 40, 40, seed=3)
        build_items([tmp_path / "hq2"], lq_source=tmp_path / "lq")


# ----------------------------------------------------------------------------- multi-process


@pytest.mark.skipif(os.environ.get("PISA_SKIP_ACCELERATE") == "1", reason="PISA_SKIP_ACCELERATE=1")
def test_accelerate_launch_two_cpu_processes(model_dir, data_dir, tmp_path):
    """DDP on two processes with different data; CSD switches peft's adapters mid-step, and the
    LoRAs must still end identical (gradients averaged)."""
    cmd = [*accelerate_two_processes(), "-m", "pisa_core.train", "--stage", "pix",
           "--base", str(model_dir / "sd21-tiny"), "--data", str(data_dir / "hq"), "--output-dir", str(tmp_path),
           "--max-steps", "2", "--lambda-csd", "1", *FAST]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = run_launched(cmd, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout + done.stderr
    assert "2 processes in sync" in done.stdout + done.stderr
    assert load_pisa_weights(tmp_path / "pisa_sr_pix.safetensors").pix.rank == 4
    assert (tmp_path / "checkpoints" / "state_step000002" / "rng_rank1.pt").is_file()


if __name__ == "__main__" and sys.argv[1:2] == ["bf16-step"]:
    _bf16_training_step(*sys.argv[2:6])
