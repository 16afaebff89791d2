#!/usr/bin/env node
// gpunet/esrgan-x4: a generator that upscales one input image ×4 with a trained
// network, the ESRGAN-slim x4 weights of @upscalerjs/esrgan-slim (MIT), run by
// TensorFlow.js on its pure-JavaScript CPU backend. It speaks the --kernel cmd
// contract of docs/kernels.md: with --serve one task per stdin line, answered on
// stdout with "progress K N" lines then "png N" and the bytes, or "error MESSAGE";
// without it one task on stdin, progress on stderr, the PNG on stdout.
//
//   npm ci --prefix kernels/esrgan
//   gpunet host --kernel cmd --kernel-serve --kernel-cmd "node kernels/esrgan/serve.mjs --serve" \
//       --kernel-models gpunet/esrgan-x4 --kernel-name cmd:esrgan-x4-v1
//
// The output is a pure function of the input image's pixels: no randomness, and
// the CPU backend's kernels are plain loops in a fixed order, so the same input
// gives the same bytes on every run (the PNG is written with Node's zlib at a
// fixed level). Prompt, steps and seed name the task; they do not change the
// picture.

import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// stdout carries the protocol alone: anything a library logs goes to stderr.
console.log = console.error;
console.info = console.error;
console.warn = console.error;

let tf, tfl, PNG;
try {
  tf = await import('@tensorflow/tfjs-core');
  await import('@tensorflow/tfjs-backend-cpu');
  tfl = await import('@tensorflow/tfjs-layers');
  ({ PNG } = await import('pngjs'));
} catch (e) {
  die(`esrgan: its packages are not installed (${e.code || e.message}); run: npm ci --prefix kernels/esrgan`);
}

const MODEL = 'gpunet/esrgan-x4';
const SCALE = 4;
// TILE is the side of the low-resolution tiles the network runs on, and
// CONTEXT the margin of real pixels around each. The network sees at most 10
// low-resolution pixels away (its 3×3 and 5×5 convolutions, chained), so with
// 12 a tile's output is the whole picture's there, byte for byte (checked:
// tiles of 32, 64 and 1000 gave one PNG). Tiles bound memory: before its last
// convolution the network holds 48 channels at the output's size, 800 MiB for
// a 512×512 input at once, about 70 MiB per tile of 128 with its margin; and
// the margin's recomputation costs little at 128 (a 64×64 input is one tile).
const TILE = 128;
const CONTEXT = 12;

function die(msg) {
  process.stderr.write(msg + '\n');
  process.exit(2);
}

class TaskError extends Error {}

async function loadModel() {
  // The weights are read from the package's files, not fetched: tfjs's
  // file:// loader needs its native Node backend, so the model is handed over
  // from memory.
  const dir = join(dirname(fileURLToPath(import.meta.url)), 'node_modules/@upscalerjs/esrgan-slim/models/x4');
  let json, bin;
  try {
    json = JSON.parse(readFileSync(join(dir, 'model.json'), 'utf8'));
    bin = readFileSync(join(dir, json.weightsManifest[0].paths[0]));
  } catch (e) {
    die(`esrgan: reading the x4 weights in ${dir}: ${e.message}; run: npm ci --prefix kernels/esrgan`);
  }
  const weightData = bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength);
  const model = await tfl.loadLayersModel(tf.io.fromMemory({
    modelTopology: json.modelTopology,
    weightSpecs: json.weightsManifest.flatMap((g) => g.weights),
    weightData,
  }));
  return model;
}

// inputImage decodes and checks the task's one input image.
function inputImage(task) {
  const imgs = task.input_images || [];
  if (task.mask_image) {
    throw new TaskError(`${MODEL} does not use a mask: send one input image and no mask`);
  }
  if (imgs.length === 0) {
    throw new TaskError(`${MODEL} upscales one input image; this task has none (use gpunet submit --upscale, or name the image in "inputs")`);
  }
  if (imgs.length !== 1) {
    throw new TaskError(`${MODEL} upscales exactly one input image; got ${imgs.length}`);
  }
  const bytes = Buffer.from(imgs[0], 'base64');
  if (bytes.length < 8 || bytes.readUInt32BE(0) !== 0x89504e47) {
    throw new TaskError(`${MODEL} reads PNG input only; convert the JPEG or WebP to PNG`);
  }
  let img;
  try {
    img = PNG.sync.read(bytes);
  } catch (e) {
    throw new TaskError(`decoding the input PNG: ${e.message}`);
  }
  for (let i = 3; i < img.data.length; i += 4) {
    if (img.data[i] !== 255) {
      throw new TaskError(`${MODEL} upscales opaque images; the input has transparent pixels (flatten it first)`);
    }
  }
  if (task.width !== SCALE * img.width || task.height !== SCALE * img.height) {
    throw new TaskError(`${MODEL} makes a picture exactly 4× its input: the input is ${img.width}x${img.height}, so the task must be ${SCALE * img.width}x${SCALE * img.height}, not ${task.width}x${task.height}`);
  }
  return img;
}

// upscale runs the network over img tile by tile and returns the 4× RGBA
// pixels. progress(k, n) is called after each tile.
function upscale(model, img, progress) {
  const { width: w, height: h } = img;
  const rgb = new Float32Array(w * h * 3);
  for (let p = 0, q = 0; p < w * h; p++) {
    // The RDN variant of esrgan-slim takes and gives pixel values 0…255
    // (UpscalerJS's inputRange and outputRange for it).
    rgb[q++] = img.data[p * 4];
    rgb[q++] = img.data[p * 4 + 1];
    rgb[q++] = img.data[p * 4 + 2];
  }
  const W = w * SCALE;
  const H = h * SCALE;
  const out = Buffer.alloc(W * H * 4);
  const cols = Math.ceil(w / TILE);
  const rows = Math.ceil(h / TILE);
  const n = cols * rows;
  const whole = tf.tensor3d(rgb, [h, w, 3]);
  try {
    for (let k = 0; k < n; k++) {
      const tx = (k % cols) * TILE;
      const ty = Math.floor(k / cols) * TILE;
      const tw = Math.min(TILE, w - tx);
      const th = Math.min(TILE, h - ty);
      // The tile with CONTEXT pixels of the real picture around it, where
      // there are any; at the picture's edge the network pads with zeros as
      // it would for the whole picture.
      const x0 = Math.max(0, tx - CONTEXT);
      const y0 = Math.max(0, ty - CONTEXT);
      const x1 = Math.min(w, tx + tw + CONTEXT);
      const y1 = Math.min(h, ty + th + CONTEXT);
      const sr = tf.tidy(() => {
        const patch = tf.expandDims(tf.slice(whole, [y0, x0, 0], [y1 - y0, x1 - x0, 3]), 0);
        const y = model.predict(patch);
        return tf.slice(y, [0, (ty - y0) * SCALE, (tx - x0) * SCALE, 0], [1, th * SCALE, tw * SCALE, 3]);
      });
      const v = sr.dataSync();
      sr.dispose();
      for (let yy = 0; yy < th * SCALE; yy++) {
        for (let xx = 0; xx < tw * SCALE; xx++) {
          const s = (yy * tw * SCALE + xx) * 3;
          const d = ((ty * SCALE + yy) * W + tx * SCALE + xx) * 4;
          for (let c = 0; c < 3; c++) {
            out[d + c] = Math.min(255, Math.max(0, Math.round(v[s + c])));
          }
          out[d + 3] = 255;
        }
      }
      progress(k + 1, n);
    }
  } finally {
    whole.dispose();
  }
  return { width: W, height: H, data: out };
}

function encode(img) {
  const png = new PNG({ width: img.width, height: img.height, colorType: 2, inputHasAlpha: true });
  img.data.copy(png.data);
  // A fixed zlib level and filter: the bytes, not only the pixels, are the
  // same on every run, as peers compare results by hash.
  return PNG.sync.write(png, { colorType: 2, inputHasAlpha: true, deflateLevel: 6, filterType: 4 });
}

function runTask(model, line, progress) {
  let task;
  try {
    task = JSON.parse(line);
  } catch (e) {
    throw new TaskError(`the task line is not JSON: ${e.message}`);
  }
  if (task.model !== MODEL) {
    throw new TaskError(`this generator serves ${MODEL}, not ${task.model}`);
  }
  if (task.params && Object.keys(task.params).length > 0) {
    throw new TaskError(`${MODEL} takes no params; got ${Object.keys(task.params).join(', ')}`);
  }
  const img = inputImage(task);
  const t0 = process.hrtime.bigint();
  const sr = upscale(model, img, progress);
  const png = encode(sr);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  process.stderr.write(`esrgan: ${img.width}x${img.height} -> ${sr.width}x${sr.height} in ${ms.toFixed(0)} ms (${png.length} bytes)\n`);
  return png;
}

async function main() {
  const serve = process.argv.includes('--serve');
  const t0 = process.hrtime.bigint();
  tf.setBackend('cpu');
  await tf.ready();
  const model = await loadModel();
  process.stderr.write(`esrgan: tfjs ${tf.version_core} backend ${tf.getBackend()}, model loaded in ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(0)} ms\n`);

  if (!serve) {
    const chunks = [];
    for await (const c of process.stdin) chunks.push(c);
    try {
      const png = runTask(model, Buffer.concat(chunks).toString('utf8'), (k, n) => process.stderr.write(`progress ${k} ${n}\n`));
      process.stdout.write(png);
    } catch (e) {
      die(`esrgan: ${e.message}`);
    }
    return;
  }

  // readline has no line-length limit: a task line with its input image in
  // base64 can be megabytes.
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (line.trim() === '') continue;
    let answer;
    try {
      const png = runTask(model, line, (k, n) => process.stdout.write(`progress ${k} ${n}\n`));
      answer = Buffer.concat([Buffer.from(`png ${png.length}\n`), png]);
    } catch (e) {
      if (!(e instanceof TaskError)) process.stderr.write(`esrgan: ${e.stack}\n`);
      const msg = String(e.message).replace(/[\r\n]+/g, ' ').slice(0, 900);
      answer = Buffer.from(`error ${msg}\n`);
    }
    // Wait for the answer to drain before reading the next task: stdout is a
    // pipe, and the host reads it while it waits.
    if (!process.stdout.write(answer)) {
      await new Promise((r) => process.stdout.once('drain', r));
    }
  }
}

await main();
