package main

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/gpunet/gpunet/protocol"
)

// esrganGenerator returns the argv of kernels/esrgan's generator in serve
// mode. It fails the test, never skips it, when the generator cannot run:
// a test that skips would pass on a machine where the model is broken.
func esrganGenerator(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "kernels", "esrgan"))
	if err != nil {
		t.Fatal(err)
	}
	weights := filepath.Join(dir, "node_modules", "@upscalerjs", "esrgan-slim", "models", "x4", "model.json")
	if _, err := os.Stat(weights); err != nil {
		t.Fatalf("the ESRGAN generator's packages are not installed (%v): run `npm ci --prefix kernels/esrgan` in the repository root (needs Node.js 18 or later and npm)", err)
	}
	nodeJS, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found (%v): the ESRGAN generator runs on Node.js 18 or later; install it, then `npm ci --prefix kernels/esrgan`", err)
	}
	return nodeJS + " " + filepath.Join(dir, "serve.mjs") + " --serve"
}

// TestUpscalePipelineProcesses runs `gpunet submit --upscale` through a
// daemon C, with a sketch host A and a host B whose kernel is the trained
// ESRGAN ×4 network (kernels/esrgan) behind the serve-mode contract: A
// paints, B upscales A's picture, which it fetches by CID from C.
func TestUpscalePipelineProcesses(t *testing.T) {
	gen := esrganGenerator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, aProc := startPeerProcess(t, "host", t.TempDir(), "--gpu", "sim:rtx3060")
	b := startHostProcess(t, t.TempDir(), "--kernel", "cmd", "--kernel-serve", "--kernel-cmd", gen,
		"--kernel-models", upscaleModel, "--kernel-name", "cmd:esrgan-x4-v1", "--kernel-check-input")
	c, _ := startPeerProcess(t, "daemon", t.TempDir(), "--bootstrap", a.Addrs[0]+","+b.Addrs[0])
	dir := t.TempDir()
	pipeline := func(prompt, file string, extra ...string) upscaleOutput {
		t.Helper()
		var r upscaleOutput
		runJSON(t, ctx, &r, append([]string{"submit", prompt, "--api", c.API, "--json", "--size", "64x64", "--steps", "4",
			"--upscale", "-o", filepath.Join(dir, file)}, extra...)...)
		return r
	}
	kernelRuns := func(api string) uint64 {
		var st struct {
			KernelRuns uint64 `json:"kernel_runs"`
		}
		runJSON(t, ctx, &st, "status", "--api", api, "--json")
		return st.KernelRuns
	}

	start := time.Now()
	r := pipeline("a quiet harbour at dusk", "harbour.png")
	t.Logf("generate 64x64 on A, then upscale to 256x256 on B: %s", time.Since(start).Round(time.Millisecond))
	g, u := r.Generate, r.Upscale
	if g.Via != "daemon" || g.Cache != "miss" || g.Host != a.PeerID || g.Kernel != "sketch-v1" {
		t.Errorf("generation: via %q cache %q host %s kernel %q; want daemon, miss, A (%s), sketch-v1", g.Via, g.Cache, g.Host, g.Kernel, a.PeerID)
	}
	if u.Cache != "miss" || u.Host != b.PeerID || u.Kernel != "cmd:esrgan-x4-v1" {
		t.Errorf("upscale: cache %q host %s kernel %q; want miss, B (%s), cmd:esrgan-x4-v1", u.Cache, u.Host, u.Kernel, b.PeerID)
	}
	small, _ := readOutput(t, g.submitOutput, 64)
	big, bigData := readOutput(t, u.submitOutput, 256)

	// The upscale task names the first picture by its CID, and nothing else
	// of it: that is the task B ran.
	in, err := cid.Decode(g.Outputs[0].CID)
	if err != nil {
		t.Fatal(err)
	}
	want, err := protocol.Task{Model: upscaleModel, Prompt: upscalePrompt, Seed: upscaleSeed, Steps: upscaleSteps,
		Width: 256, Height: 256, Inputs: []protocol.Link{{Cid: in}}}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	if wc, _ := want.CID(); wc.String() != u.TaskCID {
		t.Errorf("upscale task %s, want %s (the first output by CID)", u.TaskCID, wc)
	}

	// The trained network, not a resize: close to the picture (it is its
	// upscale) but not any plain interpolation of it.
	dNearest, dBilinear := meanAbsDiff(big, nearest4(small)), meanAbsDiff(big, bilinear4(small))
	t.Logf("mean |ESRGAN − nearest| %.2f, |ESRGAN − bilinear| %.2f (levels of 255)", dNearest, dBilinear)
	if dNearest < 1 || dBilinear < 1 {
		t.Errorf("the upscale is within %.2f/%.2f levels of a nearest/bilinear resize: not the network's output", dNearest, dBilinear)
	}
	if dBilinear > 30 {
		t.Errorf("the upscale is %.2f levels from the input resized: not a picture of the input", dBilinear)
	}

	// Same input, same bytes: B computes it again.
	again := pipeline("a quiet harbour at dusk", "again.png", "--no-cache")
	if _, b2 := readOutput(t, again.Upscale.submitOutput, 256); !bytes.Equal(b2, bigData) || again.Upscale.Host != b.PeerID {
		t.Errorf("the upscale computed again on %s differs from the first (%s vs %s)", again.Upscale.Host, again.Upscale.Outputs[0].CID, u.Outputs[0].CID)
	}
	runsB := kernelRuns(b.API)
	// A repeat is a cache hit for both tasks, on C.
	hit := pipeline("a quiet harbour at dusk", "hit.png")
	if hit.Generate.Cache != "local" || hit.Upscale.Cache != "local" || hit.Upscale.Outputs[0].CID != u.Outputs[0].CID {
		t.Errorf("repeat: caches %q, %q, output %s; want local, local, %s", hit.Generate.Cache, hit.Upscale.Cache, hit.Upscale.Outputs[0].CID, u.Outputs[0].CID)
	}
	if n := kernelRuns(b.API); n != runsB {
		t.Errorf("B ran its kernel %d times for a cache hit", n-runsB)
	}

	// Without a daemon the command's own p2p node holds the first picture
	// for B to fetch.
	var p2p upscaleOutput
	runJSON(t, ctx, &p2p, "submit", "a red fox in fresh snow", "--p2p", "--mdns=false", "--bootstrap", a.Addrs[0]+","+b.Addrs[0],
		"--json", "--size", "64x64", "--steps", "4", "--upscale", "-o", filepath.Join(dir, "fox.png"))
	if p2p.Generate.Via != "p2p" || p2p.Generate.Host != a.PeerID || p2p.Upscale.Host != b.PeerID || p2p.Upscale.Cache != "miss" {
		t.Errorf("p2p pipeline: via %q, hosts %s and %s, upscale cache %q; want p2p, A, B, miss", p2p.Generate.Via, p2p.Generate.Host, p2p.Upscale.Host, p2p.Upscale.Cache)
	}
	readOutput(t, p2p.Upscale.submitOutput, 256)

	// The input travels host ← submitter: with A, which painted it,
	// stopped, B gets a picture only C holds.
	var other submitJSON
	runJSON(t, ctx, &other, "submit", "sunflowers in a summer field", "--api", c.API, "--json", "--size", "64x64", "--steps", "4",
		"-o", filepath.Join(dir, "sunflowers.png"))
	if err := aProc.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = aProc.Process.Signal(syscall.SIGCONT) }()
	r = pipeline("sunflowers in a summer field", "sunflowers.png")
	if r.Generate.Cache != "local" || r.Upscale.Cache != "miss" || r.Upscale.Host != b.PeerID || r.Generate.Outputs[0].CID != other.Outputs[0].CID {
		t.Errorf("with A stopped: generation cache %q, upscale cache %q on %s; want local, then miss on B", r.Generate.Cache, r.Upscale.Cache, r.Upscale.Host)
	}
	readOutput(t, r.Upscale.submitOutput, 256)
}

// readOutput reads a result's one file, checks its bytes against its CID,
// and decodes it as a side × side PNG.
func readOutput(t *testing.T, s submitOutput, side int) (image.Image, []byte) {
	t.Helper()
	if len(s.Outputs) != 1 {
		t.Fatalf("task %s: %d outputs", s.TaskCID, len(s.Outputs))
	}
	data, err := os.ReadFile(s.Outputs[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cid.Decode(s.Outputs[0].CID)
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.VerifyBlock(c, data); err != nil {
		t.Fatalf("%s does not match its CID %s: %v", s.Outputs[0].Path, c, err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: %v", s.Outputs[0].Path, err)
	}
	if b := img.Bounds(); b.Dx() != side || b.Dy() != side {
		t.Fatalf("%s is %dx%d, want %dx%d", s.Outputs[0].Path, b.Dx(), b.Dy(), side, side)
	}
	return img, data
}

// rgb is a picture's 8-bit RGB channels, row by row.
type rgb struct {
	w, h int
	pix  []float64
}

func toRGB(img image.Image) rgb {
	b := img.Bounds()
	p := rgb{w: b.Dx(), h: b.Dy(), pix: make([]float64, 0, 3*b.Dx()*b.Dy())}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			p.pix = append(p.pix, float64(r>>8), float64(g>>8), float64(bl>>8))
		}
	}
	return p
}

func (p rgb) at(x, y, c int) float64 {
	x, y = min(max(x, 0), p.w-1), min(max(y, 0), p.h-1)
	return p.pix[3*(y*p.w+x)+c]
}

// nearest4 is img ×4 by repeating pixels.
func nearest4(img image.Image) rgb {
	s := toRGB(img)
	o := rgb{w: 4 * s.w, h: 4 * s.h, pix: make([]float64, 0, 48*s.w*s.h)}
	for y := range o.h {
		for x := range o.w {
			for c := range 3 {
				o.pix = append(o.pix, s.at(x/4, y/4, c))
			}
		}
	}
	return o
}

// bilinear4 is img ×4 by bilinear interpolation between pixel centres.
func bilinear4(img image.Image) rgb {
	s := toRGB(img)
	o := rgb{w: 4 * s.w, h: 4 * s.h, pix: make([]float64, 0, 48*s.w*s.h)}
	for y := range o.h {
		sy := (float64(y)+0.5)/4 - 0.5
		y0 := int(sy+1) - 1 // floor, also below 0
		fy := sy - float64(y0)
		for x := range o.w {
			sx := (float64(x)+0.5)/4 - 0.5
			x0 := int(sx+1) - 1
			fx := sx - float64(x0)
			for c := range 3 {
				top := s.at(x0, y0, c)*(1-fx) + s.at(x0+1, y0, c)*fx
				bot := s.at(x0, y0+1, c)*(1-fx) + s.at(x0+1, y0+1, c)*fx
				o.pix = append(o.pix, top*(1-fy)+bot*fy)
			}
		}
	}
	return o
}

// meanAbsDiff is the mean absolute difference of img and p per channel, in
// 8-bit levels.
func meanAbsDiff(img image.Image, p rgb) float64 {
	q := toRGB(img)
	var sum float64
	for i := range q.pix {
		d := q.pix[i] - p.pix[i]
		if d < 0 {
			d = -d
		}
		sum += d
	}
	return sum / float64(len(q.pix))
}
