package openai

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"mime"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/protocol"
)

const (
	// maxBody bounds a request body, as the local API's own routes do: a
	// prompt is at most protocol.MaxPromptBytes, the rest a few fields.
	maxBody = 64 << 10
	// maxN is OpenAI's own bound on n.
	maxN = 10
	// maxPartialImages is OpenAI's bound on partial_images, and the task
	// protocol's (protocol.MaxPreviews).
	maxPartialImages = protocol.MaxPreviews
	// retryAfter is what a 429 tells the client to wait. The swarm stayed
	// full for the whole of the task's deadline, so nothing better is
	// known; half a minute lets a queue drain somewhat without the client
	// hammering it.
	retryAfter = 30 * time.Second
)

// qualitySteps maps OpenAI's quality to diffusion steps: more steps, more
// detail, longer runs. "auto" is the protocol's default. The request's
// gpunet field "steps", if given, overrides it.
var qualitySteps = map[string]uint32{
	"low":    8,
	"medium": protocol.DefaultSteps,
	"high":   40,
	"xhigh":  80,
	"max":    protocol.MaxSteps,
	"auto":   protocol.DefaultSteps,
}

// generateRequest is the body of POST /v1/images/generations, with
// gpunet's own extra fields (seed, steps, negative_prompt).
type generateRequest struct {
	Prompt           *string `json:"prompt"`
	Model            string  `json:"model"`
	N                *int    `json:"n"`
	Size             string  `json:"size"`
	Quality          string  `json:"quality"`
	ResponseFormat   string  `json:"response_format"`
	OutputFormat     string  `json:"output_format"`
	Stream           bool    `json:"stream"`
	PartialImages    *int    `json:"partial_images"`
	User             string  `json:"user"`
	SafetyIdentifier string  `json:"safety_identifier"`
	Background       string  `json:"background"`
	// Accepted and ignored: a peer-to-peer swarm has no moderation service
	// to apply, and style is a DALL·E 3 knob with no counterpart.
	Moderation json.RawMessage `json:"moderation"`
	Style      json.RawMessage `json:"style"`

	Seed           *uint64 `json:"seed"`
	Steps          *uint32 `json:"steps"`
	NegativePrompt string  `json:"negative_prompt"`

	// Edits only (edits.go): input_fidelity is accepted and ignored (the
	// kernel's strength is gpunet's knob for it), strength is gpunet's.
	InputFidelity string `json:"input_fidelity"`
	Strength      string `json:"strength"`
}

// unsupported are OpenAI fields gpunet cannot honour, and why.
var unsupported = map[string]string{
	"output_compression": "output_compression applies to jpeg and webp; gpunet returns png only",
	"frame_count":        "frame_count: gpunet makes still images only",
	"frame_duration_ms":  "frame_duration_ms: gpunet makes still images only",
	"complexity":         "complexity is not supported by gpunet",
}

// plan is a checked request: the tasks to submit and how to answer.
type plan struct {
	// event is the SSE event prefix: image_generation, or image_edit.
	event     string
	tasks     []protocol.Task
	submitter string
	url       bool // response_format url
	stream    bool
	partials  int    // partial_images: previews asked for, per image, when streaming
	quality   string // as answered: the request's, "auto" resolved
	size      string
}

var sizeRE = regexp.MustCompile(`^([0-9]{1,5})x([0-9]{1,5})$`)

// parse checks a request body and turns it into tasks. It does no I/O:
// whether a host serves the model is the caller's question. ed is nil for
// a generation; for an edit it names the uploaded images, which become the
// tasks' inputs.
func parse(body []byte, ed *editInputs) (*plan, *apiError) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, badRequest("", "body is not a JSON object: "+err.Error())
	}
	known := knownFields()
	if ed == nil {
		known["input_fidelity"], known["strength"] = false, false
	}
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if why, ok := unsupported[k]; ok {
			return nil, badRequest(k, why)
		}
		if !known[k] {
			return nil, badRequest(k, fmt.Sprintf("unknown field %q: see docs/openai.md for the fields gpunet accepts", k))
		}
	}
	var req generateRequest
	if err := json.Unmarshal(body, &req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, badRequest(te.Field, fmt.Sprintf("%s: want a %s, got a JSON %s", te.Field, te.Type, te.Value))
		}
		return nil, badRequest("", "decoding request: "+err.Error())
	}
	if req.Prompt == nil || strings.TrimSpace(*req.Prompt) == "" {
		return nil, badRequest("prompt", "prompt is required")
	}
	p := &plan{event: "image_generation", stream: req.Stream, quality: "medium"}
	n := 1
	if req.N != nil {
		n = *req.N
	}
	if n < 1 || n > maxN {
		return nil, badRequest("n", fmt.Sprintf("n %d: want 1..%d", n, maxN))
	}
	t := protocol.Task{Prompt: *req.Prompt, NegativePrompt: req.NegativePrompt}
	// "name@sha256:…" names the model by content (docs/protocol.md).
	t.Model, t.ModelDigest = protocol.SplitModelRef(req.Model)
	if ed != nil {
		p.event = "image_edit"
		t.Inputs, t.Mask = ed.inputs, ed.mask
		pm, err := kernel.ParseStrength(req.Strength)
		if err != nil {
			return nil, badRequest("strength", err.Error())
		}
		if req.Strength != "" {
			// One spelling per strength ("0.60" and ".6" are 0.6), so
			// they are one task.
			t.Params = map[string]string{"strength": strconv.FormatFloat(float64(pm)/1000, 'f', -1, 64)}
		}
		switch req.InputFidelity {
		case "", "low", "high":
		default:
			return nil, badRequest("input_fidelity", fmt.Sprintf("input_fidelity %q: want low or high", req.InputFidelity))
		}
	}
	switch req.Size {
	case "", "auto":
		if ed != nil {
			t.Width, t.Height = fitSize(ed.width, ed.height)
		}
	default:
		m := sizeRE.FindStringSubmatch(req.Size)
		if m == nil {
			return nil, badRequest("size", fmt.Sprintf("size %q: want WIDTHxHEIGHT (e.g. 512x512) or auto", req.Size))
		}
		w, _ := strconv.Atoi(m[1])
		h, _ := strconv.Atoi(m[2])
		for _, s := range []int{w, h} {
			if s < protocol.MinSide || s > protocol.MaxSide || s%protocol.SideMultiple != 0 {
				return nil, badRequest("size", fmt.Sprintf("size %q: each side %d..%d and a multiple of %d", req.Size, protocol.MinSide, protocol.MaxSide, protocol.SideMultiple))
			}
		}
		t.Width, t.Height = uint32(w), uint32(h)
	}
	switch q := req.Quality; q {
	case "", "auto":
	default:
		steps, ok := qualitySteps[q]
		if !ok {
			return nil, badRequest("quality", fmt.Sprintf("quality %q: want low, medium, high, xhigh, max or auto", q))
		}
		t.Steps, p.quality = steps, q
	}
	if req.Steps != nil {
		if *req.Steps < protocol.MinSteps || *req.Steps > protocol.MaxSteps {
			return nil, badRequest("steps", fmt.Sprintf("steps %d: want %d..%d", *req.Steps, protocol.MinSteps, protocol.MaxSteps))
		}
		t.Steps = *req.Steps
	}
	switch req.ResponseFormat {
	case "", "b64_json":
	case "url":
		p.url = true
	default:
		return nil, badRequest("response_format", fmt.Sprintf("response_format %q: want b64_json or url", req.ResponseFormat))
	}
	if f := req.OutputFormat; f != "" && f != "png" {
		return nil, badRequest("output_format", fmt.Sprintf("output_format %q: gpunet returns png only", f))
	}
	switch req.Background {
	case "", "auto", "opaque":
	default:
		return nil, badRequest("background", fmt.Sprintf("background %q: gpunet's images are opaque; want auto or opaque", req.Background))
	}
	if req.PartialImages != nil && (*req.PartialImages < 0 || *req.PartialImages > maxPartialImages) {
		return nil, badRequest("partial_images", fmt.Sprintf("partial_images %d: want 0..%d", *req.PartialImages, maxPartialImages))
	}
	if req.PartialImages != nil && p.stream {
		p.partials = *req.PartialImages
	}
	// OpenAI reads safety_identifier first and user as its older name.
	param := "user"
	p.submitter = req.User
	if req.SafetyIdentifier != "" {
		p.submitter, param = req.SafetyIdentifier, "safety_identifier"
	}
	if err := protocol.ValidSubmitter(p.submitter); err != nil {
		return nil, badRequest(param, err.Error())
	}
	if req.Seed != nil {
		if *req.Seed > protocol.MaxSeed-uint64(n-1) {
			return nil, badRequest("seed", fmt.Sprintf("seed %d: with n %d, at most %d", *req.Seed, n, protocol.MaxSeed-uint64(n-1)))
		}
		t.Seed = *req.Seed
	}
	// Normalising the first task validates the rest of it (prompt length,
	// model name) and, without a seed, derives one: n=1 is then the very
	// task `gpunet submit` makes of the same prompt, sharing its cache.
	first, err := t.Normalize()
	if err != nil {
		return nil, badRequest(taskParam(err), err.Error())
	}
	for i := range n {
		ti := first
		// Consecutive seeds; a derived seed near the top wraps to 1 (0
		// would mean "derive").
		ti.Seed = (first.Seed-1+uint64(i))%protocol.MaxSeed + 1
		p.tasks = append(p.tasks, ti)
	}
	p.size = fmt.Sprintf("%dx%d", first.Width, first.Height)
	return p, nil
}

// taskParam guesses the field a task validation error is about.
func taskParam(err error) string {
	switch msg := err.Error(); {
	case strings.Contains(msg, "model"):
		return "model"
	case strings.Contains(msg, "prompt"):
		return "prompt"
	}
	return ""
}

// knownFields are the JSON names of generateRequest's fields.
func knownFields() map[string]bool {
	known := map[string]bool{}
	rt := reflect.TypeFor[generateRequest]()
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		known[name] = true
	}
	return known
}

// image is one finished image.
type image struct {
	png []byte
	cid string
}

// generations serves POST /v1/images/generations.
func (a *api) generations(w http.ResponseWriter, r *http.Request) {
	// A browser can send form and text bodies cross-origin without a CORS
	// preflight, but not JSON: the local API's second lock, kept here.
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		writeError(w, &apiError{status: http.StatusUnsupportedMediaType, Type: "invalid_request_error",
			Message: fmt.Sprintf("Content-Type %q: want application/json", r.Header.Get("Content-Type"))})
		return
	}
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	p, err := parse(body, nil)
	if err != nil {
		writeError(w, err)
		return
	}
	a.serve(w, r, p)
}

// serve runs a checked request's tasks and answers it, as JSON or as a
// stream.
func (a *api) serve(w http.ResponseWriter, r *http.Request, p *plan) {
	if c, ok := localapi.CallerOf(r); ok {
		// A gateway's key holder: the key names the submitter, not the
		// body (a holder choosing names would take as many fair shares as
		// it liked), and a url would point at the blocks route that only
		// the loopback API serves.
		p.submitter = c.Submitter
		if p.url {
			writeError(w, badRequest("response_format", `response_format "url" is not served on the gateway: use b64_json`))
			return
		}
	}
	if m := p.tasks[0].Model; !a.serves(r.Context(), m) {
		writeError(w, modelNotFound(m))
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	done := make(chan result, len(p.tasks))
	// Previews go to the stream as they come; one that finds the stream
	// busy is dropped (a partial image is advisory, the result is not).
	partial := make(chan []byte, len(p.tasks)*maxPartialImages)
	var wg sync.WaitGroup
	for i, t := range p.tasks {
		wg.Go(func() {
			img, err := a.run(ctx, t, p.submitter, p.partials, func(png []byte) {
				select {
				case partial <- png:
				default:
				}
			})
			done <- result{i, img, err}
		})
	}
	// The tasks end before the handler returns: on the first failure the
	// rest are cancelled, and wg is waited on either way.
	defer wg.Wait()
	if p.stream {
		a.stream(w, p, done, partial, cancel)
		return
	}
	imgs := make([]image, len(p.tasks))
	for range p.tasks {
		res := <-done
		if res.err != nil {
			cancel()
			writeError(w, a.submitError(res.err))
			return
		}
		imgs[res.i] = res.img
	}
	type datum struct {
		B64JSON string `json:"b64_json,omitempty"`
		URL     string `json:"url,omitempty"`
	}
	out := struct {
		Created      int64   `json:"created"`
		Data         []datum `json:"data"`
		Background   string  `json:"background"`
		OutputFormat string  `json:"output_format"`
		Quality      string  `json:"quality"`
		Size         string  `json:"size"`
	}{Created: time.Now().Unix(), Background: "opaque", OutputFormat: "png", Quality: p.quality, Size: p.size}
	for _, img := range imgs {
		if p.url {
			out.Data = append(out.Data, datum{URL: "http://" + r.Host + "/v1/blocks/" + img.cid})
		} else {
			out.Data = append(out.Data, datum{B64JSON: base64.StdEncoding.EncodeToString(img.png)})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

type result struct {
	i   int
	img image
	err error
}

// stream answers with Server-Sent Events as the official clients parse
// them: image_generation.partial_image for each preview a host sent (the
// kernel's real intermediate state; hosts whose kernel makes none send
// none), numbered in the order they arrive, and one
// image_generation.completed per image, in the order they finish. A
// failure after the events began is an "error" event, which the clients
// raise as an error.
func (a *api) stream(w http.ResponseWriter, p *plan, done <-chan result, partial <-chan []byte, cancel context.CancelFunc) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	send := func(event string, v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		if flusher != nil {
			flusher.Flush()
		}
	}
	if flusher != nil {
		flusher.Flush() // headers now: the client knows the request was accepted
	}
	index := 0
	sendPartial := func(png []byte) {
		send(p.event+".partial_image", map[string]any{
			"type":                p.event + ".partial_image",
			"b64_json":            base64.StdEncoding.EncodeToString(png),
			"partial_image_index": index,
			"created_at":          time.Now().Unix(),
			"size":                p.size,
			"quality":             p.quality,
			"background":          "opaque",
			"output_format":       "png",
		})
		index++
	}
	for range p.tasks {
		var res result
	wait:
		for {
			select {
			case png := <-partial:
				sendPartial(png)
			case res = <-done:
				break wait
			}
		}
		if res.err != nil {
			cancel()
			e := a.submitError(res.err)
			send("error", map[string]any{"type": "error", "error": e})
			return
		}
		send(p.event+".completed", map[string]any{
			"type":          p.event + ".completed",
			"b64_json":      base64.StdEncoding.EncodeToString(res.img.png),
			"created_at":    time.Now().Unix(),
			"size":          p.size,
			"quality":       p.quality,
			"background":    "opaque",
			"output_format": "png",
		})
	}
}

// run submits one task, asking for previews partial images (each passed to
// onPartial as it arrives), and picks its PNG.
func (a *api) run(ctx context.Context, t protocol.Task, submitter string, previews int, onPartial func([]byte)) (image, error) {
	opts := node.SubmitOptions{Submitter: submitter, Previews: previews}
	if previews > 0 {
		opts.Progress = func(pr node.Progress) {
			if pr.Stage == "preview" && len(pr.Preview) > 0 {
				onPartial(pr.Preview)
			}
		}
	}
	res, err := a.s.Submit(ctx, t, opts)
	if err != nil {
		return image{}, err
	}
	if res.Manifest != nil {
		for i, o := range res.Manifest.Outputs {
			if o.MediaType == "image/png" && i < len(res.Blocks) {
				return image{png: res.Blocks[i], cid: o.CID.String()}, nil
			}
		}
	}
	return image{}, errNoPNG
}

var errNoPNG = errors.New("the host's result has no PNG output")

// submitError maps a failed task to the status the clients expect.
func (a *api) submitError(err error) *apiError {
	var re *protocol.RemoteError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		// The node waits out a busy swarm until the task's deadline: if it
		// passed, the swarm was saturated for that long.
		return &apiError{status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: strp("swarm_saturated"),
			Message: "the swarm stayed busy past the task's deadline; retry later: " + oneLine(err), retryAfter: retryAfter}
	case errors.Is(err, protocol.ErrBadTask), errors.As(err, &re) && re.Code == protocol.CodeBadRequest:
		return badRequest("", oneLine(err))
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads this.
		return &apiError{status: 499, Type: "server_error", Message: "request cancelled"}
	}
	// Every host the node tried failed, or sent a result without a PNG: the
	// node is a gateway to the swarm, and its upstream failed.
	a.log.Warn("generation failed", "err", err)
	return &apiError{status: http.StatusBadGateway, Type: "server_error", Message: "the swarm could not make the image: " + oneLine(err)}
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// readBody reads at most maxBody bytes of the body; more is a 413.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *apiError) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxBody)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &apiError{status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error",
				Message: fmt.Sprintf("request body over %d KiB", maxBody>>10)}
		}
		return nil, badRequest("", "reading body: "+err.Error())
	}
	return buf.Bytes(), nil
}
