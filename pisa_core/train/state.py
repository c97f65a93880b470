"""Checkpoints (inference weights) and resumable training states.

Layout under --output-dir (.pkl instead of .safetensors with --save-format official):
    checkpoints/pisa_sr_<stage>_step<N>.safetensors   both adapters, loadable by `pisa-sr upscale`
    checkpoints/pisa_sr_<stage>_step<N>.json           the run's config and the step
    checkpoints/state_step<N>/train.pt                 LoRA factors, optimizer, LR scheduler, step
    checkpoints/state_step<N>/rng_rank<r>.pt           each process's random generator states
    pisa_sr_<stage>.safetensors + .json                the final weights
Every file is written with tensors/ints/strings only, so it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import PiSAError
from ..files.atomic import atomic_output
from ..model.checkpoint import TRAIN_STATE_FILE, WEIGHT_WRITERS, PiSAWeights

STATE_PATTERN = re.compile(r"^state_step(\d+)$")


def checkpoint_stem(output_dir, stage: str, step: int | None) -> Path:
    if step is None:
        return Path(output_dir) / f"pisa_sr_{stage}"
    return Path(output_dir) / "checkpoints" / f"pisa_sr_{stage}_step{step:06d}"


def state_dir(output_dir, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"state_step{step:06d}"


def write_weights(weights: PiSAWeights, stem: Path, config_json: str, step: int, save_format: str = "ours") -> Path:
    """<stem>.safetensors or <stem>.pkl (checkpoint.WEIGHT_WRITERS[save_format]) and <stem>.json
    (config + step) beside it."""
    suffix, write = WEIGHT_WRITERS[save_format]
    path = stem.with_suffix(suffix)
    write(weights, path)
    record = {"step": step, "config": json.loads(config_json)}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def find_latest_state(output_dir) -> Path | None:
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := STATE_PATTERN.match(p.name)) and (p / TRAIN_STATE_FILE).is_file()]
    return max(found)[1] if found else None


def rng_snapshot(generator: torch.Generator) -> dict:
    snap = {"generator": generator.get_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def restore_rng(snap: dict, generator: torch.Generator) -> None:
    generator.set_state(snap["generator"])
    torch.random.set_rng_state(snap["torch"])
    if "cuda" in snap and torch.cuda.is_available() and len(snap["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(snap["cuda"])


def save_train_state(folder: Path, *, step: int, stage: str, config_json: str, lora_factors: dict,
                     optimizer, scheduler, scaler=None) -> None:
    """Main process: everything but the per-process RNG (see save_rng)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": int(step), "stage": stage, "config": config_json, "lora": lora_factors,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
    }
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    with atomic_output(folder / TRAIN_STATE_FILE) as f:
        torch.save(payload, f)


def save_rng(folder: Path, rank: int, generator: torch.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / f"rng_rank{rank}.pt") as f:
        torch.save(rng_snapshot(generator), f)


def load_train_state(folder) -> dict:
    folder = Path(folder)
    path = folder / TRAIN_STATE_FILE
    if not path.is_file():
        raise PiSAError(f"Resume state '{folder}' has no train.pt; expected a checkpoints/state_stepNNNNNN folder.")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_rng(folder, rank: int) -> dict | None:
    path = Path(folder) / f"rng_rank{rank}.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
