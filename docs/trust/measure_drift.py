#!/usr/bin/env python3
"""Measures how far honest runs of one GPU generator drift apart.

Verification compares the outputs of kernels that are not exact by a
perceptual distance (docs/trust.md), so its tolerance must sit above what
honest hosts produce for the same task on different hardware. On cards and
drivers the differences come from floating point: the order of sums, fused
multiply-adds, and TF32, which Ampere and later GPUs may use for
convolutions and matrix products (inputs rounded to 10 mantissa bits).

This script runs kernels/torch_sketch.py's generator (the same code hosts
run) on the CPU three ways for each task, and writes the PNGs:

  NAME-ref.png    float32, as the generator runs
  NAME-tf32.png   every convolution's inputs rounded to TF32 first, as an
                  Ampere card with TF32 allowed would
  NAME-bf16.png   every convolution in bfloat16 (8 mantissa bits), far
                  coarser than any card's default: an upper end

then compare them with `gpunet compare` (docs/trust.md has the figures):

    python3 docs/trust/measure_drift.py OUT_DIR
    for f in OUT_DIR/*-ref.png; do
      gpunet compare "$f" "${f%-ref.png}-tf32.png"; gpunet compare "$f" "${f%-ref.png}-bf16.png"
    done

It needs PyTorch (Debian: python3-torch) and no GPU.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "kernels"))
import torch_sketch  # noqa: E402

TASKS = [
    ("harbour", "a quiet harbour at dusk", 7254767365218725),
    ("city", "a city of glass towers in the rain", 991),
    ("forest", "a forest of birches under snow, a red fox", 31337),
    ("desert", "dunes under a full moon, stars", 42),
    ("boats", "fishing boats at sunrise, mountains behind", 123456789),
    ("market", "a night market with lanterns and a river", 2718281828),
]


def tf32(t, torch):
    """Rounds t to TF32's 10 mantissa bits (round to nearest even)."""
    b = t.contiguous().view(torch.int32)
    b = (b + 0x0FFF + ((b >> 13) & 1)) & ~0x1FFF
    return b.view(torch.float32)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: measure_drift.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch, dev = torch_sketch.start_torch(True)
    F = torch.nn.functional
    conv = F.conv2d
    modes = {
        "ref": conv,
        "tf32": lambda x, w, *a, **k: conv(tf32(x, torch), tf32(w, torch), *a, **k),
        "bf16": lambda x, w, *a, **k: conv(x.to(torch.bfloat16), w.to(torch.bfloat16), *a, **k).to(torch.float32),
    }
    devnull = open(os.devnull, "w")
    for name, prompt, seed in TASKS:
        for mode, fn in modes.items():
            F.conv2d = fn
            try:
                data, _ = torch_sketch.paint(torch, dev, 512, 512, 20, seed, prompt, "", lambda: "", devnull)
            finally:
                F.conv2d = conv
            with open(os.path.join(out, f"{name}-{mode}.png"), "wb") as f:
                f.write(data)
        print(f"{name}: written", file=sys.stderr)


if __name__ == "__main__":
    main()
