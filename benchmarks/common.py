"""Shared pieces of the benchmarks: the real-size SD2.1-base architecture with random weights,
random PiSA-SR LoRAs of the release's shape, the pipeline's stages run one by one with a clock and
a peak-RSS reading each, child processes (one measurement each, failures counted), the machine's
description, the matrix-product probe taken before every timed round (`Probes`, `round_probe`),
each timed figure's share of it (`with_share`), the quiet gate (benchmarks/quiet.py) and timing
helpers.

PISA_BENCH_TINY=1 in the environment (cpu_speed.py --quick sets it, child processes inherit it)
swaps the real-size architecture for the tests' tiny SD2-structured models: a smoke test of every
script's plumbing in a minute, with meaningless figures."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the release-structure reference and the file writers live with the tests

import tiny_models  # noqa: E402
from pisa_files import random_pisa_weights  # noqa: E402
from quiet import gate, share

from pisa_core.model.base import BaseModel  # noqa: E402
from pisa_core.model.checkpoint import PiSAWeights  # noqa: E402
from pisa_core.options import LATENT_FACTOR  # noqa: E402

CONFIGS = ROOT / "pisa_core" / "configs"
TINY = os.environ.get("PISA_BENCH_TINY") == "1"


# ------------------------------------------------------------------------------ random models


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / f"{name}.json").read_text()).items() if not k.startswith("_")}


def sd21_unet() -> UNet2DConditionModel:
    if TINY:
        return tiny_models.tiny_unet().requires_grad_(False)
    torch.manual_seed(0)
    return UNet2DConditionModel(**_config("unet")).eval().requires_grad_(False)


def sd21_vae() -> AutoencoderKL:
    if TINY:
        return tiny_models.tiny_vae().requires_grad_(False)
    torch.manual_seed(1)
    return AutoencoderKL(**_config("vae")).eval().requires_grad_(False)


def sd21_text_encoder() -> CLIPTextModel:
    if TINY:
        return tiny_models.tiny_text_encoder().requires_grad_(False)
    torch.manual_seed(2)
    return CLIPTextModel(CLIPTextConfig(**_config("text_encoder"))).eval().requires_grad_(False)


def sd21_base() -> BaseModel:
    """SD2.1-base architecture, random weights; the empty-prompt embedding is random too (timing
    does not depend on values)."""
    unet = sd21_unet()
    embeds = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(3))
    return BaseModel(unet=unet, vae=sd21_vae(), prompt_embeds=embeds, scaling_factor=0.18215,
                     source="random SD2.1-base architecture", kind="random")


def random_weights(unet) -> PiSAWeights:
    """Rank-4 pix and sem LoRAs (alpha 8) on the release's 258 target modules, non-zero like trained ones."""
    return random_pisa_weights(unet, rank=4, seed=10)


def lq_image(side: int, batch: int = 1) -> torch.Tensor:
    """A smooth random RGB image [B, side, side, 3] in [0, 1] (structure, not noise, like a photo)."""
    coarse = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear").permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------ the stages, timed


def run_stages(pipe, images, lambda_pix: float = 1.0, lambda_sem: float = 1.0, *, vae_tile: int = 0,
               latent_tile: int = 96) -> tuple[torch.Tensor, dict]:
    """One upscale through the pipeline's public stages, one by one (what pipe(...) does), with
    the seconds and the peak RSS of each stage (the peak restarts at every stage) and the VAE tile
    each VAE stage runs with (`pipe.vae_tile_for`). Returns (output, {stage: {...}})."""
    from pisa_core.inference.guidance import plan_passes

    stages: dict[str, dict] = {}

    @contextlib.contextmanager
    def timed(stage: str, **extra):
        reset_peak_rss()
        start = time.perf_counter()
        yield
        sync(pipe.device)
        stages[stage] = {"seconds": time.perf_counter() - start, "peak_rss_gib": current_peak_rss_gib(), **extra}

    with torch.inference_mode():
        with timed("prepare"):
            pixels, plan = pipe.prepare(images)
        with timed("encode", vae_tile=pipe.vae_tile_for("encode", pixels.shape[-2:], vae_tile)):
            latent = pipe.encode(pixels, vae_tile=vae_tile)
        del pixels
        with timed("unet"):
            eps = pipe.predict_eps(latent, need=plan_passes(lambda_pix, lambda_sem).branches,
                                   latent_tile=latent_tile)
        with timed("guide"):
            z_high = pipe.guide(latent, eps, lambda_pix, lambda_sem)
        del latent, eps
        size = [s * LATENT_FACTOR for s in z_high.shape[-2:]]
        with timed("decode", vae_tile=pipe.vae_tile_for("decode", size, vae_tile)):
            decoded = pipe.decode(z_high, vae_tile=vae_tile)
        with timed("finish"):
            out = pipe.finish(decoded, plan)
    return out, stages


def median_stages(runs: list[dict]) -> dict:
    """Per stage, the median seconds and the largest peak RSS of several run_stages results."""
    merged = {}
    for stage in runs[0]:
        merged[stage] = {**runs[0][stage], "seconds": statistics.median(r[stage]["seconds"] for r in runs),
                         "peak_rss_gib": max(r[stage]["peak_rss_gib"] for r in runs)}
    return merged


# ------------------------------------------------------------------------------ memory and time


def peak_rss_gib() -> float:
    """Peak resident memory of this process (VmHWM), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_rss() -> None:
    """Linux: restart the VmHWM high-water mark, so a run's peak excludes model loading."""
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
    except OSError:
        pass


def current_peak_rss_gib() -> float:
    """VmHWM from /proc (honours reset_peak_rss), falling back to getrusage."""
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return peak_rss_gib()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ child processes


class Children:
    """Measurements in child processes whose last stdout line is a JSON object. A child that
    exits non-zero or prints no JSON is reported on stderr and kept in `failed` (label -> why, one
    line: the scripts store it in their JSON, so a killed measurement stays on record); the scripts
    exit with `exit_code()` so that any failed measurement fails the run. Each result gets the
    load averages at its end (other jobs on the machine inflate the seconds)."""

    def __init__(self):
        self.failed: dict[str, str] = {}

    def run(self, label: str, cmd: list[str], env: dict | None = None) -> dict | None:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode == 0:
            try:
                return {**json.loads(done.stdout.strip().splitlines()[-1]), "load_average": load_average()}
            except (IndexError, json.JSONDecodeError):
                pass
        self.fail(label, f"exit code {done.returncode}\n{done.stderr[-3000:]}")
        return None

    def fail(self, label: str, why: str) -> None:
        print(f"{label}: FAILED ({why})", file=sys.stderr, flush=True)
        lines = [line.strip() for line in why.splitlines() if line.strip()]
        self.failed[label] = " / ".join(dict.fromkeys([lines[0], lines[-1]]))[:300] if lines else "failed"

    def exit_code(self) -> int:
        if self.failed:
            print(f"{len(self.failed)} measurement(s) failed: {', '.join(self.failed)}", file=sys.stderr)
            return 1
        return 0


def measure_process(cmd: list[str], env: dict | None = None) -> dict:
    """Run a whole process: wall seconds from its start to its exit, its own peak RSS (wait4's
    ru_maxrss, Linux KiB), exit code, stdout and stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20, "returncode": proc.returncode,
                "stdout": out.read(), "stderr": err.read(), "load_average": load_average()}


# ------------------------------------------------------------------------------ the machine


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (`uptime`)."""
    return [round(x, 2) for x in os.getloadavg()]


PROBE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(side: int = 2048, repeats: int = 10, device: str = "cpu",
                  dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, float]:
    """Matrix-multiply throughput now in each of `dtypes` (GFLOP/s, best of `repeats`) on
    `device`: on a shared machine the same code runs at different speeds at different times (bf16
    on AMX most of all), so a run records how fast the processor was beside each timing."""
    result = {}
    device = torch.device(device)
    for name in dtypes:
        a, b = (torch.randn(side, side, dtype=PROBE_DTYPES[name], device=device) for _ in range(2))
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
        result[name] = round(2 * side ** 3 / best / 1e9)
    return result


def round_probe(dtypes, device: str = "cpu") -> dict[str, float]:
    """The probe taken right before a timed round, in the dtypes that round times (names as
    pisa_core.options.dtype_name gives them; each once)."""
    return matmul_gflops(device=device, dtypes=tuple(dict.fromkeys(dtypes)))


class Probes(dict):
    """label -> {dtype: GFLOP/s}: every probe of one run, in the order taken (write_result stores
    them as the run's `probe_gflops` and judges the run's quiet gate from them)."""

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.device = device

    def take(self, label: str, dtypes=("fp32", "bf16")) -> dict[str, float]:
        self[label] = round_probe(dtypes, self.device)
        return self[label]

    def add_rounds(self, label: str, figure: dict) -> None:
        """The per-round probes a child process took (`figure["probes"]`), under `label`."""
        for i, reading in enumerate(figure.get("probes", []), 1):
            self[f"{label} round {i}"] = reading


def with_share(figure: dict, gflop: float | None) -> dict:
    """A timed figure (median `seconds`, `dtype`, the probe of each round in `probes`) with its
    probe (the median of its rounds' readings in its dtype), the operations it needs and its share
    of the probe, FLOPs / (seconds x probe). Unchanged without a count or probes."""
    readings = [p[figure["dtype"]] for p in figure.get("probes", []) if figure["dtype"] in p]
    if gflop is None or not readings:
        return figure
    probe = statistics.median(readings)
    return {**figure, "gflop": gflop, "probe": probe, "share": share(gflop, figure["seconds"], probe)}


def machine_info(device: str = "cpu") -> dict:
    """CPU model, its matrix features (AMX, AVX-512 BF16 or neither: bf16 pays on the first two
    only), cores and the threads torch uses, the GPU's name when `device` is one, torch version,
    date."""
    cpu = torch.cpu
    flags = cpu_flags()
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu_model": cpu_model_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "amx_tile": bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
            "avx512_bf16": bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
            "matrix_features": matrix_features(flags), "cpu_flags": sorted(flags & MATRIX_FLAGS),
            "cores": physical_cores(), "logical_cpus": os.cpu_count()}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


MATRIX_FLAGS = {"amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "avx512_bf16", "avx512f", "avx512_vnni", "avx_vnni"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def matrix_features(flags: set[str]) -> str:
    """"AMX", "AVX-512 BF16" or "neither": the bf16 matrix units of the CPU."""
    if "amx_bf16" in flags or "amx_tile" in flags:
        return "AMX"
    return "AVX-512 BF16" if "avx512_bf16" in flags else "neither"


def physical_cores() -> int | None:
    """Distinct (package, core) pairs of /proc/cpuinfo, else None."""
    try:
        blocks = Path("/proc/cpuinfo").read_text().strip().split("\n\n")
    except OSError:
        return None
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def cpu_model_name() -> str:
    """lscpu's model name (else /proc/cpuinfo's, else platform's)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The checkout's commit (short), `+changes` when tracked files differ from it (the results
    folder aside), or "unknown" outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short=12", "HEAD")
    if head.returncode != 0:
        return "unknown"
    changed = git("diff", "--quiet", "HEAD", "--", ".", ":(exclude)benchmarks/results").returncode != 0
    return head.stdout.strip() + ("+changes" if changed else "")


# the commit a run starts from, read when the benchmark imports this module: a long run's checkout
# may move on (a commit, an edit) before the run writes its result
STARTED_AT = git_commit()


def write_result(name: str, figures: dict, *, device: str = "cpu", probe: dict | None = None,
                 out: str | None = None) -> Path:
    """One run of benchmark `name` as one JSON file: the commit it started from (STARTED_AT; the
    checkout's commit when written too, if that differs), date, the machine, the matrix throughput
    probes (`probe`: label -> {dtype: GFLOP/s}, else one measured now as "after"), the quiet gate
    judged from them (`noisy`, `probe_spread`: quiet.gate) and the figures. Written to
    benchmarks/results/<name>-<date>.json, or to `out`; benchmarks/report.py makes the docs'
    tables from the newest run of each name that passes the gate."""
    machine = machine_info(device)
    probe = dict(probe or {"after": matmul_gflops(device=device)})
    record = {"benchmark": name, "commit": STARTED_AT, "date": machine["date"], "command": sys.argv,
              "machine": machine, "probe_gflops": probe, "quiet_gate": gate(probe), "figures": figures}
    record["noisy"] = record["quiet_gate"]["noisy"]
    record["probe_spread"] = record["quiet_gate"]["probe_spread"]
    written_at = git_commit()
    if written_at != STARTED_AT:
        record["commit_when_written"] = written_at
    stamp = machine["date"].replace(" UTC", "").replace(" ", "T").replace(":", "")
    target = Path(out) if out else RESULTS / f"{name}-{stamp}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=1) + "\n")
    return target
