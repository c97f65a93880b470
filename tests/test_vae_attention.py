"""The VAE's whole-latent attention in query chunks (vae_attention): the plan for every device type
with the kernel capability and the free memory injected, the chunked result equal to one call,
progress and cancel per chunk, what a chunk really allocates against its budget, the capability
probe against the kernel torch runs, and the chunks on the model's device (`meta`)."""

from __future__ import annotations

import contextlib
import logging
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from tiny_models import tiny_vae
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pisa_core.inference import hardware, memory, vae_attention
from pisa_core.inference.hardware import Probe
from pisa_core.inference.pipeline import PiSAPipeline

DEVICE_TYPES = ("cuda", "mps", "xpu", "cpu")
META = torch.device("meta")
LATENT_4096 = (4096 // 8) ** 2  # latent positions of a 4096² image: 262,144


class Cancelled(Exception):
    pass


def answers(fused: bool) -> Probe:
    """A machine whose attention kernel is fused (True) or the plain formula (False)."""
    return Probe(fused_attention=lambda device, dtype, heads, head_dim: fused)


def vae_mid_attention(width: int = 512, heads: int = 1, device="meta") -> Attention:
    """An SD VAE mid-block attention (SD2.1's: one head of 512 channels), built as diffusers builds it."""
    with torch.device(device):
        return Attention(width, heads=heads, dim_head=width // heads, rescale_output_factor=1.0, eps=1e-6,
                         norm_num_groups=32, residual_connection=True, bias=True, upcast_softmax=True,
                         _from_deprecated_attn_block=True).eval()


def call_bytes(attn, queries: int, batch: int, positions: int, dtype: torch.dtype, fused: bool) -> int:
    heads, head_dim = vae_attention.heads_and_width(attn)
    return memory.attention_bytes(queries, positions, rows=batch * heads, head_dim=head_dim, itemsize=dtype.itemsize,
                                  fused=fused)


def free_for(attn, queries: int, batch: int, positions: int, dtype: torch.dtype, fused: bool = False) -> int:
    """Free device memory in which exactly `queries` queries a call fit."""
    return (memory.RESERVE_BYTES + vae_attention.resident_bytes(attn, batch, positions, dtype)
            + call_bytes(attn, queries, batch, positions, dtype, fused))


class AttentionCalls(TorchFunctionMode):
    """(device type, query rows) of every scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls.append((args[0].device.type, args[0].shape[-2]))
        return func(*args, **(kwargs or {}))


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages the operations inside allocate (each counted once while a tensor
    on it lives): what the kernels torch dispatches to hold at once, inputs made before excluded."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}
        self.now = self.peak = 0
        self.ops: set[str] = set()

    def _drop(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.overloadpacket.__name__)
        for t in tree_flatten(out)[0]:
            if torch.is_tensor(t) and not t.is_meta:
                storage = t.untyped_storage()
                entry = self.live.setdefault(storage.data_ptr(), [storage.nbytes(), 0])
                if entry[1] == 0:
                    self.now += entry[0]
                    self.peak = max(self.peak, self.now)
                entry[1] += 1
                weakref.finalize(t, self._drop, storage.data_ptr())
        return out


# ---------------------------------------------------------------------------------------------
# The plan: kernel, budget and chunks for every device type
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True], ids=["math", "fused"])
@pytest.mark.parametrize("device_type", DEVICE_TYPES)
def test_a_4096_attention_is_chunked_to_the_free_memory(device_type, fused):
    """SD2.1's attention at a 4096² image in fp16 with 8 GiB free: the plain kernel's 262,144²
    scores (about 1 TiB with the softmax) never fit, so the queries come in the largest chunks that do; a fused
    kernel stores no scores and runs in one call. A CPU also caps a chunk at CHUNK_SCORES."""
    attn, dtype, free = vae_mid_attention(), torch.float16, 8 * 2**30
    n = LATENT_4096
    plan = vae_attention.plan(attn, 1, n, device_type, dtype, free, answers(fused))
    budget = free - memory.RESERVE_BYTES - vae_attention.resident_bytes(attn, 1, n, dtype)
    assert plan.kernel == ("fused" if fused else "math") and plan.budget_bytes == budget
    assert plan.chunk_bytes == call_bytes(attn, plan.queries, 1, n, dtype, fused) <= budget
    assert plan.chunks == math.ceil(n / plan.queries)
    cap = vae_attention.CHUNK_SCORES // n if device_type == "cpu" else n
    assert plan.queries == cap or call_bytes(attn, plan.queries + 1, 1, n, dtype, fused) > budget  # the largest
    if fused:
        assert plan.chunks == (n // cap if device_type == "cpu" else 1)
    else:
        assert call_bytes(attn, n, 1, n, dtype, fused) > 2**40 and plan.chunks > 1
        assert plan.queries <= cap


@pytest.mark.parametrize("device_type", DEVICE_TYPES)
def test_one_call_where_everything_fits_even_with_the_plain_kernel(device_type):
    attn, dtype, n = vae_mid_attention(), torch.bfloat16, 128 * 128  # a 1024² image
    free = free_for(attn, n, 1, n, dtype)
    plan = vae_attention.plan(attn, 1, n, device_type, dtype, free, answers(False))
    assert plan.queries == (vae_attention.CHUNK_SCORES // n if device_type == "cpu" else n)
    assert vae_attention.plan(attn, 1, n, device_type, dtype, free - 1, answers(False)).chunks == 2


@pytest.mark.parametrize("device_type", DEVICE_TYPES)
def test_unknown_free_memory_gets_a_fixed_budget(device_type):
    attn, dtype, n = vae_mid_attention(), torch.float16, LATENT_4096
    math_plan = vae_attention.plan(attn, 1, n, device_type, dtype, None, answers(False))
    fused_plan = vae_attention.plan(attn, 1, n, device_type, dtype, None, answers(True))
    assert math_plan.budget_bytes == fused_plan.budget_bytes == memory.ATTENTION_BUDGET_UNKNOWN_FREE
    assert math_plan.chunks > 1 and math_plan.chunk_bytes <= memory.ATTENTION_BUDGET_UNKNOWN_FREE
    assert fused_plan.chunks == (n // (vae_attention.CHUNK_SCORES // n) if device_type == "cpu" else 1)


def test_a_batch_and_more_heads_shrink_the_chunks():
    dtype, n = torch.float16, 256 * 256
    one, four_heads = vae_mid_attention(), vae_mid_attention(heads=4)
    free = free_for(one, 4096, 1, n, dtype)
    plans = [vae_attention.plan(a, b, n, "mps", dtype, free, answers(False)) for a, b in ((one, 1), (one, 2),
                                                                                         (four_heads, 1))]
    assert plans[0].queries == 4096
    assert plans[1].queries < plans[0].queries and plans[2].queries < plans[0].queries
    assert all(p.chunk_bytes <= p.budget_bytes for p in plans)


# ---------------------------------------------------------------------------------------------
# Running a plan: the same values, progress and cancel per chunk, memory within the budget
# ---------------------------------------------------------------------------------------------

ATTENTIONS = {"tiny VAE": lambda: tiny_vae().decoder.mid_block.attentions[0],
              "4 heads": lambda: vae_mid_attention(64, heads=4, device="cpu")}


@torch.no_grad()
@pytest.mark.parametrize("which", ATTENTIONS)
@pytest.mark.parametrize("device_type", DEVICE_TYPES)
def test_a_plan_for_any_device_gives_the_values_of_one_call(device_type, which):
    """The plan for a device type (plain kernel, little free memory) computed here: as many
    attention calls as chunks, none longer than planned, on_chunk after each, and the values of
    the module's own single call (diffusers' processor)."""
    attn = ATTENTIONS[which]()
    x = torch.randn(2, attn.to_q.in_features, 9, 7, generator=torch.Generator().manual_seed(4))
    n = 9 * 7
    plan = vae_attention.plan(attn, 2, n, device_type, x.dtype, free_for(attn, 10, 2, n, x.dtype), answers(False))
    assert (plan.queries, plan.chunks) == (10, 7)
    ticks = []
    with AttentionCalls() as seen:
        got = vae_attention.self_attention(attn, x, lambda: ticks.append(1), plan)
    assert len(ticks) == len(seen.calls) == 7 and max(q for _, q in seen.calls) == 10
    whole = vae_attention.self_attention(attn, x, None, vae_attention.plan(attn, 2, n, "cuda", x.dtype, None,
                                                                           answers(True)))
    torch.testing.assert_close(got, whole, rtol=0, atol=1e-6)  # float32 rounding of the kernel's row blocks
    torch.testing.assert_close(whole, attn(x), rtol=0, atol=1e-6)


@torch.no_grad()
def test_bf16_chunks_match_the_module():
    attn = ATTENTIONS["tiny VAE"]().to(torch.bfloat16)
    x = torch.randn(1, attn.to_q.in_features, 8, 8, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    plan = vae_attention.plan(attn, 1, 64, "mps", x.dtype, free_for(attn, 16, 1, 64, x.dtype), answers(False))
    assert plan.chunks == 4
    torch.testing.assert_close(vae_attention.self_attention(attn, x, None, plan), attn(x), rtol=0.02, atol=0.02)


@torch.no_grad()
def test_a_cancel_stops_at_its_chunk_and_the_debug_line_names_the_plan(caplog):
    attn = ATTENTIONS["tiny VAE"]()
    x = torch.randn(1, attn.to_q.in_features, 8, 8)
    plan = vae_attention.plan(attn, 1, 64, "xpu", x.dtype, free_for(attn, 8, 1, 64, x.dtype), answers(False))
    ticks = []

    def cancel_at_three():
        ticks.append(1)
        if len(ticks) == 3:
            raise Cancelled

    with (caplog.at_level(logging.DEBUG, logger="pisa_core.inference.vae_attention"), AttentionCalls() as seen,
          pytest.raises(Cancelled)):
        vae_attention.self_attention(attn, x, cancel_at_three, plan)
    assert len(seen.calls) == 3 and plan.chunks == 8
    assert "math kernel, 8 chunk(s) of 8 queries over 64 positions" in caplog.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION], ids=["math", "fused"])
def test_one_call_allocates_at_most_its_estimate(backend, dtype):
    """memory.attention_bytes bounds what torch's kernels allocate in one call (seen at the
    dispatcher; the math kernel's softmax internals, counted in MATH_BYTES_PER_SCORE, are not)."""
    n, queries, d = 1024, 128, 512
    k, v, q = (torch.randn(1, 1, length, d).to(dtype) for length in (n, n, queries))
    fused = backend != SDPBackend.MATH
    with sdpa_kernel(backend), LiveBytes() as seen:
        F.scaled_dot_product_attention(q, k, v)
    estimate = memory.attention_bytes(queries, n, rows=1, head_dim=d, itemsize=dtype.itemsize, fused=fused)
    assert estimate / 3 < seen.peak <= estimate
    assert (seen.ops == {"_scaled_dot_product_flash_attention_for_cpu"}) == fused


@torch.no_grad()
@pytest.mark.parametrize("backend", [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION], ids=["math", "fused"])
def test_the_attention_allocates_within_the_free_memory_it_is_given(backend):
    """The real probe and kernel on this CPU (restricted to one kernel): the whole chunked
    attention, chunks and resident tensors, stays within the free memory less the reserve."""
    attn = ATTENTIONS["tiny VAE"]()
    x = torch.randn(1, attn.to_q.in_features, 16, 16)
    n = 16 * 16
    with sdpa_kernel(backend):
        fused = hardware.fused_attention(x.device, x.dtype, 1, attn.to_q.in_features)
        assert fused == (backend != SDPBackend.MATH)
        free = free_for(attn, 32, 1, n, x.dtype, fused)
        plan = vae_attention.plan(attn, 1, n, "cpu", x.dtype, free)
        assert plan.chunks == 8
        with LiveBytes() as seen:
            vae_attention.self_attention(attn, x, None, plan)
    assert seen.peak <= free - memory.RESERVE_BYTES


@pytest.mark.parametrize("backend", [None, SDPBackend.MATH], ids=["default", "math only"])
def test_the_probe_answers_with_the_kernel_torch_runs(backend):
    q = torch.randn(1, 1, 64, 512)
    with sdpa_kernel(backend) if backend else contextlib.nullcontext(), LiveBytes() as seen:
        fused = hardware.fused_attention(q.device, q.dtype, 1, 512)
        F.scaled_dot_product_attention(q, q, q)
    ran_fused = "_scaled_dot_product_flash_attention_for_cpu" in seen.ops
    assert fused == ran_fused and ("bmm" in seen.ops) != ran_fused
    assert hardware.fused_attention(META, torch.float16, 1, 512) is False  # meta: shapes only, the plain formula


# ---------------------------------------------------------------------------------------------
# The pipeline: the model on its device, the plan from its free memory and probe
# ---------------------------------------------------------------------------------------------

def decoder_attention(pipeline: PiSAPipeline) -> Attention:
    return vae_attention.mid_attentions(pipeline.vae, "decoder")[0]


@torch.no_grad()
@pytest.mark.parametrize("vae_tile", [0, 128])
def test_chunks_run_on_the_models_device_within_its_free_memory(model_dir, vae_tile):
    """The VAE on the `meta` device, the latent on the CPU: the decoder's attention runs on the
    device in the chunks its free memory allows, untiled and in exact tiles alike."""
    shapes = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="meta", dtype="fp32")
    attn, n = decoder_attention(shapes), 24 * 32
    free = free_for(attn, 100, 1, n, torch.float32)
    pipe = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="meta", dtype="fp32",
                                   free_memory=lambda: free, probe=answers(False))
    ticks = []
    with AttentionCalls() as seen:
        out = pipe.decode(torch.zeros(1, 4, 24, 32), vae_tile=vae_tile, progress=lambda d, t: ticks.append((d, t)))
    assert out.device == META and out.shape == (1, 3, 192, 256)
    assert seen.calls == [("meta", 100)] * 7 + [("meta", n - 700)]
    assert ticks[-1][0] == ticks[-1][1]  # the planned chunks are in the progress total


@torch.no_grad()
def test_a_pipeline_with_little_free_memory_chunks_and_cancels_inside_the_attention(model_dir):
    cpu = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32")
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    whole = cpu.decode(latent, vae_tile=0)
    attn, n = decoder_attention(cpu), 16 * 16
    free = free_for(attn, 64, 1, n, torch.float32)
    tight = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32",
                                    free_memory=lambda: free, probe=answers(False))
    with AttentionCalls() as seen:
        chunked = tight.decode(latent, vae_tile=0)
    assert [q for _, q in seen.calls] == [64] * 4
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)

    def cancel_in_the_attention(_done, _total):
        if len(seen.calls) == 2:
            raise Cancelled

    processor = attn.processor
    with AttentionCalls() as seen, pytest.raises(Cancelled):
        tight.decode(latent, vae_tile=0, progress=cancel_in_the_attention)
    assert len(seen.calls) == 2 and decoder_attention(tight).processor is not None
    assert attn.processor is processor
