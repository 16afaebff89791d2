#!/usr/bin/env python3
"""diffusers_serve: a gpunet serve-mode generator for a local diffusers model.

For volunteers who run diffusers themselves. It loads one model once, a
diffusers directory (model_index.json beside its components) or a single-file
checkpoint (.safetensors or .ckpt), then answers tasks by the serve-mode
contract of docs/kernels.md until stdin closes:

    gpunet host --kernel cmd --kernel-serve \\
        --kernel-cmd "python3 kernels/diffusers_serve.py --model /models/sdxl --device cuda" \\
        --kernel-models local/sdxl --kernel-name cmd:diffusers-sdxl-v1

Each stdin line is one task (JSON). Each is answered on stdout with
"progress K N" lines (K on the task's own scale of `steps`), a "preview K N"
frame and N bytes of PNG at each step of the task's preview_steps, then
"png N" and N bytes, or "error MESSAGE" when the task cannot be run as asked;
the generator then waits for the next line. Logs go to stderr only: file
descriptor 1 is pointed at stderr once the answers' stream is set aside, so
a library that prints cannot break the framing.

What a task gets:
- seed: a torch.Generator seeded with it (on the GPU for cuda, on the CPU
  for cpu and mps);
- steps: num_inference_steps. An edit runs img2img's usual
  int(steps x strength) of them, as A1111 does; progress is still reported
  out of `steps`;
- width x height exactly: a size the model cannot make (not a multiple of
  its latent grid) is refused, never rounded; an answer of another size is
  refused too;
- negative_prompt; params "cfg" (guidance_scale, 0 < cfg <= 30), "sampler"
  (a diffusers scheduler, SAMPLERS below) and, for an edit, "strength"
  (0 < s <= 1, at most 3 decimals, default 0.6). Any other param is refused;
- input_images: the first image, scaled to width x height, through
  AutoPipelineForImage2Image.from_pipe (the same weights, loaded once).
  Reference images (more than one) are refused;
- mask_image: the mask's alpha 0 (may change) becomes diffusers' white
  (repaint), through AutoPipelineForInpainting.from_pipe; a model family with
  no inpainting pipeline refuses the task;
- previews: the latents after that step turned into RGB by a fixed linear map
  (the one ComfyUI uses for its "latent2rgb" previews), 1/8 of the image a
  side: no VAE decode, so a preview costs next to nothing.

At start it writes the model's digest on stderr, "model sha256:HEX": the
sha256 of a single-file checkpoint (what A1111 reports as the file's hash), or
for a directory the sha256 of model_index.json and the listing (path and size)
of its weight files, or with --digest full of the bytes of every weight file.
--digest-only prints just "sha256:HEX" on stdout and exits, loading nothing.

--fake serves a stand-in pipeline that imports nothing outside the standard
library (no torch, no diffusers, no weights): a solid colour from a hash of
the task, previews from a fake 1/8-size latent, sizes in multiples of 16 (like
a transformer model's latent patches), edits and masks accepted. Everything
around the pipeline (framing, task parsing, refusals, step mapping, preview
encoding) is the code a real model runs, so kernel/diffusers_contract_test.go
tests it through kernel.Command on any machine with python3.
"""

import os

# cuBLAS reads this when it initialises; deterministic algorithms want it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import base64
import binascii
import hashlib
import inspect
import io
import json
import re
import struct
import sys
import time
import zlib

NAME = "diffusers_serve"
MAX_PREVIEW_BYTES = 256 << 10  # protocol.MaxPreviewBytes
MAX_LINE = 900  # an answer's line stays under the host's 1 KiB header cap
EXIT_USAGE = 2  # bad arguments or no usable model: the host shows our stderr
DEFAULT_STRENGTH = 0.6  # kernel.DefaultStrength
WEIGHT_EXTS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".gguf", ".onnx", ".msgpack")

# The task's params this generator honours; any other is refused, as a param
# silently ignored would be stored under a TaskCID that promises it.
PARAMS = ("cfg", "sampler", "strength")

# sampler param -> (diffusers scheduler class, extra config). Names as
# ComfyUI spells them; "Euler a" and "euler-a" are read as "euler_a".
SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

# Latent channel -> RGB weights and bias for previews: ComfyUI's
# latent_formats.py (SD15 and SDXL), which apply to latents as the sampler
# holds them (scaled), as diffusers' callbacks hand them over.
LATENT_RGB = {
    "sd15": ([[0.3512, 0.2297, 0.3227],
              [0.3250, 0.4974, 0.2350],
              [-0.2829, 0.1762, 0.2721],
              [-0.2120, -0.2616, -0.7177]], [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341],
              [-0.2533, -0.0042, 0.1068],
              [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
}


def log(msg):
    print(f"{NAME}: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    log(msg)
    sys.exit(EXIT_USAGE)


def one_line(msg, limit=MAX_LINE):
    """msg on one line of at most limit bytes of UTF-8."""
    s = " ".join(str(msg).split())
    b = s.encode("utf-8", "replace")
    if len(b) <= limit:
        return s
    return b[:limit].decode("utf-8", "ignore")


# ---------------------------------------------------------------- framing

class Answers:
    """The serve-mode stream on stdout: progress, previews, one answer per
    task. Every write is flushed: the host reads it as it comes."""

    def __init__(self, out):
        self.out = out  # a binary stream

    def _frame(self, header, data=b""):
        self.out.write(header.encode("utf-8") + b"\n" + data)
        self.out.flush()

    def progress(self, k, n):
        self._frame(f"progress {k} {n}")

    def preview(self, k, png):
        self._frame(f"preview {k} {len(png)}", png)

    def png(self, data):
        self._frame(f"png {len(data)}", data)

    def error(self, msg):
        self._frame("error " + (one_line(msg) or "unknown error"))


def take_stdout():
    """Sets the answers' stream (the real stdout) aside and points file
    descriptor 1, and sys.stdout, at stderr, so that whatever a library
    prints (a banner, a warning from C code) lands in the host's log instead
    of breaking the framing."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return Answers(out)


# ---------------------------------------------------------------- tasks

class TaskError(ValueError):
    """A task this generator cannot run as given: answered with "error"."""


class Task:
    """A decoded task line (docs/kernels.md, The contract a generator follows)."""

    __slots__ = ("model", "prompt", "negative", "seed", "steps", "width", "height",
                 "cfg", "sampler", "strength", "images", "mask", "preview_steps")


def parse_strength(s):
    """kernel.ParseStrength: "0.6", ".75", "1"; None (absent) is 0.6."""
    if s is None:
        return DEFAULT_STRENGTH
    m = re.fullmatch(r"([01]?)(?:\.([0-9]{1,3}))?", s)
    p = 0
    if m and (m.group(1) or m.group(2)):
        p = (1000 if m.group(1) == "1" else 0) + int((m.group(2) or "0").ljust(3, "0"))
    if not 0 < p <= 1000:
        raise TaskError(f"strength {s[:40]!r}: want a decimal above 0 and at most 1 with at most 3 decimals, e.g. 0.6")
    return p / 1000


def parse_cfg(s):
    try:
        cfg = float(s)
    except ValueError:
        cfg = float("nan")
    if not 0 < cfg <= 30:  # NaN fails too
        raise TaskError(f"cfg {s[:40]!r}: want a number above 0 and at most 30, e.g. 7")
    return cfg


def sampler_name(s):
    name = re.sub(r"[\s-]+", "_", s.strip().lower())
    if name not in SAMPLERS:
        raise TaskError(f"sampler {s[:40]!r} not supported; use one of {', '.join(sorted(SAMPLERS))}")
    return name


def b64(s, what):
    if not isinstance(s, str):
        raise TaskError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise TaskError(f"{what} is not valid base64: {e}") from None


def parse_task(line):
    """Decodes and checks one task line; raises TaskError."""
    try:
        t = json.loads(line)
    except ValueError as e:
        raise TaskError(f"task line is not JSON: {e}") from None
    if not isinstance(t, dict):
        raise TaskError("task line is not a JSON object")
    task = Task()
    try:
        task.model = str(t.get("model") or "")
        task.prompt = str(t["prompt"])
        task.negative = str(t.get("negative_prompt") or "")
        task.seed, task.steps = int(t["seed"]), int(t["steps"])
        task.width, task.height = int(t["width"]), int(t["height"])
    except (KeyError, TypeError, ValueError) as e:
        raise TaskError(f"task lacks a field or has a bad one: {e!r}") from None
    if not (1 <= task.seed < 1 << 53 and 1 <= task.steps <= 150
            and 64 <= task.width <= 2048 and 64 <= task.height <= 2048):
        raise TaskError(f"task out of range: {task.width}x{task.height}, {task.steps} steps, seed {task.seed}")

    params = t.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise TaskError("params is not an object of strings")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise TaskError(f"param {unknown[0][:40]!r} not supported; this generator honours {', '.join(PARAMS)}")
    task.cfg = parse_cfg(params["cfg"]) if "cfg" in params else None
    task.sampler = sampler_name(params["sampler"]) if "sampler" in params else None

    images = t.get("input_images") or []
    if not isinstance(images, list):
        raise TaskError("input_images is not a list")
    task.images = [b64(s, f"input_images[{i}]") for i, s in enumerate(images)]
    task.mask = b64(t["mask_image"], "mask_image") if t.get("mask_image") else None
    if len(task.images) > 1:
        raise TaskError(f"{len(task.images)} input images: this generator edits one image and takes no reference images")
    if task.mask is not None and not task.images:
        raise TaskError("mask_image without an input image")
    task.strength = parse_strength(params.get("strength")) if task.images else None
    if "strength" in params and not task.images:
        raise TaskError("param 'strength' is for an edit, and the task has no input image")
    if task.images and int(task.steps * task.strength) < 1:
        # diffusers runs int(steps x strength) steps of an edit: none here.
        raise TaskError(f"{task.steps} steps at strength {task.strength:g} leave no step to run; "
                        f"ask for at least {int(1 / task.strength) + 1}")

    asked = t.get("preview_steps") or []
    if not isinstance(asked, list):
        raise TaskError("preview_steps is not a list")
    task.preview_steps = sorted({k for k in asked if isinstance(k, int) and 1 <= k < task.steps})
    return task


class Run:
    """One task's progress and previews. A pipeline reports its own steps
    (done of total: fewer than `steps` for an edit, more for a second-order
    sampler); the host is told them on the task's scale, out of `steps`,
    never backwards, with a preview at each asked-for step passed."""

    def __init__(self, answers, task):
        self.answers, self.task = answers, task
        self.k = 0  # last step reported
        self.previewed = 0  # last step a preview was sent for

    def step(self, done, total, latent_rgb=None):
        """After the pipeline's step `done` of `total`. latent_rgb, when a
        preview is due, is called for (w, h, RGB bytes) or None."""
        t = self.task
        k = min(done * t.steps // max(total, 1), t.steps)
        if k <= self.k:
            return
        self.k = k
        self.answers.progress(k, t.steps)
        due = [s for s in t.preview_steps if self.previewed < s <= k]
        if not due or latent_rgb is None:
            return
        # One picture for the steps passed since the last: under the label
        # of the latest, as the host wants them ascending and once each.
        self.previewed = due[-1]
        try:
            img = latent_rgb()
            data = fit_preview(*img, t.width, t.height) if img else None
        except Exception as e:  # a preview must never cost the task
            log(f"preview of step {due[-1]} failed: {one_line(e, 300)}")
            return
        if data:
            self.answers.preview(due[-1], data)


# ---------------------------------------------------------------- PNG

def encode_png(w, h, rgb):
    """rgb (h rows of w RGB pixels, 8 bits) as a PNG, with zlib alone."""
    if len(rgb) != w * h * 3:
        raise ValueError(f"{len(rgb)} bytes of pixels for {w}x{h}")
    stride = w * 3
    # Filter type 0 (None) before every row.
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def halve(w, h, rgb):
    """Every other pixel of every other row."""
    stride = w * 3
    rows = []
    for y in range(0, h, 2):
        row = rgb[y * stride:(y + 1) * stride]
        rows.append(b"".join(row[x:x + 3] for x in range(0, stride, 6)))
    return (w + 1) // 2, (h + 1) // 2, b"".join(rows)


def fit_preview(w, h, rgb, max_w, max_h):
    """A PNG of the picture within max_w x max_h and MAX_PREVIEW_BYTES,
    halved until it fits; None if even 1x1 does not."""
    rgb = bytes(rgb)
    # Raw pixels over the cap rarely compress under it: skip those encodings.
    while w > max_w or h > max_h or w * h * 3 > MAX_PREVIEW_BYTES:
        w, h, rgb = halve(w, h, rgb)
    while True:
        data = encode_png(w, h, rgb)
        if len(data) <= MAX_PREVIEW_BYTES:
            return data
        if w == 1 and h == 1:
            return None
        w, h, rgb = halve(w, h, rgb)


def png_size(b):
    """(w, h) from a PNG's header, or None if b is not a PNG."""
    if len(b) >= 24 and b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
        return struct.unpack(">II", b[16:24])
    return None


# ---------------------------------------------------------------- digests

def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_digest(path, full=False):
    """The model's content digest and how it was taken (module doc)."""
    if not os.path.isdir(path):
        return file_sha256(path), f"sha256 of the file, {os.path.getsize(path)} bytes"
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{path} is a directory without model_index.json: not a diffusers model")
    h = hashlib.sha256()
    with open(index, "rb") as f:
        data = f.read()
    h.update(b"model_index.json %d\n" % len(data) + data)
    n = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(WEIGHT_EXTS):
                continue
            p = os.path.join(root, name)
            rel = os.path.relpath(p, path).replace(os.sep, "/")
            h.update(f"{rel} {os.path.getsize(p)}".encode())
            if full:
                h.update(b" " + file_sha256(p).encode())
            h.update(b"\n")
            n += 1
    how = "model_index.json and the sha256 of each weight file" if full else "model_index.json and the weight files' names and sizes"
    return h.hexdigest(), f"{how} ({n} files)"


# ---------------------------------------------------------------- fake

class FakeEngine:
    """A stand-in pipeline from the standard library alone: what the real
    engine does around diffusers, with a solid colour for a picture."""

    size_multiple = 16  # like a transformer model's 2x2 latent patches
    name = "fake"

    def generate(self, task, run):
        # What libraries do (a banner from Python, a line from C code):
        # take_stdout must keep both out of the answers.
        print("fake: a library's banner on stdout", flush=True)
        os.write(1, b"fake: a C library's line on file descriptor 1\n")
        check_size(task, self.size_multiple)
        h = hashlib.sha256(repr((task.prompt, task.negative, task.seed, task.cfg, task.sampler,
                                 task.strength)).encode())
        for b in task.images:
            if png_size(b) is None and b[:3] != b"\xff\xd8\xff" and not (b[:4] == b"RIFF" and b[8:12] == b"WEBP"):
                raise TaskError("input image is not a PNG, JPEG or WebP")
            h.update(hashlib.sha256(b).digest())
        if task.mask is not None:
            h.update(hashlib.sha256(task.mask).digest())
        colour = h.digest()[:3]
        total = int(task.steps * task.strength) if task.images else task.steps
        lw, lh = task.width // 8, task.height // 8
        for i in range(1, total + 1):
            # The fake latent: grey moving towards the colour.
            now = bytes(128 + (c - 128) * i // total for c in colour)
            run.step(i, total, lambda now=now: (lw, lh, now * (lw * lh)))
        return encode_png(task.width, task.height, colour * (task.width * task.height))

    def after_failure(self):
        pass


def check_size(task, multiple):
    if task.width % multiple or task.height % multiple:
        raise TaskError(f"size {task.width}x{task.height} not supported: this model makes sizes "
                        f"in multiples of {multiple} (its latent grid)")


# ---------------------------------------------------------------- diffusers

class DiffusersEngine:
    """One diffusers pipeline, loaded once; img2img and inpainting share its
    weights (from_pipe), made the first time an edit needs them."""

    def __init__(self, args):
        try:
            import torch
            import diffusers
        except ImportError as e:
            fail(f"diffusers and torch are needed for {sys.executable} ({e}); "
                 "pip install diffusers transformers accelerate safetensors torch, or try --fake")
        self.torch, self.diffusers = torch, diffusers
        self.device = open_device(torch, args.device)
        dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
        if dtype == "float16" and args.device == "cpu":
            fail("float16 on the CPU is not supported by most of torch's CPU kernels; use --dtype float32")
        self.dtype = getattr(torch, dtype)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

        self.pipe = self.load(args)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.default_scheduler = self.pipe.scheduler
        self.edit_pipes = {}
        self.name = type(self.pipe).__name__
        vae = int(getattr(self.pipe, "vae_scale_factor", 8) or 8)
        # A transformer (SD3, Flux, PixArt) works on 2x2 patches of latents.
        self.size_multiple = args.size_multiple or (vae * 2 if getattr(self.pipe, "transformer", None) is not None else vae)
        self.latent_rgb = LATENT_RGB["sdxl" if "XL" in self.name else "sd15"]
        self.warned_preview = False

    def load(self, args):
        d, torch = self.diffusers, self.torch
        path = args.model
        if os.path.isdir(path):
            cls = getattr(d, args.pipeline) if args.pipeline else d.AutoPipelineForText2Image
            try:
                return cls.from_pretrained(path, torch_dtype=self.dtype)
            except ValueError as e:  # a pipeline the auto class does not map
                if args.pipeline:
                    raise
                log(f"AutoPipelineForText2Image cannot load it ({one_line(e, 200)}); trying DiffusionPipeline")
                return d.DiffusionPipeline.from_pretrained(path, torch_dtype=self.dtype)
        name = args.pipeline or ("StableDiffusionXLPipeline" if looks_sdxl(path) else "StableDiffusionPipeline")
        cls = getattr(d, name, None)
        if cls is None or not hasattr(cls, "from_single_file"):
            fail(f"--pipeline {name}: diffusers {d.__version__} has no such pipeline that loads single files")
        log(f"loading {path} as {name} (another family? name it with --pipeline)")
        return cls.from_single_file(path, torch_dtype=self.dtype)

    def pipe_for(self, task):
        if not task.images:
            return self.pipe
        kind = "inpaint" if task.mask is not None else "img2img"
        if kind not in self.edit_pipes:
            auto = self.diffusers.AutoPipelineForInpainting if kind == "inpaint" else self.diffusers.AutoPipelineForImage2Image
            try:
                p = auto.from_pipe(self.pipe)
            except Exception as e:
                what = "masks (inpainting)" if kind == "inpaint" else "input images (img2img)"
                raise TaskError(f"{what} not supported: diffusers has no {kind} pipeline for {self.name} "
                                f"({one_line(e, 200)})") from None
            p.set_progress_bar_config(disable=True)
            self.edit_pipes[kind] = p
        return self.edit_pipes[kind]

    def generate(self, task, run):
        torch = self.torch
        check_size(task, self.size_multiple)
        pipe = self.pipe_for(task)
        accepts = inspect.signature(pipe.__call__).parameters

        if task.sampler:
            cls_name, extra = SAMPLERS[task.sampler]
            if "FlowMatch" in type(self.default_scheduler).__name__:
                raise TaskError(f"sampler {task.sampler!r} not supported: {self.name} samples by flow matching")
            pipe.scheduler = getattr(self.diffusers, cls_name).from_config(self.default_scheduler.config, **extra)
        else:
            pipe.scheduler = self.default_scheduler

        gen_device = "cuda" if self.device.type == "cuda" else "cpu"
        kw = dict(prompt=task.prompt, num_inference_steps=task.steps,
                  generator=torch.Generator(device=gen_device).manual_seed(task.seed), output_type="pil")
        if task.negative:
            if "negative_prompt" not in accepts:
                raise TaskError(f"negative_prompt not supported by {type(pipe).__name__}")
            kw["negative_prompt"] = task.negative
        if task.cfg is not None:
            if "guidance_scale" not in accepts:
                raise TaskError(f"cfg not supported by {type(pipe).__name__}")
            kw["guidance_scale"] = task.cfg
        if "width" in accepts and "height" in accepts:
            kw["width"], kw["height"] = task.width, task.height
        elif not task.images:
            raise TaskError(f"{type(pipe).__name__} takes no size")
        if task.images:
            kw["image"] = load_image(task.images[0], task.width, task.height)
            kw["strength"] = task.strength
        if task.mask is not None:
            kw["mask_image"] = load_mask(task.mask, task.width, task.height)

        if "callback_on_step_end" in accepts:
            def on_step_end(p, i, timestep, cb):
                total = getattr(p, "num_timesteps", None) or expected_steps(task)
                latents = cb.get("latents")
                run.step(i + 1, total, (lambda: self.preview_rgb(latents)) if latents is not None else None)
                return cb
            kw["callback_on_step_end"] = on_step_end
        else:
            log(f"{type(pipe).__name__} has no callback_on_step_end: progress at the end only")

        with torch.inference_mode():
            res = pipe(**kw)
        nsfw = getattr(res, "nsfw_content_detected", None)
        if nsfw and any(nsfw):
            # The safety checker blacked the picture out: not the task's image.
            raise TaskError("the model's safety checker withheld the image")
        img = res.images[0]
        if img.size != (task.width, task.height):
            raise TaskError(f"the pipeline made {img.size[0]}x{img.size[1]}, not {task.width}x{task.height}")
        run.step(1, 1)  # the last step, if the pipeline did not report it
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()

    def preview_rgb(self, latents):
        torch = self.torch
        lat = latents[0].float()
        if lat.dim() != 3 or lat.shape[0] != 4:
            if not self.warned_preview:
                self.warned_preview = True
                log(f"no previews: latents of shape {tuple(latents.shape)} have no RGB map here")
            return None
        weights, bias = self.latent_rgb
        f = torch.tensor(weights, dtype=torch.float32, device=lat.device)
        b = torch.tensor(bias, dtype=torch.float32, device=lat.device)
        rgb = torch.einsum("chw,cr->hwr", lat, f) + b
        rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().contiguous()
        try:
            raw = rgb.numpy().tobytes()
        except (ImportError, RuntimeError):  # torch without numpy
            raw = bytes(rgb.flatten().tolist())
        return lat.shape[2], lat.shape[1], raw

    def after_failure(self):
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()  # after an out-of-memory, for the next task


def expected_steps(task):
    return int(task.steps * task.strength) if task.images else task.steps


def open_device(torch, name):
    if name == "cuda" and not torch.cuda.is_available():
        fail(f"CUDA is not available to torch {torch.__version__} (built for CUDA {torch.version.cuda}); "
             "check the NVIDIA driver with nvidia-smi, or pass --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        fail("MPS is not available to this torch; pass --device cpu")
    return torch.device(name)


def looks_sdxl(path):
    """Whether a .safetensors checkpoint holds SDXL's second text encoder,
    read from its header alone."""
    if not path.endswith(".safetensors"):
        return False
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            keys = json.loads(f.read(min(n, 100 << 20)))
    except (OSError, ValueError, struct.error):
        return False
    return any(k.startswith("conditioner.embedders.1.") for k in keys)


def load_image(b, w, h):
    from PIL import Image
    try:
        img = Image.open(io.BytesIO(b))
        img.load()
    except Exception as e:
        raise TaskError(f"input image cannot be decoded: {one_line(e, 200)}") from None
    # A transparent pixel counts as black (docs/kernels.md): the image's
    # alpha is not a mask.
    rgba = img.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    img = Image.alpha_composite(black, rgba).convert("RGB")
    return img if img.size == (w, h) else img.resize((w, h), Image.LANCZOS)


def load_mask(b, w, h):
    """OpenAI's mask (alpha 0: may change) as diffusers' (white: repaint)."""
    from PIL import Image
    try:
        m = Image.open(io.BytesIO(b))
        m.load()
    except Exception as e:
        raise TaskError(f"mask image cannot be decoded: {one_line(e, 200)}") from None
    alpha = m.convert("RGBA").getchannel("A")
    if alpha.size != (w, h):
        alpha = alpha.resize((w, h), Image.BILINEAR)
    repaint = alpha.point(lambda a: 255 - a)
    if repaint.getextrema()[1] == 0:
        raise TaskError("mask_image has no transparent pixel: nothing may change")
    return repaint


# ---------------------------------------------------------------- main

def serve(engine, answers, stdin):
    """A task per stdin line until stdin closes (the host asks us to exit)."""
    for line in stdin:  # binary: a line with input images can be megabytes
        if not line.strip():
            continue
        start = time.perf_counter()
        try:
            task = parse_task(line)
            data = engine.generate(task, Run(answers, task))
        except Exception as e:  # a task that fails must not end the generator
            engine.after_failure()
            msg = one_line(e) or type(e).__name__
            if not isinstance(e, TaskError):
                msg = one_line(f"{type(e).__name__}: {msg}")
            answers.error(msg)
            log(f"task failed: {msg}")
            continue
        answers.png(data)
        edit = " (edit)" if task.images else ""
        log(f"{task.width}x{task.height} {task.steps} steps{edit} on {engine.name}: "
            f"{time.perf_counter() - start:.3f} s, {len(data)} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a diffusers model directory, or a .safetensors/.ckpt checkpoint")
    ap.add_argument("--device", choices=("cuda", "cpu", "mps"), default="cuda")
    ap.add_argument("--dtype", choices=("float16", "float32"), help="default float16, float32 on the CPU")
    ap.add_argument("--pipeline", help="the diffusers pipeline class, e.g. StableDiffusionXLPipeline "
                                       "(default: AutoPipelineForText2Image for a directory; for one file "
                                       "SDXL or SD 1.x/2.x, read from the checkpoint)")
    ap.add_argument("--size-multiple", type=int, help="the model's size step (default from the pipeline: 8, or 16 with a transformer)")
    ap.add_argument("--digest", choices=("listing", "full"), default="listing",
                    help="for a directory: hash the weight files' names and sizes, or their bytes too")
    ap.add_argument("--digest-only", action="store_true", help="print the model's sha256:HEX on stdout and exit")
    ap.add_argument("--fake", action="store_true", help="serve a stand-in pipeline with no dependencies (tests)")
    args = ap.parse_args()
    if not args.model and not args.fake:
        ap.error("--model is required (or --fake)")
    if args.model and not os.path.exists(args.model):
        fail(f"--model {args.model}: no such file or directory")

    if args.model:
        start = time.perf_counter()
        try:
            digest, how = model_digest(args.model, args.digest == "full")
        except OSError as e:
            fail(f"reading {args.model}: {e}")
        if args.digest_only:
            print(f"sha256:{digest}", flush=True)
            return
        log(f"model sha256:{digest} ({how}, {time.perf_counter() - start:.1f} s) {args.model}")
    elif args.digest_only:
        fail("--digest-only needs --model")

    answers = take_stdout()
    if args.fake:
        if not args.model:
            log("model: the fake pipeline (--fake), no weights to digest")
        engine = FakeEngine()
    else:
        start = time.perf_counter()
        engine = DiffusersEngine(args)
        log(f"{engine.name} on {engine.device} ({args.dtype or 'default dtype'}) loaded in "
            f"{time.perf_counter() - start:.1f} s; sizes in multiples of {engine.size_multiple}")
    serve(engine, answers, sys.stdin.buffer)


if __name__ == "__main__":
    main()
