package backend

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// fakeComfy answers as ComfyUI's server.py and execution.py do, from the
// shapes in testdata/comfyui: /prompt queues a job that reports over the
// client's /ws (execution_start, executing, progress with a binary JPEG
// preview per step, executed, execution_success, executing null), then
// /history and /view give its image.
type fakeComfy struct {
	t         *testing.T
	srv       *httptest.Server
	stepDelay time.Duration
	objInfo   string // testdata file for /object_info, "" for a 404
	dieAt     int    // close every connection at this step (0: never)
	viewBody  []byte // replaces the image /view serves when set

	mu          sync.Mutex
	conns       map[string]*websocket.Conn
	prompts     []map[string]comfyNode
	uploads     [][]byte
	interrupted bool
	deleted     []string
	history     map[string]any
	images      map[string][]byte
	started     chan struct{}
	startOnce   sync.Once
}

func newFakeComfy(t *testing.T) *fakeComfy {
	f := &fakeComfy{t: t, stepDelay: 2 * time.Millisecond, objInfo: "comfyui/object_info-CheckpointLoaderSimple.json",
		conns: map[string]*websocket.Conn{}, history: map[string]any{}, images: map[string][]byte{}, started: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /object_info/CheckpointLoaderSimple", func(w http.ResponseWriter, r *http.Request) {
		if f.objInfo == "" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(readTestdata(t, f.objInfo))
	})
	mux.HandleFunc("GET /models/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(readTestdata(t, "comfyui/models-checkpoints.json"))
	})
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		sid := r.URL.Query().Get("clientId")
		f.mu.Lock()
		f.conns[sid] = c
		f.mu.Unlock()
		_ = c.Write(r.Context(), websocket.MessageText, []byte(`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "`+sid+`"}}`))
		for {
			if _, _, err := c.Read(r.Context()); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("POST /upload/image", func(w http.ResponseWriter, r *http.Request) {
		file, fh, err := r.FormFile("image")
		if err != nil || r.FormValue("type") != "input" {
			http.Error(w, "bad upload", 400)
			return
		}
		b, _ := io.ReadAll(file)
		f.mu.Lock()
		f.uploads = append(f.uploads, b)
		f.mu.Unlock()
		writeJSONT(w, 200, map[string]string{"name": fh.Filename, "subfolder": "", "type": "input"})
	})
	mux.HandleFunc("POST /prompt", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Prompt   map[string]comfyNode `json:"prompt"`
			ClientID string               `json:"client_id"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSONT(w, 400, map[string]any{"error": map[string]string{"message": err.Error()}, "node_errors": []any{}})
			return
		}
		raw, _ := json.Marshal(req.Prompt)
		if bytes.Contains(raw, []byte("{{")) {
			t.Errorf("a slot was left in the queued graph: %s", raw)
		}
		for id, n := range req.Prompt {
			if n.ClassType == "" {
				t.Errorf("node %s without class_type", id)
			}
		}
		if req.Prompt["3"].Inputs["sampler_name"] == "nope" {
			w.WriteHeader(400)
			_, _ = w.Write(readTestdata(t, "comfyui/prompt-error-400.json"))
			return
		}
		id := newClientID()
		var ws *websocket.Conn
		// The client's dial returns with the handshake, a moment
		// before the handler above has registered the socket.
		for range 100 {
			f.mu.Lock()
			ws = f.conns[req.ClientID]
			f.mu.Unlock()
			if ws != nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		f.mu.Lock()
		f.prompts = append(f.prompts, req.Prompt)
		f.mu.Unlock()
		if ws == nil {
			t.Error("a prompt was queued before its client's websocket was open")
			return
		}
		writeJSONT(w, 200, map[string]any{"prompt_id": id, "number": 0, "node_errors": map[string]any{}})
		go f.execute(id, req.Prompt, ws)
	})
	mux.HandleFunc("GET /history/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		h, ok := f.history[r.PathValue("id")]
		if !ok {
			writeJSONT(w, 200, map[string]any{})
			return
		}
		writeJSONT(w, 200, map[string]any{r.PathValue("id"): h})
	})
	mux.HandleFunc("GET /view", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		q := r.URL.Query()
		b, ok := f.images[q.Get("filename")]
		if !ok || q.Get("type") != "output" {
			http.NotFound(w, r)
			return
		}
		if f.viewBody != nil {
			b = f.viewBody
		}
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("POST /interrupt", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.interrupted = true
		f.mu.Unlock()
	})
	mux.HandleFunc("POST /queue", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Delete []string `json:"delete"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		f.deleted = append(f.deleted, req.Delete...)
		f.mu.Unlock()
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// execute runs a queued prompt as ComfyUI's executor reports it.
func (f *fakeComfy) execute(id string, g map[string]comfyNode, ws *websocket.Conn) {
	ctx := context.Background()
	send := func(typ string, data map[string]any) {
		data["prompt_id"] = id
		b, _ := json.Marshal(map[string]any{"type": typ, "data": data})
		_ = ws.Write(ctx, websocket.MessageText, b)
	}
	send("execution_start", map[string]any{"timestamp": 0})
	send("executing", map[string]any{"node": "4", "display_node": "4"})
	// A VAE node's progress must not count as the sampler's.
	send("progress", map[string]any{"value": 3, "max": 4, "node": "8"})
	send("executing", map[string]any{"node": "3", "display_node": "3"})
	steps := int(g["3"].Inputs["steps"].(float64))
	for i := 1; i <= steps; i++ {
		f.startOnce.Do(func() { close(f.started) })
		if i == f.dieAt {
			// The process is gone: every socket closes, websockets
			// (hijacked, so not the server's to close) included.
			f.mu.Lock()
			for _, c := range f.conns {
				_ = c.CloseNow()
			}
			f.mu.Unlock()
			f.srv.CloseClientConnections()
			return
		}
		f.mu.Lock()
		stop := f.interrupted
		f.mu.Unlock()
		if stop {
			send("execution_interrupted", map[string]any{"node_id": "3", "node_type": "KSampler", "executed": []string{}})
			return
		}
		send("progress", map[string]any{"value": i, "max": steps, "node": "3"})
		frame := binary.BigEndian.AppendUint32(nil, 1)
		frame = binary.BigEndian.AppendUint32(frame, 1) // JPEG
		_ = ws.Write(ctx, websocket.MessageBinary, append(frame, jpegOf(f.t, 64, 64)...))
		time.Sleep(f.stepDelay)
	}
	var w, h int
	for _, n := range g {
		if n.ClassType == "EmptyLatentImage" || n.ClassType == "ImageScale" {
			w, h = int(n.Inputs["width"].(float64)), int(n.Inputs["height"].(float64))
		}
	}
	name := "gpunet_" + id + "_.png"
	img := map[string]string{"filename": name, "subfolder": "", "type": "output"}
	f.mu.Lock()
	f.images[name] = pngOf(f.t, w, h)
	f.history[id] = map[string]any{
		"outputs": map[string]any{"9": map[string]any{"images": []any{img}}},
		"status":  map[string]any{"status_str": "success", "completed": true, "messages": []any{}},
	}
	f.mu.Unlock()
	send("executed", map[string]any{"node": "9", "display_node": "9", "output": map[string]any{"images": []any{img}}})
	send("execution_success", map[string]any{"timestamp": 0})
	send("executing", map[string]any{"node": nil})
}

func newComfyT(t *testing.T, f *fakeComfy, opts ...Option) *ComfyUI {
	c, err := NewComfyUI(ctxT(t), f.srv.URL, testOpts(t, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestComfyModels(t *testing.T) {
	want := []string{"comfyui/sdxl/sd_xl_base_1.0", "comfyui/v1-5-pruned-emaonly"}
	for _, shape := range []string{"comfyui/object_info-CheckpointLoaderSimple.json", "comfyui/object_info-old.json", ""} {
		f := newFakeComfy(t)
		f.objInfo = shape
		c := newComfyT(t, f)
		if got := c.Models(); !slices.Equal(got, want) {
			t.Errorf("%q: Models() = %v, want %v", shape, got, want)
		}
	}
}

func TestComfyTxt2Img(t *testing.T) {
	f := newFakeComfy(t)
	c := newComfyT(t, f)
	tk := task(t, protocol.Task{Model: "comfyui/sdxl/sd_xl_base_1.0", Prompt: "a quiet harbour", NegativePrompt: "blurry",
		Seed: protocol.MaxSeed, Steps: 12, Width: 512, Height: 768, Params: map[string]string{"cfg": "5.5", "sampler": "dpmpp_2m"}})
	rec := &recorder{t: t, task: tk}
	out, err := c.RunWithPreviews(ctxT(t), tk, rec.progress, []int{3, 6, 9}, rec.preview)
	if err != nil {
		t.Fatal(err)
	}
	if w, h := pngSize(t, out[0].Data); w != 512 || h != 768 {
		t.Errorf("output %dx%d", w, h)
	}
	g := f.prompts[0]
	for _, tc := range []struct {
		node, input string
		want        any
	}{
		{"3", "seed", float64(protocol.MaxSeed)}, {"3", "steps", 12.0}, {"3", "cfg", 5.5}, {"3", "sampler_name", "dpmpp_2m"},
		{"3", "scheduler", "normal"}, {"3", "denoise", 1.0},
		{"5", "width", 512.0}, {"5", "height", 768.0},
		{"6", "text", "a quiet harbour"}, {"7", "text", "blurry"},
		{"4", "ckpt_name", "SDXL/sd_xl_base_1.0.safetensors"},
	} {
		if got := g[tc.node].Inputs[tc.input]; got != tc.want {
			t.Errorf("node %s %s = %v, want %v", tc.node, tc.input, got, tc.want)
		}
	}
	if s := rec.gotSteps(); len(s) < 5 || s[len(s)-1] != 12 || s[0] > 1 {
		t.Errorf("progress %v: want the sampler's steps 1.., ending at 12", s)
	}
	if p := rec.gotPreviews(); !slices.Equal(p, []int{3, 6, 9}) {
		t.Errorf("previews at %v, want 3, 6, 9", p)
	}
}

func TestComfyImg2Img(t *testing.T) {
	f := newFakeComfy(t)
	c := newComfyT(t, f)
	in := kernel.Inputs{Images: [][]byte{pngOf(t, 200, 100)}}
	tk := editTask(t, protocol.Task{Model: "comfyui/v1-5-pruned-emaonly", Prompt: "pastel", Seed: 5, Steps: 10, Width: 256, Height: 128,
		Params: map[string]string{"strength": "0.35"}}, in)
	out, err := c.Edit(ctxT(t), tk, in, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w, h := pngSize(t, out[0].Data); w != 256 || h != 128 {
		t.Errorf("output %dx%d", w, h)
	}
	if len(f.uploads) != 1 || !bytes.Equal(f.uploads[0], in.Images[0]) {
		t.Fatal("the input was not uploaded as is")
	}
	g := f.prompts[0]
	if g["3"].Inputs["denoise"] != 0.35 || g["11"].Inputs["width"] != 256.0 || g["11"].Inputs["height"] != 128.0 {
		t.Errorf("graph: denoise %v, scale to %vx%v", g["3"].Inputs["denoise"], g["11"].Inputs["width"], g["11"].Inputs["height"])
	}
	if name, _ := g["10"].Inputs["image"].(string); !strings.HasPrefix(name, "gpunet-"+tk.Inputs[0].Cid.String()) {
		t.Errorf("LoadImage image %q, want the uploaded file", name)
	}
	in.Mask = maskOf(t, 200, 100)
	mt := tk
	mt.Inputs, mt.Mask = nil, nil
	if _, err := c.Edit(ctxT(t), editTask(t, mt, in), in, nil, nil, nil); !errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("a mask: %v, want ErrBadTask", err)
	}
}

func TestComfyCancel(t *testing.T) {
	f := newFakeComfy(t)
	f.stepDelay = 200 * time.Millisecond
	c := newComfyT(t, f)
	tk := task(t, protocol.Task{Model: "comfyui/v1-5-pruned-emaonly", Prompt: "x", Steps: 100})
	ctx, cancel := context.WithCancel(ctxT(t))
	go func() {
		<-f.started
		time.Sleep(50 * time.Millisecond) // the execution_start has reached the adapter
		cancel()
	}()
	if _, err := c.Run(ctx, tk, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.interrupted || len(f.deleted) != 1 {
		t.Errorf("interrupted %v, deleted %v: want /interrupt and the prompt off the queue", f.interrupted, f.deleted)
	}
}

func TestComfyDies(t *testing.T) {
	f := newFakeComfy(t)
	f.dieAt = 3
	c := newComfyT(t, f)
	tk := task(t, protocol.Task{Model: "comfyui/v1-5-pruned-emaonly", Prompt: "x", Steps: 10})
	done := make(chan error, 1)
	go func() {
		_, err := c.Run(ctxT(t), tk, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, protocol.ErrBadTask) || !strings.Contains(err.Error(), "websocket closed") {
			t.Fatalf("died mid-task: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run hangs after the backend died")
	}
}

func TestComfyGarbage(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		body       func(t *testing.T) []byte
	}{
		{"jpeg", "not a PNG", func(t *testing.T) []byte { return jpegOf(t, 64, 64) }},
		{"wrong size", "does not honour the size", func(t *testing.T) []byte { return pngOf(t, 128, 64) }},
		{"html", "not a PNG", func(t *testing.T) []byte { return []byte("<html>oops</html>") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeComfy(t)
			f.viewBody = tc.body(t)
			c := newComfyT(t, f)
			_, err := c.Run(ctxT(t), task(t, protocol.Task{Model: "comfyui/v1-5-pruned-emaonly", Prompt: "x", Steps: 2, Width: 64, Height: 64}), nil)
			if err == nil || errors.Is(err, protocol.ErrBadTask) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a plain error saying %q", err, tc.want)
			}
		})
	}
}

func TestComfyBadTask(t *testing.T) {
	f := newFakeComfy(t)
	c := newComfyT(t, f)
	_, err := c.Run(ctxT(t), task(t, protocol.Task{Model: "comfyui/v1-5-pruned-emaonly", Prompt: "x", Params: map[string]string{"sampler": "nope"}}), nil)
	if !errors.Is(err, protocol.ErrBadTask) || !strings.Contains(err.Error(), "validation") {
		t.Errorf("a sampler ComfyUI refuses: %v", err)
	}
	_, err = c.Run(ctxT(t), task(t, protocol.Task{Model: "comfyui/v1-5-pruned-emaonly", Prompt: "x", Params: map[string]string{"guidance": "2"}}), nil)
	if !errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("a param with no slot: %v", err)
	}
}

func TestComfyGraphs(t *testing.T) {
	// The shipped graphs pass their own checks.
	for _, k := range []string{"txt2img", "img2img"} {
		if _, err := parseGraph(k, DefaultGraph(k)); err != nil {
			t.Errorf("default %s graph: %v", k, err)
		}
	}
	noSeed := strings.Replace(string(DefaultGraph("txt2img")), `"{{seed}}"`, "42", 1)
	if _, err := parseGraph("txt2img", []byte(noSeed)); err == nil || !strings.Contains(err.Error(), "{{seed}}") {
		t.Errorf("a graph without a seed slot: %v", err)
	}
	f := newFakeComfy(t)
	if _, err := NewComfyUI(ctxT(t), f.srv.URL, testOpts(t, WithWorkflows([]byte(`{"1": {"inputs": {}}}`), nil))...); err == nil {
		t.Error("a UI-format (not API-format) graph was taken")
	}
}
