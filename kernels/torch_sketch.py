#!/usr/bin/env python3
"""torch-sketch-v1: a gpunet generator that paints on the GPU with PyTorch.

It needs no model weights. From the words of the prompt it builds a
procedural scene on the GPU (sky by hour, sea with reflections, skyline,
mountains, boats, sun or moon, stars; every other word adds a disc, a band of
colour, a ripple, a hill or a cloud, placed by a hash of the word), then runs
`steps` denoising iterations from seeded Gaussian noise towards it: a 5x5
Gaussian conv2d, a pull towards the scene that grows with the step, and fresh
noise that shrinks with it, as an ancestral sampler would.

Contract (docs/kernels.md): the task arrives as one JSON object on stdin;
"progress K N" lines go to stderr; one PNG goes to stdout; exit 0 on success.
It does not edit: a task with input_images fails with "input images not
supported" (exit 2, or an "error" answer in serve mode).

    gpunet host --kernel cmd --kernel-cmd "python3 kernels/torch_sketch.py" \\
        --kernel-models gpunet/torch-sketch-v1

With --serve it follows serve mode instead (gpunet host --kernel-serve): torch
and the CUDA context start once, then each stdin line is a task, answered on
stdout with its "progress K N" lines and a "preview K N" frame at each of
the task's preview_steps, then "png N" and N bytes or "error MESSAGE", until
stdin closes.

Runs on CUDA only, unless --allow-cpu is given. The same task gives the same
bytes on the same GPU model, driver and torch build (deterministic algorithms,
no TF32, a seeded generator); other GPU models may differ in the last bits of
floating point, so in a few pixel values.
"""

import os

# cuBLAS reads this when it initialises; deterministic algorithms need it.
os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"

import argparse
import hashlib
import json
import math
import re
import struct
import sys
import time
import zlib

NAME = "torch-sketch-v1"
MAX_PREVIEW_BYTES = 256 << 10  # protocol.MaxPreviewBytes
EXIT_USAGE = 2  # bad task or no usable device: the host shows our stderr


def fail(msg):
    print(f"torch_sketch: {msg}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def h64(*parts):
    """A stable 64-bit hash (Python's hash() is salted per process)."""
    d = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(d[:8], "big")


class Rng:
    """A tiny deterministic stream of floats in [0, 1) from a key."""

    def __init__(self, *key):
        self.key, self.n = key, 0

    def f(self, lo=0.0, hi=1.0):
        self.n += 1
        return lo + (hi - lo) * (h64(*self.key, self.n) >> 11) / float(1 << 53)

    def i(self, n):
        return int(self.f() * n) % n


def hsv(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


STOP = set("a an the of at in on by with and or to from under over into for is are".split())
HOURS = {
    "dawn": "dawn", "sunrise": "dawn", "morning": "day", "noon": "day", "day": "day",
    "afternoon": "day", "sunny": "day", "dusk": "dusk", "sunset": "dusk", "evening": "dusk",
    "twilight": "dusk", "night": "night", "midnight": "night", "moon": "night", "stars": "night",
}
# (sky top, sky at the horizon, light colour, ambient brightness)
SKIES = {
    "dawn": ((0.25, 0.30, 0.55), (0.98, 0.70, 0.55), (1.00, 0.85, 0.60), 0.85),
    "day": ((0.22, 0.45, 0.85), (0.70, 0.85, 0.97), (1.00, 0.98, 0.90), 1.00),
    "dusk": ((0.16, 0.12, 0.38), (0.98, 0.52, 0.28), (1.00, 0.70, 0.35), 0.70),
    "night": ((0.01, 0.02, 0.08), (0.07, 0.10, 0.25), (0.90, 0.92, 1.00), 0.35),
}
WATER = {"harbour", "harbor", "sea", "ocean", "lake", "bay", "river", "beach", "port", "coast", "shore", "water"}
CITY = {"harbour", "harbor", "city", "town", "port", "village", "skyline", "buildings"}
BOATS = {"harbour", "harbor", "port", "boat", "boats", "ship", "ships", "sail", "sailing"}
MOUNTAINS = {"mountain", "mountains", "alps", "peaks", "hills", "valley"}
GROUNDS = {
    "forest": (0.10, 0.28, 0.12), "woods": (0.10, 0.28, 0.12), "trees": (0.12, 0.32, 0.14),
    "desert": (0.80, 0.66, 0.42), "dunes": (0.82, 0.66, 0.40), "sand": (0.84, 0.74, 0.52),
    "snow": (0.90, 0.93, 0.97), "winter": (0.88, 0.91, 0.96), "ice": (0.80, 0.90, 0.97),
    "field": (0.45, 0.58, 0.22), "meadow": (0.38, 0.60, 0.25),
}
CALM = {"quiet", "calm", "still", "peaceful", "serene"}
NAMED = set(HOURS) | WATER | CITY | BOATS | MOUNTAINS | set(GROUNDS) | CALM | {"sun", "clouds", "cloud"}


def words(s):
    return re.findall(r"[a-z0-9]+", s.lower())


class TaskError(ValueError):
    """A task this generator cannot run as given."""


def parse_task(t):
    """Returns (w, h, steps, seed, prompt, negative) of a decoded task."""
    try:
        w, h, steps, seed = int(t["width"]), int(t["height"]), int(t["steps"]), int(t["seed"])
        prompt = str(t["prompt"])
    except (KeyError, TypeError, ValueError) as e:
        raise TaskError(f"task lacks a field or has a bad one: {e!r}") from None
    if not (64 <= w <= 2048 and 64 <= h <= 2048 and 1 <= steps <= 150):
        raise TaskError(f"task out of range: {w}x{h}, {steps} steps")
    if t.get("input_images") or t.get("mask_image"):
        # An edit (docs/kernels.md, Input images): painting the prompt alone
        # would pass off a new picture as an edit of the caller's photo.
        raise TaskError(f"input images not supported: {NAME} paints from the prompt alone")
    return w, h, steps, seed, prompt, str(t.get("negative_prompt") or "")


def read_task():
    try:
        t = json.load(sys.stdin)
    except ValueError as e:
        fail(f"stdin is not one JSON task: {e}")
    try:
        return parse_task(t)
    except TaskError as e:
        fail(str(e))


def open_device(torch, allow_cpu):
    if torch.cuda.is_available():
        return torch.device("cuda")
    if allow_cpu:
        print("torch_sketch: CUDA unavailable, running on the CPU (--allow-cpu)", file=sys.stderr, flush=True)
        return torch.device("cpu")
    fail(f"CUDA is not available to torch {torch.__version__} (built for CUDA {torch.version.cuda}); "
         "check the NVIDIA driver with nvidia-smi, or pass --allow-cpu to run slowly on the CPU")


def scene(torch, dev, w, h, seed, prompt, negative):
    """Builds the target image, shape (3, h, w), values 0..1, on dev."""
    ws, neg = words(prompt), set(words(negative))
    have = set(ws) - neg
    rng = Rng(NAME, seed, prompt, negative)
    f32 = dict(device=dev, dtype=torch.float32)
    v = torch.linspace(0, 1, h, **f32).view(h, 1).expand(h, w)
    u = torch.linspace(0, 1, w, **f32).view(1, w).expand(h, w)
    aspect = w / h

    def col(c):
        return torch.tensor(c, **f32).view(3, 1, 1)

    def paint(img, mask, c, alpha=1.0):
        m = (mask * alpha).clamp(0, 1).unsqueeze(0)
        return img * (1 - m) + col(c) * m

    def soft(x, edge):  # 0 below 0, 1 above, smooth over ~edge
        return torch.sigmoid(x / edge)

    hour = next((HOURS[x] for x in ws if x in HOURS), None) or ["dawn", "day", "dusk", "night"][rng.i(4)]
    top, hor, light, amb = SKIES[hour]
    horizon = rng.f(0.50, 0.62)
    calm = 0.35 if have & CALM else 1.0
    water = bool(have & WATER)

    def sky_at(vv):
        t = (vv / horizon).clamp(0, 1) ** 0.8
        return col(top) * (1 - t) + col(hor) * t

    img = sky_at(v).clone()

    # Sun or moon, low for dawn and dusk.
    cx = rng.f(0.2, 0.8)
    cy = {"dawn": horizon - 0.06, "dusk": horizon - 0.08, "day": 0.18, "night": 0.2}[hour]
    radius = {"night": 0.035, "day": 0.05}.get(hour, 0.07)
    r = torch.sqrt(((u - cx) * aspect) ** 2 + (v - cy) ** 2)
    if "sun" not in neg and "moon" not in neg:
        glow = torch.exp(-r / (radius * 2.5)) * (0.55 if hour != "night" else 0.25)
        img = img + col(light) * glow.unsqueeze(0) * (v < horizon).unsqueeze(0)
        img = paint(img, soft(radius - r, 0.003) * (v < horizon), light)
    if hour == "night" and "stars" not in neg:
        g = torch.Generator(device=dev).manual_seed(seed ^ 0x5A5A)
        stars = (torch.rand(h, w, generator=g, device=dev) > 0.9985).float() * (v < horizon * 0.95)
        img = paint(img, stars, (1.0, 1.0, 0.95), 0.9)

    # Every other word: an element placed and coloured by its hash.
    for word in ws:
        if word in NAMED or word in STOP or word in neg:
            continue
        wr = Rng(NAME, "word", word, seed)
        kind = wr.i(5)
        c = hsv(wr.f(), wr.f(0.4, 0.8), wr.f(0.6, 1.0))
        if kind == 0:  # a planet
            px, py, pr = wr.f(0.1, 0.9), wr.f(0.08, horizon - 0.15), wr.f(0.02, 0.06)
            pd = torch.sqrt(((u - px) * aspect) ** 2 + (v - py) ** 2)
            shade = (1.1 - ((u - px) * aspect + (v - py)) / (2 * pr)).clamp(0.4, 1.2) * 0.8
            img = img * (1 - soft(pr - pd, 0.002)).unsqueeze(0) + (
                col(c) * shade.unsqueeze(0) * soft(pr - pd, 0.002).unsqueeze(0))
        elif kind == 1:  # a band of colour across the sky
            by, bw = wr.f(0.1, horizon - 0.05), wr.f(0.01, 0.04)
            band = torch.exp(-((v - by - 0.02 * torch.sin(u * wr.f(3, 9) + wr.f(0, 6))) / bw) ** 2)
            img = paint(img, band * (v < horizon), c, 0.35)
        elif kind == 2:  # a ripple of light low in the picture
            ry = wr.f(horizon + 0.05, 0.95)
            line = ry + 0.01 * calm * torch.sin(u * wr.f(20, 60) + wr.f(0, 6))
            img = paint(img, torch.exp(-((v - line) / 0.004) ** 2), c, 0.5)
        elif kind == 3 and not water:  # a hill
            hx, hh = wr.f(0, 1), wr.f(0.05, 0.15)
            crest = horizon + 0.1 - hh * torch.exp(-((u - hx) * 3) ** 2)
            img = paint(img, soft(v - crest, 0.003), [x * 0.5 * amb for x in c])
        else:  # a cloud
            cxw, cyw = wr.f(0.1, 0.9), wr.f(0.08, horizon - 0.12)
            blob = torch.zeros_like(u)
            for _ in range(5):
                bx, by, br = cxw + wr.f(-0.08, 0.08), cyw + wr.f(-0.02, 0.02), wr.f(0.03, 0.06)
                blob = torch.maximum(blob, torch.exp(-(((u - bx) * aspect / 2) ** 2 + (v - by) ** 2) / br ** 2))
            ccol = [0.5 * a + 0.5 * b for a, b in zip(light, (amb, amb, amb))]
            img = paint(img, blob, ccol, 0.7)

    # Mountains: a ridge of summed sines on the horizon, hazy with distance.
    if have & MOUNTAINS:
        ridge = torch.full_like(u, horizon - 0.04)
        for k in range(4):
            ridge = ridge - rng.f(0.02, 0.07) / (k + 1) * (1 + torch.sin(u * rng.f(3, 7) * (k + 1) + rng.f(0, 6)))
        mcol = [0.55 * a + 0.45 * b for a, b in zip(top, hor)]
        img = paint(img, soft(v - ridge, 0.002) * (v <= horizon), [x * 0.7 for x in mcol])

    # Skyline: rectangles along the horizon, lit windows after sunset.
    if have & CITY and not neg & {"city", "buildings", "town"}:
        x, skyline = rng.f(0, 0.15), torch.zeros_like(u)
        while x < 1:
            bw = rng.f(0.015, 0.05)
            if rng.f() < 0.75:
                bh = rng.f(0.02, 0.12)
                skyline = torch.maximum(skyline, ((u >= x) & (u < x + bw) & (v > horizon - bh)).float())
            x += bw + rng.f(0, 0.02)
        skyline = skyline * (v <= horizon + 0.002)
        bcol = [0.35 * a * amb + 0.05 for a in hor]
        img = paint(img, skyline, bcol)
        if hour in ("dusk", "night"):
            wx, wy = (torch.sin(u * w * 0.9) > 0.6), (torch.sin(v * h * 1.1) > 0.5)
            g = torch.Generator(device=dev).manual_seed(seed ^ 0xC17)
            on = torch.rand(h // 8 + 1, w // 8 + 1, generator=g, device=dev) > 0.55
            # One switch per 8x8 cell, by plain indexing (deterministic).
            iy = torch.arange(h, device=dev) // 8
            ix = torch.arange(w, device=dev) // 8
            on = on[iy][:, ix]
            img = paint(img, skyline * (wx & wy & on).float(), (1.0, 0.82, 0.45), 0.9)

    # Below the horizon: water with the sky reflected, or ground.
    below = (v > horizon).float()
    if water:
        mirror = sky_at((2 * horizon - v).clamp(0, 1))
        wcol = col([0.3 * a for a in hor]) + mirror * 0.55
        # Crests: close together near the horizon, wider and rougher
        # towards the viewer, flatter when the prompt asks for calm.
        near = (v - horizon).clamp(0)
        waves = 0.5 + 0.5 * torch.sin(v * h * 0.6 / (1 + 4 * near) + 1.5 * calm * torch.sin(u * 40 + v * 7))
        wcol = wcol * (0.85 + 0.15 * calm * waves).unsqueeze(0)
        # The light's path on the water: a column broken by the waves.
        path = torch.exp(-(((u - cx) * aspect) / (0.03 + 0.25 * (v - horizon).clamp(0))) ** 2)
        glitter = path * (waves > 0.75).float() * (0.3 if hour == "night" else 0.7)
        wcol = wcol + col(light) * glitter.unsqueeze(0)
        img = img * (1 - below).unsqueeze(0) + wcol * below.unsqueeze(0)
        if have & BOATS and "boats" not in neg and "boat" not in neg:
            for _ in range(rng.i(4) + 2):
                bx, by, bl = rng.f(0.05, 0.9), rng.f(horizon + 0.03, 0.85), rng.f(0.03, 0.07)
                scale = 0.4 + (by - horizon) * 2
                hull = (u > bx) & (u < bx + bl * scale) & (v > by - 0.012 * scale) & (v < by)
                mast = ((u - bx - bl * scale * 0.45).abs() < 0.0015) & (v > by - 0.09 * scale) & (v < by)
                img = paint(img, (hull | mast).float(), [0.2 * a * amb for a in hor])
    else:
        gname = next((x for x in ws if x in GROUNDS and x not in neg), None)
        gcol = GROUNDS[gname] if gname else hsv(rng.f(0.2, 0.35), 0.55, 0.45)
        g = torch.Generator(device=dev).manual_seed(seed ^ 0x6A7)
        tex = torch.rand(1, 1, h // 48 + 2, w // 48 + 2, generator=g, device=dev)
        tex = torch.nn.functional.interpolate(tex, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        depth = ((v - horizon) / (1 - horizon)).clamp(0, 1)
        gimg = col([x * (0.4 + 0.6 * amb) for x in gcol]) * (0.55 + 0.45 * depth + 0.15 * (tex - 0.5)).unsqueeze(0)
        img = img * (1 - below).unsqueeze(0) + gimg * below.unsqueeze(0)

    # A vignette pulls the eye in.
    vig = 1 - 0.35 * (((u - 0.5) * 1.4) ** 2 + ((v - 0.5) * 1.4) ** 2)
    return (img * vig.unsqueeze(0)).clamp(0, 1)


def denoise(torch, dev, target, steps, seed, progress_out, at=(), preview=None):
    """Moves seeded noise towards target in `steps` passes on dev, calling
    preview(k, image) after each step k in at but the last."""
    F = torch.nn.functional
    g = torch.Generator(device=dev).manual_seed(seed)
    shape = (1,) + tuple(target.shape)
    x = 0.5 + 0.5 * torch.randn(shape, generator=g, device=dev)
    k1 = torch.exp(-torch.arange(-2, 3, device=dev, dtype=torch.float32) ** 2 / 2)
    k2 = torch.outer(k1, k1)
    kern = (k2 / k2.sum()).expand(3, 1, 5, 5).contiguous()
    tgt = target.unsqueeze(0)
    for k in range(1, steps + 1):
        t = k / steps
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kern, groups=3)
        pull = 0.93 if k == steps else 0.12 + 0.8 * t * t
        x = x + (tgt - x) * pull
        if k < steps:
            x = x + torch.randn(shape, generator=g, device=dev) * (0.12 * (1 - t))
        if dev.type == "cuda":
            torch.cuda.synchronize()  # report work done, not work queued
        if preview is not None and k in at and k < steps:
            preview(k, x[0])  # reads x only: the output is the same without it
        print(f"progress {k} {steps}", file=progress_out, flush=True)
    return x[0]


def png_bytes(torch, img):
    """Encodes img (3, h, w), values 0..1, as an 8-bit RGB PNG."""
    _, h, w = img.shape
    pix = (img.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8).permute(1, 2, 0).reshape(h, w * 3)
    # Filter type 0 (None) at the start of every row.
    rows = torch.cat([torch.zeros(h, 1, dtype=torch.uint8, device=pix.device), pix], dim=1).cpu().contiguous()
    try:
        raw = rows.numpy().tobytes()
    except (ImportError, RuntimeError):  # torch without numpy
        raw = bytes(rows.flatten().tolist())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # Level 6 is fixed so that the bytes depend on the pixels and the zlib build only.
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def preview_png(torch, img):
    """img as a PNG of at most MAX_PREVIEW_BYTES, halved (every other pixel)
    until it fits; None if even 1x1 does not."""
    # Raw pixels over the cap rarely compress under it: skip those encodings.
    while img.shape[1] * img.shape[2] * 3 > MAX_PREVIEW_BYTES:
        img = img[:, ::2, ::2]
    while True:
        data = png_bytes(torch, img)
        if len(data) <= MAX_PREVIEW_BYTES:
            return data
        if img.shape[1] == 1 and img.shape[2] == 1:
            return None
        img = img[:, ::2, ::2]


def start_torch(allow_cpu):
    """Imports torch and makes its device ready, deterministic."""
    try:
        import torch
    except ImportError as e:
        fail(f"PyTorch is not installed for {sys.executable}: {e}")
    dev = open_device(torch, allow_cpu)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # TF32 rounds inputs to 10 mantissa bits in convolutions; off, so
    # results move less between GPU generations.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        torch.zeros(1, device=dev).add_(1).cpu()  # create the context now, to time it apart
    return torch, dev


def paint(torch, dev, w, h, steps, seed, prompt, negative, lap, progress_out, at=(), preview=None):
    """The task's PNG, and how long its stages took."""
    torch.manual_seed(seed)
    with torch.no_grad():
        target = scene(torch, dev, w, h, seed, prompt, negative)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_scene = lap()
        img = denoise(torch, dev, target, steps, seed, progress_out, at, preview)
        t_steps = lap()
        data = png_bytes(torch, img)
        t_png = lap()
    return data, f"scene {t_scene}, steps {t_steps}, png {t_png} ({len(data)} bytes)"


def serve(torch, dev, lap):
    """Serve mode: a task per stdin line, each answered on stdout."""
    out = sys.stdout.buffer
    progress_out = sys.stdout  # progress shares the answers' stream
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"

    def preview(k, img):
        data = preview_png(torch, img)
        if data is not None:
            # progress_out flushes each line, so nothing of it is pending
            # in the text layer when the frame goes to the buffer.
            out.write(f"preview {k} {len(data)}\n".encode())
            out.write(data)
            out.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        lap()
        try:
            t = json.loads(line)
            w, h, steps, seed, prompt, negative = parse_task(t)
            asked = t.get("preview_steps")
            at = {k for k in asked if isinstance(k, int)} if isinstance(asked, list) else set()
            data, timing = paint(torch, dev, w, h, steps, seed, prompt, negative, lap, progress_out, at, preview)
        except (ValueError, RuntimeError) as e:  # TaskError, bad JSON, CUDA errors (out of memory)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            msg = " ".join(str(e).split())[:900] or type(e).__name__
            out.write(f"error {msg}\n".encode())
            out.flush()
            print(f"torch_sketch: task failed: {msg}", file=sys.stderr, flush=True)
            continue
        out.write(f"png {len(data)}\n".encode())
        out.write(data)
        out.flush()
        print(f"torch_sketch: {w}x{h} {steps} steps on {name}: {timing}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when CUDA is unavailable")
    ap.add_argument("--serve", action="store_true", help="serve mode: a task per stdin line until stdin closes")
    args = ap.parse_args()
    clock = [time.perf_counter()]

    def lap():
        now = time.perf_counter()
        d, clock[0] = now - clock[0], now
        return f"{d:.3f} s"

    if args.serve:
        torch, dev = start_torch(args.allow_cpu)
        print(f"torch_sketch: serving on {dev} after {lap()}", file=sys.stderr, flush=True)
        serve(torch, dev, lap)
        return
    w, h, steps, seed, prompt, negative = read_task()
    lap()
    torch, dev = start_torch(args.allow_cpu)
    t_start = lap()
    data, timing = paint(torch, dev, w, h, steps, seed, prompt, negative, lap, sys.stderr)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"torch_sketch: {w}x{h} {steps} steps on {name}: import and device init {t_start}, {timing}",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
