package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// testOpts are fast intervals for tests, logs through t.
func testOpts(t *testing.T, more ...Option) []Option {
	return append([]Option{
		WithHealthInterval(0),
		WithPollInterval(5 * time.Millisecond),
		WithRequestTimeout(5 * time.Second),
		WithLogger(slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))),
	}, more...)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pictureOf is a w×h test picture with a gradient, so it is not all one
// colour and scales visibly.
func pictureOf(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	return img
}

func pngOf(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, pictureOf(w, h)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func jpegOf(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, pictureOf(w, h), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// maskOf is a w×h PNG mask transparent in its left half: the part an
// edit may change.
func maskOf(t testing.TB, w, h int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			if x >= w/2 {
				img.Set(x, y, color.NRGBA{0, 0, 0, 255})
			}
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func pngSize(t testing.TB, b []byte) (int, int) {
	t.Helper()
	cfg, err := png.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	return cfg.Width, cfg.Height
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keysOf returns the top-level keys of a JSON object in testdata: the
// fields a project documents for a request.
func keysOf(t testing.TB, names ...string) map[string]bool {
	t.Helper()
	keys := map[string]bool{}
	for _, n := range names {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(readTestdata(t, n), &m); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		for k := range m {
			keys[k] = true
		}
	}
	return keys
}

func task(t testing.TB, tk protocol.Task) protocol.Task {
	t.Helper()
	n, err := tk.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// editTask is tk with in's images and mask as its inputs.
func editTask(t testing.TB, tk protocol.Task, in kernel.Inputs) protocol.Task {
	t.Helper()
	for _, b := range in.Images {
		tk.Inputs = append(tk.Inputs, protocol.Link{Cid: protocol.RawCID(b)})
	}
	if in.Mask != nil {
		tk.Mask = &protocol.Link{Cid: protocol.RawCID(in.Mask)}
	}
	return task(t, tk)
}

// recorder collects progress and previews, checking the kernel contract:
// steps ascending, previews PNGs within the task's size and cap.
type recorder struct {
	t        *testing.T
	task     protocol.Task
	mu       sync.Mutex
	steps    []int
	previews []int
}

func (r *recorder) progress(k, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n != int(r.task.Steps) {
		r.t.Errorf("progress total %d, the task has %d steps", n, r.task.Steps)
	}
	if len(r.steps) > 0 && k <= r.steps[len(r.steps)-1] {
		r.t.Errorf("progress went from %d to %d", r.steps[len(r.steps)-1], k)
	}
	r.steps = append(r.steps, k)
}

func (r *recorder) preview(k int, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(b) > protocol.MaxPreviewBytes {
		r.t.Errorf("preview of %d bytes", len(b))
	}
	w, h := pngSize(r.t, b)
	if w > int(r.task.Width) || h > int(r.task.Height) {
		r.t.Errorf("preview %dx%d larger than the task's %dx%d", w, h, r.task.Width, r.task.Height)
	}
	if len(r.previews) > 0 && k <= r.previews[len(r.previews)-1] {
		r.t.Errorf("preview steps went from %d to %d", r.previews[len(r.previews)-1], k)
	}
	r.previews = append(r.previews, k)
}

func (r *recorder) gotSteps() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.steps)
}

func (r *recorder) gotPreviews() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.previews)
}
