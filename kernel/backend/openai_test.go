package backend

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/openai"
	"github.com/gpunet/gpunet/protocol"
)

// fakeOpenAI answers as an OpenAI-compatible image server (OpenAI's
// Images API reference; sd-server and gpunet add seed, steps and
// negative_prompt), from testdata/openai.
type fakeOpenAI struct {
	srv    *httptest.Server
	answer func(w http.ResponseWriter) // replaces the image answer when set
	block  chan struct{}               // when set, generations wait on it or the client

	mu     sync.Mutex
	bodies []map[string]any      // generations
	forms  []map[string][]string // edits: text fields
	files  []map[string][][]byte // edits: file parts by field
	auth   []string              // Authorization headers seen
}

func newFakeOpenAI(t *testing.T) *fakeOpenAI {
	f := &fakeOpenAI{}
	known := keysOf(t, "openai/generations-request.json")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		f.mu.Unlock()
		_, _ = w.Write(readTestdata(t, "openai/models.json"))
	})
	image := func(w http.ResponseWriter, r *http.Request, wd, ht int) {
		if f.block != nil {
			select {
			case <-f.block:
			case <-r.Context().Done():
				return
			}
		}
		if f.answer != nil {
			f.answer(w)
			return
		}
		writeJSONT(w, 200, map[string]any{"created": 1, "data": []map[string]string{{"b64_json": base64.StdEncoding.EncodeToString(pngOf(t, wd, ht))}}})
	}
	size := func(s string) (int, int) {
		var w, h int
		a, b, _ := strings.Cut(s, "x")
		_ = json.Unmarshal([]byte(a), &w)
		_ = json.Unmarshal([]byte(b), &h)
		return w, h
	}
	mux.HandleFunc("POST /v1/images/generations", func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSONT(w, 400, map[string]any{"error": map[string]any{"message": err.Error()}})
			return
		}
		for k := range req {
			if !known[k] {
				t.Errorf("generations: field %q is not in testdata/openai/generations-request.json", k)
			}
		}
		f.mu.Lock()
		f.bodies = append(f.bodies, req)
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		f.mu.Unlock()
		wd, ht := size(req["size"].(string))
		image(w, r, wd, ht)
	})
	mux.HandleFunc("POST /v1/images/edits", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseMultipartForm(32 << 20); err != nil {
			writeJSONT(w, 400, map[string]any{"error": map[string]any{"message": err.Error()}})
			return
		}
		files := map[string][][]byte{}
		for field, fhs := range r.MultipartForm.File {
			for _, fh := range fhs {
				rd, _ := fh.Open()
				b, _ := io.ReadAll(rd)
				rd.Close()
				files[field] = append(files[field], b)
			}
		}
		f.mu.Lock()
		f.forms = append(f.forms, r.MultipartForm.Value)
		f.files = append(f.files, files)
		f.mu.Unlock()
		wd, ht := size(r.FormValue("size"))
		image(w, r, wd, ht)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func TestOpenAIGenerate(t *testing.T) {
	f := newFakeOpenAI(t)
	o, err := NewOpenAI(ctxT(t), f.srv.URL+"/v1/", testOpts(t, WithAPIKey("sk-test"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if got, want := o.Models(), []string{"flux.1-schnell-q4", "sd-v1-5"}; !slices.Equal(got, want) {
		t.Errorf("Models() = %v, want %v", got, want)
	}
	tk := task(t, protocol.Task{Model: "flux.1-schnell-q4", Prompt: "a quiet harbour at dusk", NegativePrompt: "blurry",
		Seed: protocol.MaxSeed, Steps: 7, Width: 512, Height: 768})
	rec := &recorder{t: t, task: tk}
	out, err := o.Run(ctxT(t), tk, rec.progress)
	if err != nil {
		t.Fatal(err)
	}
	if w, h := pngSize(t, out[0].Data); w != 512 || h != 768 {
		t.Errorf("output %dx%d", w, h)
	}
	f.mu.Lock()
	b := f.bodies[0]
	auth := slices.Clone(f.auth)
	f.mu.Unlock()
	want := map[string]any{"model": "Flux.1-Schnell Q4", "prompt": "a quiet harbour at dusk", "negative_prompt": "blurry",
		"seed": float64(protocol.MaxSeed), "steps": 7.0, "size": "512x768", "n": 1.0, "response_format": "b64_json"}
	for k, v := range want {
		if b[k] != v {
			t.Errorf("request %s = %v, want %v", k, b[k], v)
		}
	}
	for _, a := range auth {
		if a != "Bearer sk-test" {
			t.Errorf("Authorization %q", a)
		}
	}
	if s := rec.gotSteps(); !slices.Equal(s, []int{7}) {
		t.Errorf("progress %v", s)
	}
	// Params it cannot pass on are refused.
	tk.Params = map[string]string{"cfg": "7"}
	if _, err := o.Run(ctxT(t), task(t, tk), nil); !errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("a param: %v, want ErrBadTask", err)
	}
}

func TestOpenAIEdit(t *testing.T) {
	f := newFakeOpenAI(t)
	o, err := NewOpenAI(ctxT(t), f.srv.URL, testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	in := kernel.Inputs{Images: [][]byte{pngOf(t, 96, 64), jpegOf(t, 64, 64)}, Mask: maskOf(t, 96, 64)}
	tk := editTask(t, protocol.Task{Model: "sd-v1-5", Prompt: "oil painting", Seed: 42, Steps: 30, Width: 512, Height: 512,
		Params: map[string]string{"strength": ".75"}}, in)
	out, err := o.Edit(ctxT(t), tk, in, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w, h := pngSize(t, out[0].Data); w != 512 || h != 512 {
		t.Errorf("output %dx%d", w, h)
	}
	form, files := f.forms[0], f.files[0]
	for k, v := range map[string]string{"model": "sd-v1-5", "prompt": "oil painting", "seed": "42", "steps": "30", "size": "512x512", "strength": "0.75", "n": "1"} {
		if got := form[k]; len(got) != 1 || got[0] != v {
			t.Errorf("form %s = %v, want %q", k, got, v)
		}
	}
	if imgs := files["image[]"]; len(imgs) != 2 || !bytes.Equal(imgs[0], in.Images[0]) || !bytes.Equal(imgs[1], in.Images[1]) {
		t.Errorf("image[] parts: %d, want the 2 inputs in order", len(imgs))
	}
	if m := files["mask"]; len(m) != 1 || !bytes.Equal(m[0], in.Mask) {
		t.Error("mask part is not the task's mask")
	}
}

func TestOpenAIErrors(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		bad        bool
		answer     func(w http.ResponseWriter)
	}{
		{"400", "multiple of 8", true, func(w http.ResponseWriter) {
			w.WriteHeader(400)
			_, _ = w.Write(readTestdataNoT("openai/error-400.json"))
		}},
		{"503", "HTTP 503", false, func(w http.ResponseWriter) { http.Error(w, "overloaded", 503) }},
		{"401", "API key", false, func(w http.ResponseWriter) { http.Error(w, "no key", 401) }},
		{"url", "b64_json", false, func(w http.ResponseWriter) {
			writeJSONT(w, 200, map[string]any{"data": []map[string]string{{"url": "http://x/y.png"}}})
		}},
		{"bad json", "not the JSON expected", false, func(w http.ResponseWriter) { _, _ = w.Write([]byte("<html>")) }},
		{"two images", "2 images", false, func(w http.ResponseWriter) {
			writeJSONT(w, 200, map[string]any{"data": []map[string]string{{"b64_json": "x"}, {"b64_json": "y"}}})
		}},
		{"webp-ish garbage", "not a PNG", false, func(w http.ResponseWriter) {
			writeJSONT(w, 200, map[string]any{"data": []map[string]string{{"b64_json": base64.StdEncoding.EncodeToString([]byte("RIFF0000WEBPVP8 "))}}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeOpenAI(t)
			f.answer = tc.answer
			o, err := NewOpenAI(ctxT(t), f.srv.URL, testOpts(t)...)
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			_, err = o.Run(ctxT(t), task(t, protocol.Task{Model: "sd-v1-5", Prompt: "x"}), nil)
			if err == nil || errors.Is(err, protocol.ErrBadTask) != tc.bad || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q (bad task: %v)", err, tc.want, tc.bad)
			}
		})
	}
}

func TestOpenAICancelAndDeath(t *testing.T) {
	f := newFakeOpenAI(t)
	f.block = make(chan struct{})
	o, err := NewOpenAI(ctxT(t), f.srv.URL, testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	tk := task(t, protocol.Task{Model: "sd-v1-5", Prompt: "x"})
	ctx, cancel := context.WithTimeout(ctxT(t), 50*time.Millisecond)
	defer cancel()
	if _, err := o.Run(ctx, tk, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled: %v", err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		f.srv.CloseClientConnections()
	}()
	if _, err := o.Run(ctxT(t), tk, nil); err == nil || errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("server gone mid-task: %v, want a plain error", err)
	}
}

func readTestdataNoT(name string) []byte {
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		panic(err)
	}
	return b
}

// TestOpenAIGpunetNode runs the adapter against a real gpunet node's
// OpenAI API (node/openai over node/localapi, the sketch kernel behind
// it): a gateway of one swarm becomes a backend of a host of another. The
// sketch kernel is deterministic, so the relayed image must be the very
// bytes the kernel makes.
func TestOpenAIGpunetNode(t *testing.T) {
	n := nodetest.Host(t, func(c *node.Config) { c.FindTimeout = time.Second })
	s, err := localapi.Listen(n, "127.0.0.1:0", slog.New(slog.DiscardHandler), openai.Routes(n)...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	o, err := NewOpenAI(ctxT(t), "http://"+s.Addr(), testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if !slices.Contains(o.Models(), protocol.DefaultModel) {
		t.Fatalf("models %v, want the node's %s", o.Models(), protocol.DefaultModel)
	}
	tk := task(t, protocol.Task{Model: protocol.DefaultModel, Prompt: "a violet comet over the sea", NegativePrompt: "fog",
		Seed: 1 << 40, Steps: 6, Width: 192, Height: 128})
	out, err := o.Run(ctxT(t), tk, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err := kernel.Sketch{}.Run(ctxT(t), tk, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out[0].Data, want[0].Data) {
		t.Error("the node's image is not the sketch kernel's for the same task: seed, steps, size or negative prompt were not passed exactly")
	}

	in := kernel.Inputs{Images: [][]byte{pngOf(t, 128, 96)}}
	et := editTask(t, protocol.Task{Model: protocol.DefaultModel, Prompt: "in pastel", Seed: 7, Steps: 4, Width: 128, Height: 96,
		Params: map[string]string{"strength": "0.4"}}, in)
	out, err = o.Edit(ctxT(t), et, in, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err = kernel.Sketch{}.Edit(ctxT(t), et, in, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out[0].Data, want[0].Data) {
		t.Error("the node's edit is not the sketch kernel's for the same task")
	}

	// A request the node refuses as invalid is the task's fault: the
	// node takes no strength for a generation, so an edit param sent
	// where it does not belong comes back as a 400.
	if _, err := o.base.do(ctxT(t), "x", "POST", "/v1/images/generations", nil,
		strings.NewReader(`{"prompt":"x","model":"gpunet/sketch-v1","strength":"0.5"}`), "application/json"); !errors.Is(taskError("openai", err), protocol.ErrBadTask) {
		t.Errorf("a field the node refuses: %v, want it mapped to ErrBadTask", err)
	}
}
