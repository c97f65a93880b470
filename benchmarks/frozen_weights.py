"""What `pisa-sr train --half-frozen-weights` saves: the bytes of every frozen part of training
(UNet base weights, VAE, text encoder, LPIPS VGG16 + heads) stored in fp32 and in a half type, for
the real-size SD2.1-base architecture built from pisa_core/configs on PyTorch's meta device (no
memory, no weights; seconds).

    python benchmarks/frozen_weights.py [--json]

Prints the table of docs/training.md, "Mixed precision and memory".
"""

from __future__ import annotations

import argparse
import json

import torch
from common import sd21_text_encoder, sd21_unet, sd21_vae

from pisa_core.train.lpips import LPIPS

GB = 1e9
GIB = 2**30


def frozen_parts() -> dict[str, int]:
    """Parameter count of each frozen part of a training run."""
    with torch.device("meta"):
        parts = {"UNet base weights": sd21_unet(), "VAE": sd21_vae(), "text encoder": sd21_text_encoder(),
                 "LPIPS VGG16 + heads": LPIPS()}
        return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}


def table(counts: dict[str, int]) -> list[dict]:
    rows = [{"part": name, "parameters": n, "fp32_gb": 4 * n / GB, "half_gb": 2 * n / GB, "saved_gb": 2 * n / GB}
            for name, n in counts.items()]
    total = sum(counts.values())
    rows.append({"part": "all", "parameters": total, "fp32_gb": 4 * total / GB, "half_gb": 2 * total / GB,
                 "saved_gb": 2 * total / GB, "saved_gib": 2 * total / GIB})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    rows = table(frozen_parts())
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| frozen part | parameters | fp32 | half | saved |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['part']} | {row['parameters'] / 1e6:,.1f} M | {row['fp32_gb']:.2f} GB | {row['half_gb']:.2f} GB "
              f"| {row['saved_gb']:.2f} GB |")


if __name__ == "__main__":
    main()
