package main

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/kernel/backend"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
)

// esrganDir is where the demo looks for the upscaler (kernels/esrgan), from
// the repository root `go run ./cmd/gpunet demo` runs in.
const esrganDir = "kernels/esrgan"

// demoUpscaler starts the ESRGAN ×4 generator for the demo's first host
// when its packages are installed (`npm ci --prefix kernels/esrgan`); nil,
// with the reason, when they are not, so the demo runs without it.
func demoUpscaler(ctx context.Context) (*kernel.Command, string) {
	weights := filepath.Join(esrganDir, "node_modules", "@upscalerjs", "esrgan-slim", "models", "x4", "model.json")
	if _, err := os.Stat(weights); err != nil {
		return nil, "the upscaler's packages are not installed (npm ci --prefix " + esrganDir + ")"
	}
	c, err := kernel.NewCommand("cmd:esrgan-x4-v1", []string{upscaleModel},
		[]string{"node", filepath.Join(esrganDir, "serve.mjs"), "--serve"}, kernel.WithCommandServe(1), kernel.WithCommandCheckInput())
	if err == nil {
		if err = c.Check(ctx); err != nil {
			_ = c.Close()
		}
	}
	if err != nil {
		return nil, "the upscaler did not start: " + strings.Join(strings.Fields(err.Error()), " ")
	}
	return c, ""
}

// demoHostKernel is host i's kernel: the sketch kernel, and on host 0 the
// upscaler beside it when there is one.
func demoHostKernel(esr *kernel.Command) func(int) kernel.Kernel {
	return func(i int) kernel.Kernel {
		if i == 0 && esr != nil {
			return backend.NewMulti(kernel.Sketch{}, esr)
		}
		return kernel.Sketch{}
	}
}

// demoPipelineSide is the side of the pipeline's first image: the
// upscaler runs on the CPU (TensorFlow.js), about 3 s for 64×64 → 256×256
// on this project's test machines and growing with the pixels, so the
// demo upscales a small picture of its own rather than a full-size one.
const demoPipelineSide = 96

// demoUpscale runs a two-task pipeline on client c: a small image of
// prompt, then that image ×4, whose input is named by the first result's
// output CID and fetched by the upscaling host from c, which holds it.
func demoUpscale(ctx context.Context, c *node.Node, prompt, dir string, steps uint32) (*demoTask, error) {
	first, err := c.Submit(ctx, protocol.Task{Prompt: prompt, Width: demoPipelineSide, Height: demoPipelineSide, Steps: steps}, node.SubmitOptions{})
	if err != nil {
		return nil, err
	}
	small := filepath.Join(dir, "00-pipeline-"+slug(prompt)+".png")
	if err := os.WriteFile(small, first.Blocks[0], 0o644); err != nil {
		return nil, err
	}
	o := first.Manifest.Outputs[0]
	t := protocol.Task{Model: upscaleModel, Prompt: upscalePrompt, Seed: upscaleSeed, Steps: upscaleSteps,
		Width: demoPipelineSide * upscaleFactor, Height: demoPipelineSide * upscaleFactor, Inputs: []protocol.Link{o.CID}}
	res, err := c.Submit(ctx, t, node.SubmitOptions{})
	if err != nil {
		return nil, err
	}
	dt := &demoTask{Prompt: prompt + " (×4, ESRGAN)", TaskCID: res.TaskCID.String(), ResultCID: res.ResultCID.String(),
		Host: res.Host.String(), Cache: res.Cache, ElapsedMs: math.Round(float64(res.Elapsed.Microseconds())/100) / 10,
		Path: strings.TrimSuffix(small, ".png") + "-x4.png"}
	if err := os.WriteFile(dt.Path, res.Blocks[0], 0o644); err != nil {
		return nil, err
	}
	return dt, nil
}
