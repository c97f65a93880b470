"""The quiet gate and the share of the machine's rate: the two rules that make a timing travel from
one machine (or one minute) to another. Plain Python, no torch: the benchmarks write with it and
benchmarks/report.py reads with it.

A run takes the matrix-product probe (2048² matmul, GFLOP/s per dtype) before every round it
times. When the readings of one dtype differ by more than QUIET_LIMIT (the largest over the
smallest, minus one), other jobs took the processor during the run: the run is *noisy*, its
seconds say more about the load than about the code, and the docs' tables refuse it.

A timed figure travels as its share of the machine's rate: the operations it needs (counted by
benchmarks/flops.py) divided by its seconds times the probe taken beside it, in its dtype.
"""

from __future__ import annotations

QUIET_LIMIT = 0.25  # probe spread above which a run is noisy


def readings_by_dtype(readings) -> dict[str, list[float]]:
    """dtype -> the GFLOP/s of every reading ({dtype: GFLOP/s} each; None: not taken) that measured it."""
    by_dtype: dict[str, list[float]] = {}
    for reading in readings:
        for dtype, gflops in (reading or {}).items():
            by_dtype.setdefault(dtype, []).append(gflops)
    return by_dtype


def probe_spread(readings) -> dict[str, float]:
    """dtype -> largest / smallest reading - 1, over the readings that measured that dtype."""
    return {dtype: max(values) / min(values) - 1 for dtype, values in readings_by_dtype(readings).items()
            if min(values) > 0}


def gate(probes: dict) -> dict:
    """The verdict on a run from its probes (label -> {dtype: GFLOP/s}): the spread per dtype,
    the largest, the limit and whether the run is noisy."""
    per_dtype = probe_spread(probes.values())
    spread = max(per_dtype.values(), default=0.0)
    return {"noisy": spread > QUIET_LIMIT, "probe_spread": round(spread, 4),
            "probe_spread_by_dtype": {k: round(v, 4) for k, v in per_dtype.items()}, "limit": QUIET_LIMIT,
            "readings": len(probes)}


def verdict(record: dict) -> dict:
    """The gate of a written run: recomputed from its stored probes, so a run written before the
    gate existed (probes before and after only) is judged by the same rule."""
    return gate(record["probe_gflops"])


def share(gflop: float, seconds: float, probe_gflops: float) -> float:
    """The share of the machine's matrix-product rate a timed figure reaches: FLOPs / (time x probe)."""
    return gflop / (seconds * probe_gflops)
