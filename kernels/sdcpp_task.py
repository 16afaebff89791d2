#!/usr/bin/env python3
"""sdcpp_task: runs one gpunet task through stable-diffusion.cpp's CLI.

A per-task generator (docs/kernels.md, The contract a generator follows): the
task arrives as one JSON object on stdin; this program runs sd.cpp's CLI
(`sd-cli`, named `sd` in older releases) once with the task's fields, writes
"progress K N" lines on stderr as sd.cpp's sampling progress bar advances,
and copies the PNG sd.cpp wrote to stdout. Everything sd.cpp prints goes to
stderr. Standard library only.

    gpunet host --kernel cmd \\
        --kernel-cmd "python3 kernels/sdcpp_task.py --sd /opt/sd.cpp/build/bin/sd-cli -m /models/v1-5-pruned-emaonly.safetensors" \\
        --kernel-models local/sd15 --kernel-name cmd:sdcpp-sd15-v1

Arguments this program does not know (-m, --vae, --clip-on-cpu, --diffusion-model,
...) are passed to sd.cpp as they are, before the task's own:

    sd-cli [yours] -p PROMPT -n NEG -s SEED --steps N -W W -H H -o OUT.png
           [--cfg-scale C] [--sampling-method S]
           [-i INIT.png --strength S]          (an edit)

Honoured: prompt, negative_prompt, seed, steps, width and height (an answer of
another size fails the task), params "cfg", "sampler" (sd.cpp's names:
euler, euler_a, heun, dpm2, dpm++2s_a, dpm++2m, dpm++2mv2, ipndm, ipndm_v,
lcm, ddim_trailing, tcd) and "strength" (always passed: sd.cpp's default is
0.75, gpunet's 0.6). Refused: any other param, more than one input image, a
mask, a WebP input (sd.cpp reads images with stb_image: PNG and JPEG).

Not run against a real sd.cpp here: there is no sd.cpp binary or weights on
the machines this was written on. sd.cpp's progress bar ("|====| 3/20 -
1.23s/it") is parsed by its "K/N" with N the task's steps (or the edit's
int(steps x strength)), so the model-loading bar is not taken for sampling.
"""

import argparse
import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading

NAME = "sdcpp_task"
SAMPLERS = ("euler", "euler_a", "heun", "dpm2", "dpm++2s_a", "dpm++2m", "dpm++2mv2",
            "ipndm", "ipndm_v", "lcm", "ddim_trailing", "tcd")
PARAMS = ("cfg", "sampler", "strength")
MAX_PNG = 16 << 20  # protocol.MaxBlockBytes
PROGRESS = re.compile(rb"\|\s*(\d+)/(\d+)\b")


def fail(msg, status=2):
    print(f"{NAME}: {msg}", file=sys.stderr, flush=True)
    sys.exit(status)


def parse_strength(s):
    """kernel.ParseStrength: "0.6", ".75", "1"; None (absent) is 0.6."""
    if s is None:
        return "0.6"
    m = re.fullmatch(r"([01]?)(?:\.([0-9]{1,3}))?", s)
    p = 0
    if m and (m.group(1) or m.group(2)):
        p = (1000 if m.group(1) == "1" else 0) + int((m.group(2) or "0").ljust(3, "0"))
    if not 0 < p <= 1000:
        fail(f"strength {s[:40]!r}: want a decimal above 0 and at most 1 with at most 3 decimals, e.g. 0.6")
    return f"{p / 1000:g}"


def task_args(t, workdir):
    """sd.cpp's arguments for task t, the output path, and the number of
    sampling steps sd.cpp will report."""
    try:
        w, h, steps, seed = int(t["width"]), int(t["height"]), int(t["steps"]), int(t["seed"])
        prompt = str(t["prompt"])
    except (KeyError, TypeError, ValueError) as e:
        fail(f"task lacks a field or has a bad one: {e!r}")
    params = t.get("params") or {}
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        fail(f"param {unknown[0][:40]!r} not supported; this adapter honours {', '.join(PARAMS)}")
    out = os.path.join(workdir, "out.png")
    args = ["-p", prompt, "-n", str(t.get("negative_prompt") or ""), "-s", str(seed),
            "--steps", str(steps), "-W", str(w), "-H", str(h), "-o", out]
    if "cfg" in params:
        try:
            cfg = float(params["cfg"])
        except ValueError:
            cfg = float("nan")
        if not 0 < cfg <= 30:
            fail(f"cfg {params['cfg'][:40]!r}: want a number above 0 and at most 30, e.g. 7")
        args += ["--cfg-scale", f"{cfg:g}"]
    if "sampler" in params:
        if params["sampler"] not in SAMPLERS:
            fail(f"sampler {params['sampler'][:40]!r} not supported by sd.cpp; use one of {', '.join(SAMPLERS)}")
        args += ["--sampling-method", params["sampler"]]

    images = t.get("input_images") or []
    if t.get("mask_image"):
        fail("masks not supported: this adapter does not turn gpunet's alpha mask into sd.cpp's")
    if len(images) > 1:
        fail(f"{len(images)} input images: this adapter edits one image and takes no reference images")
    sampling = steps
    if images:
        data = base64.b64decode(images[0], validate=True)
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            ext = ".png"
        elif data[:3] == b"\xff\xd8\xff":
            ext = ".jpg"
        else:
            fail("input image not supported: sd.cpp reads PNG and JPEG")
        init = os.path.join(workdir, "init" + ext)
        with open(init, "wb") as f:
            f.write(data)
        strength = parse_strength(params.get("strength"))
        args += ["-i", init, "--strength", strength]
        sampling = int(steps * float(strength))
        if sampling < 1:
            fail(f"{steps} steps at strength {strength} leave no step to run")
    elif "strength" in params:
        fail("param 'strength' is for an edit, and the task has no input image")
    return args, out, steps, sampling


def relay(stream, steps, sampling, done):
    """Copies sd.cpp's output to stderr, turning its sampling progress bar
    into "progress K N" lines on the task's scale of steps."""
    last = 0
    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buf += chunk
        # The bar redraws itself with \r: a "line" ends at either.
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        for line in parts:
            if not line.strip():
                continue
            m = PROGRESS.search(line)
            if m and int(m.group(2)) == sampling and sampling > 0:
                k = min(int(m.group(1)) * steps // sampling, steps)
                if k > last:
                    last = k
                    sys.stderr.write(f"progress {k} {steps}\n")
                continue
            sys.stderr.write(line.decode("utf-8", "replace") + "\n")
        sys.stderr.flush()
    if buf.strip():
        sys.stderr.write(buf.decode("utf-8", "replace") + "\n")
        sys.stderr.flush()
    done.append(last)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="other arguments are passed to sd.cpp before the task's")
    ap.add_argument("--sd", help="sd.cpp's CLI (default: sd-cli, else sd, on PATH)")
    args, extra = ap.parse_known_args()
    sd = args.sd or shutil.which("sd-cli") or shutil.which("sd")
    if not sd or not shutil.which(sd):
        fail(f"sd.cpp's CLI not found ({args.sd or 'sd-cli or sd on PATH'}): build stable-diffusion.cpp and give --sd PATH")

    try:
        t = json.load(sys.stdin)
    except ValueError as e:
        fail(f"stdin is not one JSON task: {e}")
    with tempfile.TemporaryDirectory(prefix="gpunet-sdcpp-") as workdir:
        sd_args, out, steps, sampling = task_args(t, workdir)
        cmd = [sd] + extra + sd_args
        print(f"{NAME}: running {' '.join(cmd[:1] + extra)} ... ({steps} steps)", file=sys.stderr, flush=True)
        # stdin closed: sd.cpp must not read the host's pipe; its stdout
        # and stderr both go through relay, never to our stdout.
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        done = []
        reader = threading.Thread(target=relay, args=(p.stdout, steps, sampling, done))
        reader.start()
        status = p.wait()
        reader.join()
        if status != 0:
            fail(f"sd.cpp exited with status {status}", 1)
        try:
            with open(out, "rb") as f:
                data = f.read(MAX_PNG + 1)
        except OSError as e:
            fail(f"sd.cpp exited 0 but wrote no image: {e}", 1)
        if len(data) > MAX_PNG or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
            fail("sd.cpp's output is not a PNG of at most 16 MiB", 1)
        w, h = struct.unpack(">II", data[16:24])
        if (w, h) != (int(t["width"]), int(t["height"])):
            fail(f"sd.cpp made {w}x{h}, not the task's {t['width']}x{t['height']}", 1)
        if not done or done[0] < steps:
            print(f"progress {steps} {steps}", file=sys.stderr, flush=True)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
