"""Valid model files built by code, the starting corpora of the weight-file targets: PiSA-SR weights
in every layout users hold (pisa_sr.pkl as a torch.save zip and as a legacy pickle, our
.safetensors, the official tensor names in a safetensors file), a training state, plain tensor
files and the header of an SD2 single-file checkpoint. Tiny (rank 1, a few modules), so a seed stays
under libFuzzer's -max_len and every run reaches the validation code quickly. Pickles come in both
torch.save formats: a mutation inside a zip archive mostly breaks its CRC (refused early), so the
legacy format is what carries the fuzzer into the pickles' contents."""

from __future__ import annotations

import functools
import io
import json

import torch
from safetensors.torch import save

# (module, weight shape) of a few release targets of each group and kind (linear and 1x1 / 3x3 conv)
MODULES = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (4, 4),
    "down_blocks.0.resnets.0.conv1": (4, 4, 3, 3),
    "up_blocks.1.attentions.0.proj_in": (4, 4),
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2": (4, 8),
    "conv_in": (4, 4, 3, 3),
}


def pisa_weights(rank: int = 1):
    from pisa_core.model.checkpoint import PiSAWeights
    from pisa_core.model.lora import PEFT_DEFAULT_ALPHA, LoRAFamily

    generator = torch.Generator().manual_seed(0)

    def family(alpha: float):
        factors = {}
        for module, (out_features, in_features, *kernel) in MODULES.items():
            A = torch.randn(rank, in_features, *kernel, generator=generator)
            B = torch.randn(out_features, rank, *((1, 1) if kernel else ()), generator=generator)
            factors[module] = (A, B)
        return LoRAFamily(rank=rank, alpha=alpha, factors=factors)

    return PiSAWeights(pix=family(PEFT_DEFAULT_ALPHA), sem=family(4.0), format="pisa-safetensors")


def torch_bytes(data, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def pisa_files() -> dict[str, bytes]:
    """PiSA-SR weights: the release's pisa_sr.pkl layout (zip and legacy pickle), our .safetensors
    and the release's tensor names in a safetensors file."""
    from pisa_core.model.checkpoint import OFFICIAL_STATE_KEY, official_pisa_dict, save_pisa_weights

    weights = pisa_weights()
    official = official_pisa_dict(weights)
    out = {"official-zip.pkl": torch_bytes(official), "official-legacy.pkl": torch_bytes(official, legacy=True),
           "official-names.safetensors": save(official[OFFICIAL_STATE_KEY])}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ours.safetensors"
        save_pisa_weights(weights, path)
        out["ours.safetensors"] = path.read_bytes()
    return out


def train_state(legacy: bool = False) -> bytes:
    """The train.pt of a resumable training state (pisa_core/train/state.py: step, stage, config,
    LoRA factors, optimizer and scheduler state)."""
    weights = pisa_weights()
    factors = {name: {m: {"A": A, "B": B} for m, (A, B) in weights.family(name).factors.items()}
               for name in ("pix", "sem")}
    parameters = [torch.nn.Parameter(A.clone()) for A, _ in weights.pix.factors.values()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    sum(p.sum() for p in parameters).backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    config = json.dumps({"alpha_pix": 8.0, "alpha_sem": 4.0, "stage": "sem"})
    return torch_bytes({"step": 10, "stage": "sem", "config": config, "lora": factors,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, legacy=legacy)


def tensor_files() -> dict[str, bytes]:
    """Plain tensor files: safetensors with metadata and several dtypes, a torch zip with a
    `state_dict` wrapper and views sharing a storage, a legacy pickle."""
    generator = torch.Generator().manual_seed(1)
    tensors = {"a.weight": torch.randn(3, 4, generator=generator), "a.bias": torch.zeros(3, dtype=torch.float16),
               "b": torch.arange(6, dtype=torch.int64).reshape(2, 3), "flag": torch.tensor([True, False])}
    base = torch.randn(12, generator=generator)
    shared = {"whole": base, "first": base[:6].view(2, 3), "strided": base[::2]}
    return {"plain.safetensors": save(tensors, metadata={"format": "pt", "note": "seed"}),
            "wrapped.ckpt": torch_bytes({"state_dict": shared, "global_step": 3}),
            "legacy.pt": torch_bytes(tensors, legacy=True)}


def sd_single_file(legacy: bool = False) -> bytes:
    """An SD2-structured single-file checkpoint (LDM key names) of the tests' tiny model, as a
    torch.save zip with a `state_dict` wrapper like the original .ckpt. Only the header matters to
    the target, so every tensor is a zero-stride view of one shared element (real shapes, a few
    bytes of data), except the norm bias the v-prediction heuristic reads."""
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parents[1] / "tests")
    sys.path.insert(0, tests)
    try:
        from model_files import ldm_state_dict, vae_with
        from tiny_models import tiny_text_encoder, tiny_unet
    finally:
        sys.path.remove(tests)
    state = ldm_state_dict(tiny_unet(layers_per_block=1), vae_with(), tiny_text_encoder())
    one = torch.zeros(1)
    heuristic = ".1.transformer_blocks.0.norm1.bias"
    light = {k: v.clone() if k.endswith(heuristic) else one.view(()).expand(v.shape) for k, v in state.items()}
    return torch_bytes({"state_dict": light, "global_step": 1}, legacy=legacy)


def one_line(parse):
    """The contract's other half for these targets: a PiSAError is one line (its message names the
    file); a message spanning lines (the repr of a tensor, say) is a finding."""

    @functools.wraps(parse)
    def checked(path):
        from pisa_core.errors import PiSAError

        try:
            return parse(path)
        except PiSAError as error:
            if "\n" in str(error):
                raise AssertionError(f"a PiSAError of several lines: {str(error)[:300]!r}") from error
            raise

    return checked
