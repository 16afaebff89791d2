package backend

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"image/png"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// fakeA1111 answers as AUTOMATIC1111's API does (modules/api/api.py), from
// the shapes in testdata/a1111: it runs a job step by step, reports it on
// /sdapi/v1/progress with a live preview, and stops at /interrupt.
type fakeA1111 struct {
	t   *testing.T
	srv *httptest.Server

	stepDelay time.Duration
	// answer, when set, replaces the generation's answer.
	answer func(w http.ResponseWriter, req map[string]any)
	// down makes every route answer 503.
	down bool

	mu          sync.Mutex
	bodies      []map[string]any // generation bodies
	paths       []string         // generation paths
	options     []string         // checkpoints set through /options
	interrupted bool
	step, steps int
	jobs        int
	started     chan struct{} // closed when the first job's first step ran
	startOnce   sync.Once
}

func newFakeA1111(t *testing.T) *fakeA1111 {
	f := &fakeA1111{t: t, stepDelay: 5 * time.Millisecond, started: make(chan struct{})}
	known := keysOf(t, "a1111/txt2img-request.json", "a1111/img2img-request.json")
	models := readTestdata(t, "a1111/sd-models.json")
	var titles []string
	var ms []a1111Model
	if err := json.Unmarshal(models, &ms); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		titles = append(titles, m.Title)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sdapi/v1/sd-models", func(w http.ResponseWriter, r *http.Request) {
		if f.isDown(w) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(models)
	})
	mux.HandleFunc("POST /sdapi/v1/options", func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), 422)
			return
		}
		ck, _ := req["sd_model_checkpoint"].(string)
		if !slices.Contains(titles, ck) {
			// set_config raises RuntimeError: a 500 through handle_exception.
			writeJSONT(w, 500, map[string]string{"error": "RuntimeError", "detail": "", "body": "", "errors": "model " + ck + " not found"})
			return
		}
		f.mu.Lock()
		f.options = append(f.options, ck)
		f.mu.Unlock()
		writeJSONT(w, 200, nil)
	})
	gen := func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSONT(w, 422, map[string]any{"detail": err.Error()})
			return
		}
		for k := range req {
			if !known[k] {
				t.Errorf("%s: field %q is not in the documented request (testdata/a1111)", r.URL.Path, k)
			}
		}
		f.mu.Lock()
		f.bodies = append(f.bodies, req)
		f.paths = append(f.paths, r.URL.Path)
		f.interrupted = false
		f.jobs = 1
		f.steps = int(req["steps"].(float64))
		if s, ok := req["denoising_strength"].(float64); ok {
			f.steps = int(float64(f.steps) * s) // as A1111's img2img
		}
		started := f.started
		f.mu.Unlock()
		if f.answer != nil {
			f.answer(w, req)
			return
		}
		for i := 1; i <= f.steps; i++ {
			f.mu.Lock()
			f.step = i
			stop := f.interrupted
			f.mu.Unlock()
			if i == 1 {
				f.startOnce.Do(func() { close(started) })
			}
			if stop {
				break
			}
			select {
			case <-time.After(f.stepDelay):
			case <-r.Context().Done():
				return // the client went away
			}
		}
		f.mu.Lock()
		f.jobs = 0
		f.mu.Unlock()
		wd, ht := int(req["width"].(float64)), int(req["height"].(float64))
		writeJSONT(w, 200, map[string]any{
			"images":     []string{base64.StdEncoding.EncodeToString(pngOf(t, wd, ht))},
			"parameters": req, "info": "{}",
		})
	}
	mux.HandleFunc("POST /sdapi/v1/txt2img", gen)
	mux.HandleFunc("POST /sdapi/v1/img2img", gen)
	mux.HandleFunc("GET /sdapi/v1/progress", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.jobs == 0 {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(readTestdata(t, "a1111/progress-idle.json"))
			return
		}
		var p map[string]any
		_ = json.Unmarshal(readTestdata(t, "a1111/progress-running.json"), &p)
		st := p["state"].(map[string]any)
		st["sampling_step"], st["sampling_steps"], st["interrupted"] = f.step, f.steps, f.interrupted
		p["progress"] = 0.01 + float64(f.step)/float64(f.steps)
		p["current_image"] = nil
		if r.URL.Query().Get("skip_current_image") != "true" {
			// live_previews_image_format jpeg, at the model's latent
			// preview size.
			p["current_image"] = base64.StdEncoding.EncodeToString(jpegOf(t, 256, 256))
		}
		writeJSONT(w, 200, p)
	})
	mux.HandleFunc("POST /sdapi/v1/interrupt", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.interrupted = true
		f.mu.Unlock()
		writeJSONT(w, 200, map[string]any{})
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeA1111) isDown(w http.ResponseWriter) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		http.Error(w, "Service Unavailable", 503)
	}
	return f.down
}

func (f *fakeA1111) body(i int) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i >= len(f.bodies) {
		f.t.Fatalf("the fake saw %d generation requests, want at least %d", len(f.bodies), i+1)
	}
	return f.bodies[i]
}

func writeJSONT(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func newA1111T(t *testing.T, f *fakeA1111, opts ...Option) *A1111 {
	a, err := NewA1111(ctxT(t), f.srv.URL, testOpts(t, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func TestA1111Models(t *testing.T) {
	a := newA1111T(t, newFakeA1111(t))
	want := []string{"a1111/dreamshaper_8", "a1111/sdxl_sd_xl_base_1.0", "a1111/v1-5-pruned-emaonly"}
	if got := a.Models(); !slices.Equal(got, want) {
		t.Errorf("Models() = %v, want %v", got, want)
	}
	d := a.ModelDigests()
	if d["a1111/v1-5-pruned-emaonly"] != "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa" || len(d) != 2 {
		t.Errorf("ModelDigests() = %v: want the two sha256 A1111 reports, none for the unhashed one", d)
	}
	if a.Name() != "a1111-v1" {
		t.Errorf("Name() = %q", a.Name())
	}
}

func TestA1111Txt2Img(t *testing.T) {
	f := newFakeA1111(t)
	a := newA1111T(t, f)
	tk := task(t, protocol.Task{
		Model: "a1111/sdxl_sd_xl_base_1.0", Prompt: "a quiet harbour at dusk", NegativePrompt: "blurry",
		Seed: protocol.MaxSeed, Steps: 40, Width: 512, Height: 768,
		Params: map[string]string{"sampler": "Euler a", "cfg": "6.5", "scheduler": "karras"},
	})
	rec := &recorder{t: t, task: tk}
	out, err := a.RunWithPreviews(ctxT(t), tk, rec.progress, []int{10, 20, 30}, rec.preview)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].MediaType != "image/png" {
		t.Fatalf("outputs %v", out)
	}
	if w, h := pngSize(t, out[0].Data); w != 512 || h != 768 {
		t.Errorf("output %dx%d", w, h)
	}
	b := f.body(0)
	want := map[string]any{
		"prompt": "a quiet harbour at dusk", "negative_prompt": "blurry",
		"seed": float64(protocol.MaxSeed), "steps": 40.0, "width": 512.0, "height": 768.0,
		"sampler_name": "Euler a", "scheduler": "karras", "cfg_scale": 6.5, "batch_size": 1.0, "n_iter": 1.0,
		"send_images": true, "override_settings_restore_afterwards": false,
	}
	for k, v := range want {
		if b[k] != v {
			t.Errorf("request %s = %v, want %v", k, b[k], v)
		}
	}
	// The seed must arrive exactly: 2^53-1 is the largest a float64
	// JSON number carries.
	if s := b["seed"].(float64); s != math.Pow(2, 53)-1 {
		t.Errorf("seed %v", s)
	}
	title := "SDXL/sd_xl_base_1.0.safetensors [31e35c80fc]"
	if ck := b["override_settings"].(map[string]any)["sd_model_checkpoint"]; ck != title {
		t.Errorf("override_settings.sd_model_checkpoint = %v", ck)
	}
	if !slices.Equal(f.options, []string{title}) {
		t.Errorf("checkpoints set through /options: %v, want %q", f.options, title)
	}
	steps := rec.gotSteps()
	if len(steps) < 3 || steps[len(steps)-1] != 40 {
		t.Errorf("progress steps %v: want several, ending at 40", steps)
	}
	if p := rec.gotPreviews(); len(p) == 0 || p[0] < 10 {
		t.Errorf("preview steps %v: want some, none before 10", p)
	}
	// Same model again: no second switch.
	if _, err := a.Run(ctxT(t), tk, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.options) != 1 {
		t.Errorf("the checkpoint was set again for the same model: %v", f.options)
	}
}

func TestA1111Img2Img(t *testing.T) {
	f := newFakeA1111(t)
	a := newA1111T(t, f)
	in := kernel.Inputs{Images: [][]byte{pngOf(t, 300, 200)}, Mask: maskOf(t, 300, 200)}
	tk := editTask(t, protocol.Task{
		Model: "a1111/v1-5-pruned-emaonly", Prompt: "oil painting", Seed: 42, Steps: 30, Width: 512, Height: 512,
		Params: map[string]string{"strength": "0.75"},
	}, in)
	if _, err := a.Run(ctxT(t), tk, nil); !errors.Is(err, kernel.ErrInputsNotGiven) {
		t.Errorf("Run of an edit: %v, want ErrInputsNotGiven", err)
	}
	rec := &recorder{t: t, task: tk}
	out, err := a.Edit(ctxT(t), tk, in, rec.progress, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w, h := pngSize(t, out[0].Data); w != 512 || h != 512 {
		t.Errorf("output %dx%d", w, h)
	}
	if f.paths[0] != "/sdapi/v1/img2img" {
		t.Errorf("edit went to %s", f.paths[0])
	}
	b := f.body(0)
	if b["denoising_strength"] != 0.75 || b["steps"] != 30.0 || b["seed"] != 42.0 || b["resize_mode"] != 0.0 {
		t.Errorf("request %v", b)
	}
	imgs := b["init_images"].([]any)
	if len(imgs) != 1 || imgs[0] != base64.StdEncoding.EncodeToString(in.Images[0]) {
		t.Error("init_images is not the input, base64")
	}
	mb, _ := base64.StdEncoding.DecodeString(b["mask"].(string))
	m, err := png.Decode(bytes.NewReader(mb))
	if err != nil {
		t.Fatal(err)
	}
	// Transparent (left) repaints: white; opaque keeps: black.
	if r, _, _, _ := m.At(10, 10).RGBA(); r != 0xffff {
		t.Errorf("mask at a transparent pixel: %v, want white", m.At(10, 10))
	}
	if r, _, _, _ := m.At(290, 10).RGBA(); r != 0 {
		t.Errorf("mask at an opaque pixel: %v, want black", m.At(290, 10))
	}
	// img2img runs steps × strength sampling steps; progress is on the
	// task's scale.
	if s := rec.gotSteps(); len(s) == 0 || s[len(s)-1] != 30 {
		t.Errorf("progress %v, want it to end at 30", s)
	}
	// Two inputs: refused, A1111's img2img would batch them.
	in2 := kernel.Inputs{Images: [][]byte{pngOf(t, 64, 64), pngOf(t, 72, 64)}}
	tk2 := editTask(t, protocol.Task{Model: "a1111/v1-5-pruned-emaonly", Prompt: "x"}, in2)
	if _, err := a.Edit(ctxT(t), tk2, in2, nil, nil, nil); !errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("two inputs: %v, want ErrBadTask", err)
	}
}

func TestA1111Cancel(t *testing.T) {
	f := newFakeA1111(t)
	f.stepDelay = time.Second // 20 steps: far longer than the test
	a := newA1111T(t, f)
	tk := task(t, protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Steps: 20})
	ctx, cancel := context.WithCancel(ctxT(t))
	go func() {
		<-f.started
		cancel()
	}()
	start := time.Now()
	_, err := a.Run(ctx, tk, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.interrupted {
		t.Error("the backend was not sent /sdapi/v1/interrupt")
	}
}

func TestA1111RunTimeout(t *testing.T) {
	f := newFakeA1111(t)
	f.stepDelay = time.Second
	a := newA1111T(t, f, WithRunTimeout(100*time.Millisecond))
	tk := task(t, protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Steps: 20})
	_, err := a.Run(ctxT(t), tk, nil)
	if err == nil || errors.Is(err, protocol.ErrBadTask) || !strings.Contains(err.Error(), "no result") {
		t.Fatalf("timed-out run: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.interrupted {
		t.Error("a run past its timeout was not interrupted")
	}
}

func TestA1111Dies(t *testing.T) {
	f := newFakeA1111(t)
	f.stepDelay = time.Second
	a := newA1111T(t, f)
	tk := task(t, protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Steps: 20})
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		<-f.started
		f.srv.CloseClientConnections()
		f.srv.Listener.Close()
	}()
	done := make(chan error, 1)
	go func() {
		_, err := a.Run(ctxT(t), tk, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, protocol.ErrBadTask) {
			t.Fatalf("backend died mid-task: %v, want a plain error", err)
		}
		t.Log(err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run hangs after the backend died")
	}
	// Run may fail as the connections close, before the listener does: the
	// health check below must find the backend gone.
	<-killed
	// The next health check withdraws the models.
	changed := a.Changed()
	_ = a.check(ctxT(t))
	if m := a.Models(); len(m) != 0 || a.Health() == nil {
		t.Errorf("after the backend died: models %v, health %v", m, a.Health())
	}
	select {
	case <-changed:
	default:
		t.Error("Changed was not closed when the models went away")
	}
}

func TestA1111Garbage(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		answer     func(t *testing.T, w http.ResponseWriter)
	}{
		{"jpeg", "not a PNG", func(t *testing.T, w http.ResponseWriter) {
			writeJSONT(w, 200, map[string]any{"images": []string{base64.StdEncoding.EncodeToString(jpegOf(t, 64, 64))}, "info": ""})
		}},
		{"wrong size", "does not honour the size", func(t *testing.T, w http.ResponseWriter) {
			writeJSONT(w, 200, map[string]any{"images": []string{base64.StdEncoding.EncodeToString(pngOf(t, 64, 72))}, "info": ""})
		}},
		{"truncated png", "corrupt PNG", func(t *testing.T, w http.ResponseWriter) {
			p := pngOf(t, 64, 64)
			writeJSONT(w, 200, map[string]any{"images": []string{base64.StdEncoding.EncodeToString(p[:len(p)-20])}, "info": ""})
		}},
		{"bad json", "not the JSON expected", func(t *testing.T, w http.ResponseWriter) {
			_, _ = w.Write([]byte(`{"images": [`))
		}},
		{"not base64", "not base64", func(t *testing.T, w http.ResponseWriter) {
			writeJSONT(w, 200, map[string]any{"images": []string{"%%%"}, "info": ""})
		}},
		{"no image", "no image", func(t *testing.T, w http.ResponseWriter) {
			writeJSONT(w, 200, map[string]any{"images": []string{}, "info": ""})
		}},
		{"500", "HTTP 500", func(t *testing.T, w http.ResponseWriter) {
			writeJSONT(w, 500, map[string]any{"error": "OutOfMemoryError", "detail": "", "errors": "CUDA out of memory"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeA1111(t)
			f.answer = func(w http.ResponseWriter, _ map[string]any) { tc.answer(t, w) }
			a := newA1111T(t, f)
			tk := task(t, protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Width: 64, Height: 64})
			_, err := a.Run(ctxT(t), tk, nil)
			if err == nil || errors.Is(err, protocol.ErrBadTask) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a plain error saying %q", err, tc.want)
			}
		})
	}
}

func TestA1111BadTask(t *testing.T) {
	f := newFakeA1111(t)
	f.answer = func(w http.ResponseWriter, _ map[string]any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(404)
		_, _ = w.Write(readTestdata(t, "a1111/error-404.json"))
	}
	a := newA1111T(t, f)
	for _, tc := range []struct {
		name string
		tk   protocol.Task
		want string
	}{
		{"sampler the backend lacks", protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Params: map[string]string{"sampler": "nope"}}, "Sampler not found"},
		{"unknown param", protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Params: map[string]string{"guidance": "3"}}, `param "guidance"`},
		{"strength without an input", protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Params: map[string]string{"strength": "0.5"}}, `param "strength"`},
		{"cfg out of range", protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Params: map[string]string{"cfg": "99"}}, "cfg"},
		{"model not served", protocol.Task{Model: "a1111/other", Prompt: "x"}, "serves"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Run(ctxT(t), task(t, tc.tk), nil)
			if !errors.Is(err, protocol.ErrBadTask) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrBadTask saying %q", err, tc.want)
			}
		})
	}
}

func TestA1111Health(t *testing.T) {
	f := newFakeA1111(t)
	a := newA1111T(t, f, WithHealthInterval(10*time.Millisecond))
	if len(a.Models()) != 3 {
		t.Fatal(a.Models())
	}
	ch := a.Changed()
	f.mu.Lock()
	f.down = true
	f.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled after the backend went down")
	}
	if m := a.Models(); len(m) != 0 {
		t.Errorf("a backend answering 503 still lists %v", m)
	}
	tk := task(t, protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x"})
	if _, err := a.Run(ctxT(t), tk, nil); err == nil || errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("run while the backend is down: %v, want a plain error", err)
	}
	ch = a.Changed()
	f.mu.Lock()
	f.down = false
	f.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled after the backend came back")
	}
	if len(a.Models()) != 3 || a.Health() != nil {
		t.Errorf("back: models %v, health %v", a.Models(), a.Health())
	}
}

func TestA1111StartFails(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler()) // a web server, but no --api
	defer srv.Close()
	if _, err := NewA1111(ctxT(t), srv.URL, testOpts(t)...); err == nil || !strings.Contains(err.Error(), "--api") {
		t.Errorf("no API: %v", err)
	}
	srv.Close()
	if _, err := NewA1111(ctxT(t), srv.URL, testOpts(t)...); err == nil {
		t.Error("an unreachable backend started")
	}
	if _, err := NewA1111(ctxT(t), "127.0.0.1:7860", testOpts(t)...); err == nil {
		t.Error("a URL without a scheme was taken")
	}
}

func TestModelName(t *testing.T) {
	for _, tc := range []struct{ prefix, in, want string }{
		{"a1111/", "v1-5-pruned-emaonly", "a1111/v1-5-pruned-emaonly"},
		{"comfyui/", "SDXL/sd_xl_base_1.0.safetensors", "comfyui/sdxl/sd_xl_base_1.0"},
		{"", "Stable Diffusion 3.5 (Large)", "stable-diffusion-3.5-large"},
		{"a1111/", strings.Repeat("x", 80), "a1111/" + strings.Repeat("x", 58)},
		{"a1111/", "!!!", ""},
	} {
		got, ok := modelName(tc.prefix, tc.in)
		if tc.want == "" {
			if ok {
				t.Errorf("modelName(%q, %q) = %q, want none", tc.prefix, tc.in, got)
			}
			continue
		}
		if !ok || got != tc.want {
			t.Errorf("modelName(%q, %q) = %q, %v, want %q", tc.prefix, tc.in, got, ok, tc.want)
		}
	}
}
