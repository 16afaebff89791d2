package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"path/filepath"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/spf13/cobra"

	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/protocol"
)

// `gpunet submit --upscale` is a two-task pipeline: the prompt's image, then
// that image ×4 by a trained network (kernels/esrgan, docs/kernels.md). The
// second task names the first one's output by CID; the host that upscales
// fetches the bytes from the node that received them (the daemon, or this
// command's p2p node), so the picture never passes through this process on
// its way there.
const (
	upscaleModel  = "gpunet/esrgan-x4"
	upscaleFactor = 4
	upscalePrompt = "upscale ×4"
	// upscaleSeed and upscaleSteps are fixed: the network has neither noise
	// nor steps, so the upscale of one picture is one task (one TaskCID, one
	// cache entry) for everyone who asks for it.
	upscaleSeed  = 1
	upscaleSteps = 1
)

// upscaleStep is one task of the pipeline in `submit --upscale --json`.
type upscaleStep struct {
	submitOutput
	Kernel string `json:"kernel"` // from the host's signed manifest
}

// upscaleOutput is what `submit --upscale --json` prints.
type upscaleOutput struct {
	Generate upscaleStep `json:"generate"`
	Upscale  upscaleStep `json:"upscale"`
}

// checkUpscaleSize refuses, before anything runs, a first task whose ×4
// would be over the protocol's largest side.
func checkUpscaleSize(t protocol.Task) error {
	if max(t.Width, t.Height)*upscaleFactor > protocol.MaxSide {
		return fmt.Errorf("--upscale: %dx%d ×%d would be %dx%d, over the largest side %d: use --size %dx%d or smaller",
			t.Width, t.Height, upscaleFactor, t.Width*upscaleFactor, t.Height*upscaleFactor, protocol.MaxSide,
			protocol.MaxSide/upscaleFactor, protocol.MaxSide/upscaleFactor)
	}
	return nil
}

// upscaleTask is the task that upscales s's one PNG output.
func upscaleTask(s *submitted) (protocol.Task, error) {
	outs := s.tr.Outputs
	if len(outs) != 1 || outs[0].MediaType != "image/png" {
		return protocol.Task{}, fmt.Errorf("--upscale: the first task gave %d outputs, want one PNG", len(outs))
	}
	c, err := cid.Decode(outs[0].CID)
	if err != nil {
		return protocol.Task{}, fmt.Errorf("--upscale: output CID %q: %w", outs[0].CID, err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(outs[0].Data))
	if err != nil {
		return protocol.Task{}, fmt.Errorf("--upscale: reading the first image: %w", err)
	}
	return protocol.Task{Model: upscaleModel, Prompt: upscalePrompt, Seed: upscaleSeed, Steps: upscaleSteps,
		Width: uint32(cfg.Width * upscaleFactor), Height: uint32(cfg.Height * upscaleFactor),
		Inputs: []protocol.Link{{Cid: c}}}.Normalize()
}

// checkResult checks a result against the manifest its host signed: the
// signature, the TaskCID, and each output's bytes against the CID signed
// for it. The node has checked the same; this command checks again because
// the next task names that CID and nothing else, and it returns the kernel
// that made the picture, which the pipeline reports.
func checkResult(tr *localapi.TaskResult) (*protocol.Manifest, error) {
	m, err := protocol.DecodeManifest(tr.Manifest)
	if err != nil {
		return nil, fmt.Errorf("result of task %s: %w", tr.TaskCID, err)
	}
	if m.TaskCID.String() != tr.TaskCID || len(m.Outputs) != len(tr.Outputs) {
		return nil, fmt.Errorf("result of task %s: its manifest is for task %s with %d outputs", tr.TaskCID, m.TaskCID, len(m.Outputs))
	}
	for i, o := range tr.Outputs {
		if err := protocol.VerifyBlock(m.Outputs[i].CID.Cid, o.Data); err != nil || o.CID != m.Outputs[i].CID.Cid.String() {
			return nil, fmt.Errorf("result of task %s: output %d does not match its manifest's CID %s", tr.TaskCID, i, m.Outputs[i].CID.Cid)
		}
	}
	return m, nil
}

// upscalePath is where the ×4 picture goes: FILE-x4.png beside -o FILE,
// else its own TASKCID.png.
func upscalePath(out string) string {
	if out == "" {
		return ""
	}
	return strings.TrimSuffix(out, filepath.Ext(out)) + "-x4.png"
}

// submitUpscale runs t, then the upscale of its picture, through one daemon
// or one p2p node, and writes both pictures.
func submitUpscale(ctx context.Context, cmd *cobra.Command, g *globals, f *submitFlags, t protocol.Task) error {
	n, err := t.Normalize()
	if err != nil {
		return err
	}
	if err := checkUpscaleSize(n); err != nil {
		return err
	}
	var first *submitted
	second, err := submit(ctx, cmd, g, f, t, func(s *submitted) (protocol.Task, error) {
		if _, err := checkResult(s.tr); err != nil {
			return protocol.Task{}, err
		}
		first = s
		return upscaleTask(s)
	})
	if err != nil {
		if first != nil {
			// The first picture is done and paid for: keep it.
			if _, werr := saveOutputs(f.out, first); werr == nil {
				return fmt.Errorf("upscaling (the first image is written): %w", err)
			}
		}
		return err
	}
	var out upscaleOutput
	for _, st := range []struct {
		step *upscaleStep
		s    *submitted
		path string
	}{{&out.Generate, first, f.out}, {&out.Upscale, second, upscalePath(f.out)}} {
		m, err := checkResult(st.s.tr)
		if err != nil {
			return err
		}
		if st.step.submitOutput, err = saveOutputs(st.path, st.s); err != nil {
			return err
		}
		st.step.Kernel = m.Kernel
	}
	if g.json {
		return printJSON(out)
	}
	for _, st := range []upscaleStep{out.Generate, out.Upscale} {
		printOutput(st.submitOutput)
	}
	return nil
}
