package kernel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"image"
	"image/png"
	"sync"
	"testing"

	"github.com/gpunet/gpunet/protocol"
)

func sketchTask(t testing.TB, prompt, negative string, seed uint64, w, h, steps uint32) protocol.Task {
	t.Helper()
	task, err := protocol.Task{Prompt: prompt, NegativePrompt: negative, Seed: seed, Width: w, Height: h, Steps: steps}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func runSketch(t testing.TB, task protocol.Task) []byte {
	t.Helper()
	out, err := Sketch{}.Run(context.Background(), task, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].MediaType != "image/png" {
		t.Fatalf("outputs %d, media type %q: want one image/png", len(out), out[0].MediaType)
	}
	return out[0].Data
}

func decodePNG(t testing.TB, b []byte) *image.RGBA {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("decoding png: %v", err)
	}
	r := image.NewRGBA(img.Bounds())
	for y := r.Rect.Min.Y; y < r.Rect.Max.Y; y++ {
		for x := r.Rect.Min.X; x < r.Rect.Max.X; x++ {
			r.Set(x, y, img.At(x, y))
		}
	}
	return r
}

func TestSketchIdentity(t *testing.T) {
	k := Sketch{}
	if k.Name() != "sketch-v1" {
		t.Errorf("Name = %q", k.Name())
	}
	if m := k.Models(); len(m) != 1 || m[0] != protocol.DefaultModel {
		t.Errorf("Models = %v, want [%s]", m, protocol.DefaultModel)
	}
}

// Hosts run tasks concurrently and peers compare outputs by hash, so runs of
// one task, in parallel, must agree to the byte.
func TestSketchDeterministic(t *testing.T) {
	task := sketchTask(t, "a harbour at dusk with boats", "fog", 7, 192, 128, 6)
	const n = 4
	outs := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			o, err := Sketch{}.Run(context.Background(), task, nil)
			if err != nil {
				t.Error(err)
				return
			}
			outs[i] = o[0].Data
		})
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if !bytes.Equal(outs[0], outs[i]) {
			t.Fatalf("run %d differs from run 0", i)
		}
	}
}

// sketchGolden pins the pixels of one task. If this fails after a change to
// the kernel, the kernel now draws something else for the same task: bump
// SketchName's version (manifests record it) and update the hash.
const sketchGolden = "df5352889505d2c144531c1e36e9c0b4556662959bf8d3e3ba82d151fa760fe2"

func TestSketchGoldenPixels(t *testing.T) {
	task := sketchTask(t, "snowy mountains and a forest by a lake at night", "", 1234, 256, 192, 8)
	img := decodePNG(t, runSketch(t, task))
	sum := sha256.Sum256(img.Pix)
	if got := hex.EncodeToString(sum[:]); got != sketchGolden {
		t.Errorf("pixel hash %s, want %s", got, sketchGolden)
	}
}

func TestSketchInputsChangeBytes(t *testing.T) {
	base := sketchTask(t, "a harbour at dusk", "", 1, 128, 128, 4)
	variants := map[string]protocol.Task{"base": base}
	mod := func(name string, f func(*protocol.Task)) {
		v := base
		f(&v)
		variants[name] = v
	}
	mod("seed", func(v *protocol.Task) { v.Seed = 2 })
	mod("prompt", func(v *protocol.Task) { v.Prompt = "a forest at dusk" })
	// "the" is a stop word: the scene is the same, the bytes must not be.
	mod("stop word", func(v *protocol.Task) { v.Prompt = "the harbour at dusk" })
	mod("negative", func(v *protocol.Task) { v.NegativePrompt = "boats" })
	mod("steps", func(v *protocol.Task) { v.Steps = 5 })
	seen := map[[32]byte]string{}
	for _, name := range []string{"base", "seed", "prompt", "stop word", "negative", "steps"} {
		sum := sha256.Sum256(runSketch(t, variants[name]))
		if other, ok := seen[sum]; ok {
			t.Errorf("%s gives the same bytes as %s", name, other)
		}
		seen[sum] = name
	}
}

// diffShare is the share of pixels where some channel differs by more than
// 40 of 255: a change a person sees.
func diffShare(a, b *image.RGBA) float64 {
	n := 0
	for i := 0; i < len(a.Pix); i += 4 {
		for c := range 3 {
			d := int(a.Pix[i+c]) - int(b.Pix[i+c])
			if d > 40 || d < -40 {
				n++
				break
			}
		}
	}
	return float64(n) / float64(len(a.Pix)/4)
}

func TestSketchWordsChangePicture(t *testing.T) {
	tests := []struct {
		name     string
		a, b     [2]string // prompt, negative
		minShare float64
	}{
		{"theme word", [2]string{"a harbour at dusk", ""}, [2]string{"a forest at dusk", ""}, 0.25},
		{"hour", [2]string{"a lake at noon", ""}, [2]string{"a lake at night", ""}, 0.5},
		{"unknown word", [2]string{"hills", ""}, [2]string{"hills zebra quantum cathedral", ""}, 0.01},
		{"negative removes", [2]string{"mountains at dusk", ""}, [2]string{"mountains at dusk", "mountains"}, 0.05},
		{"negative sun", [2]string{"sea at sunset", ""}, [2]string{"sea at sunset", "sun"}, 0.02},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := decodePNG(t, runSketch(t, sketchTask(t, tt.a[0], tt.a[1], 99, 160, 160, 4)))
			b := decodePNG(t, runSketch(t, sketchTask(t, tt.b[0], tt.b[1], 99, 160, 160, 4)))
			if s := diffShare(a, b); s < tt.minShare {
				t.Errorf("%.1f%% of pixels visibly differ, want at least %.1f%%", 100*s, 100*tt.minShare)
			}
		})
	}
}

func TestSketchPNG(t *testing.T) {
	for _, size := range [][2]uint32{{64, 64}, {320, 192}, {136, 400}} {
		img := decodePNG(t, runSketch(t, sketchTask(t, "mountains by the sea", "", 5, size[0], size[1], 2)))
		if b := img.Bounds(); b.Dx() != int(size[0]) || b.Dy() != int(size[1]) {
			t.Errorf("image is %dx%d, want %dx%d", b.Dx(), b.Dy(), size[0], size[1])
		}
	}
}

// A picture, not a flat fill or a gradient: many colours (a night scene has
// fewer, so the bar is modest), and no colour
// covering most of it.
func TestSketchNotUniform(t *testing.T) {
	for _, prompt := range []string{"a harbour at dusk", "x", "forest at night"} {
		img := decodePNG(t, runSketch(t, sketchTask(t, prompt, "", 3, 256, 256, 20)))
		count := map[[3]uint8]int{}
		for i := 0; i < len(img.Pix); i += 4 {
			count[[3]uint8{img.Pix[i], img.Pix[i+1], img.Pix[i+2]}]++
		}
		top := 0
		for _, c := range count {
			top = max(top, c)
		}
		if len(count) < 800 {
			t.Errorf("%q: %d distinct colours, want at least 800", prompt, len(count))
		}
		if top > len(img.Pix)/4/10 {
			t.Errorf("%q: one colour covers %d of %d pixels", prompt, top, len(img.Pix)/4)
		}
	}
}

func TestSketchProgress(t *testing.T) {
	task := sketchTask(t, "dawn", "", 1, 64, 64, 7)
	var got []int
	_, err := Sketch{}.Run(context.Background(), task, func(step, total int) {
		if total != 7 {
			t.Errorf("total %d, want 7", total)
		}
		got = append(got, step)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 7 {
		t.Fatalf("progress called %d times, want 7", len(got))
	}
	for i, s := range got {
		if s != i+1 {
			t.Fatalf("progress steps %v, want 1..7 in order", got)
		}
	}
}

// Cancellation is seen at the next step: no step runs after the one that
// cancelled.
func TestSketchCancel(t *testing.T) {
	task := sketchTask(t, "a harbour at dusk", "", 1, 256, 256, 50)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	out, err := Sketch{}.Run(ctx, task, func(step, total int) {
		calls++
		if step == 2 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || out != nil {
		t.Fatalf("Run = %v, %v; want nil, context.Canceled", out, err)
	}
	if calls != 2 {
		t.Errorf("%d steps ran, want 2", calls)
	}

	calls = 0
	if _, err := (Sketch{}).Run(ctx, task, func(int, int) { calls++ }); !errors.Is(err, context.Canceled) || calls != 0 {
		t.Errorf("cancelled before start: err %v after %d steps", err, calls)
	}
}

func TestSketchRejects(t *testing.T) {
	good := sketchTask(t, "hills", "", 1, 64, 64, 1)
	tests := map[string]func(*protocol.Task){
		"other model":    func(v *protocol.Task) { v.Model = "gpunet/other" },
		"not normalised": func(v *protocol.Task) { v.Prompt = "  hills  " },
		"no seed":        func(v *protocol.Task) { v.Seed = 0 },
		"too big":        func(v *protocol.Task) { v.Width = 1 << 20 },
	}
	for name, f := range tests {
		v := good
		f(&v)
		if _, err := (Sketch{}).Run(context.Background(), v, nil); !errors.Is(err, protocol.ErrBadTask) {
			t.Errorf("%s: err %v, want ErrBadTask", name, err)
		}
	}
}

func TestMakePlan(t *testing.T) {
	tests := []struct {
		prompt, negative string
		has, hasNot      feature
		tod              timeOfDay
		elems            int
	}{
		{"a harbour at dusk", "", fWater | fCity | fBoats | fSun, 0, todDusk, 0},
		{"a harbour at dusk", "boats", fWater | fCity, fBoats, todDusk, 0},
		{"a harbour at dusk", "sun", fWater, fSun, todDusk, 0},
		{"Forest at NIGHT", "", fForest | fMoon | fStars, fSun, todNight, 0},
		{"forest at night", "moon", fForest | fStars, fMoon, todNight, 0},
		{"mountains, trees", "", fMountains | fForest, fHills, 0, 0}, // plurals
		{"zebra quantum", "", fHills, 0, 0, 2},                       // ground added
		{"zebra quantum", "zebra", fHills, 0, 0, 1},
		{"volcano", "fire", fMountains, fFire, todDusk, 0},
		{"sunset", "dusk", 0, 0, 0, 0}, // the hour the prompt asks for is ruled out
	}
	for _, tt := range tests {
		p := makePlan(tt.prompt, tt.negative, 42)
		if p.f&tt.has != tt.has || p.f&tt.hasNot != 0 {
			t.Errorf("%q -%q: features %b, want %b set and %b clear", tt.prompt, tt.negative, p.f, tt.has, tt.hasNot)
		}
		if tt.tod != todUnset && p.tod != tt.tod {
			t.Errorf("%q -%q: hour %d, want %d", tt.prompt, tt.negative, p.tod, tt.tod)
		}
		if p.tod == todUnset || (tt.negative == "dusk" && p.tod == todDusk) {
			t.Errorf("%q -%q: hour %d", tt.prompt, tt.negative, p.tod)
		}
		if len(p.elems) != tt.elems {
			t.Errorf("%q -%q: %d word elements, want %d", tt.prompt, tt.negative, len(p.elems), tt.elems)
		}
	}
}

func TestNoise1Range(t *testing.T) {
	for _, cell := range []int{1, 3, 64} {
		prev := noise1(9, -500, cell)
		for x := -500; x < 500; x++ {
			v := noise1(9, x, cell)
			if v < 0 || v > 1023 {
				t.Fatalf("noise1(%d, cell %d) = %d, outside 0..1023", x, cell, v)
			}
			// Continuous: one pixel never jumps more than the steepest
			// smoothstep slope allows (1.5 × 1023 / cell, plus rounding).
			if d := abs32(v - prev); cell > 1 && d > 1535/int32(cell)+2 {
				t.Fatalf("noise1 jumps %d at x=%d (cell %d)", d, x, cell)
			}
			prev = v
		}
	}
}

func TestNoop(t *testing.T) {
	task := func(prompt string) protocol.Task {
		v, err := protocol.Task{Model: NoopModel, Prompt: prompt, Seed: 1}.Normalize()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	k := Noop{}
	if k.Name() != "noop-v1" || len(k.Models()) != 1 || k.Models()[0] != "gpunet/noop" {
		t.Fatalf("Noop is %s serving %v", k.Name(), k.Models())
	}
	var steps [][2]int
	a, err := k.Run(context.Background(), task("a"), func(s, n int) { steps = append(steps, [2]int{s, n}) })
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 1 || len(a[0].Data) != 8 {
		t.Fatalf("outputs %+v, want one of 8 bytes", a)
	}
	if len(steps) != 1 || steps[0] != [2]int{1, 1} {
		t.Errorf("progress %v, want [[1 1]]", steps)
	}
	again, _ := k.Run(context.Background(), task("a"), nil)
	other, _ := k.Run(context.Background(), task("b"), nil)
	if !bytes.Equal(a[0].Data, again[0].Data) || bytes.Equal(a[0].Data, other[0].Data) {
		t.Errorf("same task %x/%x, other task %x: want equal, then different", a[0].Data, again[0].Data, other[0].Data)
	}
	if _, err := k.Run(context.Background(), sketchTask(t, "a", "", 1, 64, 64, 1), nil); !errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("sketch task: err %v, want ErrBadTask", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := k.Run(ctx, task("a"), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err %v", err)
	}
}
