package backend

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime/multipart"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/coder/websocket"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

const kindComfyUI = "comfyui"

//go:embed graphs/comfyui-txt2img.json graphs/comfyui-img2img.json
var graphFiles embed.FS

// DefaultGraph returns the API-format ComfyUI workflow ComfyUI runs a
// task of the given kind with ("txt2img" or "img2img") when the host gives
// none of its own: the default checkpoint → prompt → KSampler → VAE →
// SaveImage graph, and for an edit LoadImage → ImageScale (to the task's
// size) → VAEEncode in place of the empty latent.
func DefaultGraph(kind string) []byte {
	b, err := graphFiles.ReadFile("graphs/comfyui-" + kind + ".json")
	if err != nil {
		return nil
	}
	return b
}

// WithWorkflows sets the ComfyUI graphs (API format, "Save (API)" in
// ComfyUI) for plain tasks and for edits; nil keeps the default. A graph
// names the task's fields by string values "{{slot}}" or "{{slot=default}}"
// in its nodes' inputs, replaced at each run by the task's value with the
// type ComfyUI expects:
//
//	prompt, negative, ckpt_name, sampler, scheduler, image  strings
//	seed, steps, width, height, cfg, denoise                 numbers
//
// A txt2img graph must have prompt, seed, steps, width, height and
// ckpt_name slots; an img2img graph also image (the uploaded input's file
// name) and denoise (the task's strength). The node with the steps slot is
// the sampler whose progress is reported; the graph must have exactly one
// SaveImage node, whose image is the output. A task whose negative prompt
// or param has no slot is refused, not run without it.
func WithWorkflows(txt2img, img2img []byte) Option {
	return func(c *config) {
		c.graphs = map[string][]byte{"txt2img": txt2img, "img2img": img2img}
	}
}

// graph is a checked API-format workflow.
type graph struct {
	raw     []byte
	slots   map[string]bool // slot names used
	sampler string          // id of the node with the steps slot
	output  string          // id of the SaveImage node
}

// comfyNode is one node of an API-format graph.
type comfyNode struct {
	ClassType string          `json:"class_type"`
	Inputs    map[string]any  `json:"inputs"`
	Meta      json.RawMessage `json:"_meta,omitempty"`
}

var slotRE = regexp.MustCompile(`^\{\{([a-z_]+)(?:=(.*))?\}\}$`)

// slotTypes are the slots a graph may use: true for numbers.
var slotTypes = map[string]bool{
	"prompt": false, "negative": false, "ckpt_name": false, "sampler": false, "scheduler": false, "image": false,
	"seed": true, "steps": true, "width": true, "height": true, "cfg": true, "denoise": true,
}

// parseGraph checks a workflow of kind ("txt2img", "img2img").
func parseGraph(kind string, raw []byte) (*graph, error) {
	var nodes map[string]comfyNode
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return nil, fmt.Errorf("%s graph: not an API-format workflow (export it with \"Save (API)\"): %w", kind, err)
	}
	g := &graph{raw: raw, slots: map[string]bool{}}
	for id, n := range nodes {
		if n.ClassType == "" {
			return nil, fmt.Errorf("%s graph: node %s has no class_type: is it an API-format workflow (\"Save (API)\")?", kind, id)
		}
		if n.ClassType == "SaveImage" {
			if g.output != "" {
				return nil, fmt.Errorf("%s graph: two SaveImage nodes (%s and %s): the output must be one image", kind, g.output, id)
			}
			g.output = id
		}
		for _, v := range n.Inputs {
			s, ok := v.(string)
			if !ok {
				continue
			}
			m := slotRE.FindStringSubmatch(s)
			if m == nil {
				continue
			}
			num, known := slotTypes[m[1]]
			if !known {
				return nil, fmt.Errorf("%s graph: node %s: unknown slot %q", kind, id, m[1])
			}
			if m[2] != "" && num {
				if _, err := strconv.ParseFloat(m[2], 64); err != nil {
					return nil, fmt.Errorf("%s graph: node %s: slot %s default %q is not a number", kind, id, m[1], m[2])
				}
			}
			g.slots[m[1]] = true
			if m[1] == "steps" {
				g.sampler = id
			}
		}
	}
	need := []string{"prompt", "seed", "steps", "width", "height", "ckpt_name"}
	if kind == "img2img" {
		need = append(need, "image", "denoise")
	}
	for _, s := range need {
		if !g.slots[s] {
			return nil, fmt.Errorf("%s graph: no {{%s}} slot: a graph that cannot take the task's %s would ignore it", kind, s, s)
		}
	}
	if g.output == "" {
		return nil, fmt.Errorf("%s graph: no SaveImage node: gpunet takes its image as the output", kind)
	}
	return g, nil
}

// fill returns the graph with its slots replaced by vals (strings, or
// float64 for numbers); a slot without a value takes its default.
func (g *graph) fill(vals map[string]any) (map[string]comfyNode, error) {
	var nodes map[string]comfyNode
	if err := json.Unmarshal(g.raw, &nodes); err != nil {
		return nil, err
	}
	for id, n := range nodes {
		for k, v := range n.Inputs {
			s, ok := v.(string)
			if !ok {
				continue
			}
			m := slotRE.FindStringSubmatch(s)
			if m == nil {
				continue
			}
			val, ok := vals[m[1]]
			switch {
			case ok:
			case m[2] != "" && slotTypes[m[1]]:
				val, _ = strconv.ParseFloat(m[2], 64)
			case m[2] != "":
				val = m[2]
			case m[1] == "negative":
				val = ""
			default:
				return nil, fmt.Errorf("node %s: no value for slot %s", id, m[1])
			}
			n.Inputs[k] = val
		}
	}
	return nodes, nil
}

// ComfyUI is a kernel over a ComfyUI server. Its models are the
// checkpoints CheckpointLoaderSimple can load (GET
// /object_info/CheckpointLoaderSimple, or /models/checkpoints), named
// "comfyui/<file name without extension>". A task runs as an API-format
// graph (WithWorkflows, or DefaultGraph) with its slots filled, queued
// with POST /prompt; progress and previews come over the /ws websocket
// (start ComfyUI with --preview-method auto for previews), the image from
// GET /history/{prompt_id} and /view. An edit's input is uploaded first
// with POST /upload/image. A cancelled task is taken off the queue (POST
// /queue) or, once it runs, stopped (POST /interrupt).
//
// Params: "cfg", "sampler", "scheduler" where the graph has those slots,
// and "strength" for an edit. Masks are refused: the default graphs do
// not inpaint.
type ComfyUI struct {
	*base
	graphs map[string]*graph
}

var (
	_ kernel.Editor    = (*ComfyUI)(nil)
	_ kernel.Previewer = (*ComfyUI)(nil)
)

// NewComfyUI returns an adapter for the ComfyUI at rawURL (e.g.
// http://127.0.0.1:8188) after checking its graphs and a first health
// check. Close stops its health loop.
func NewComfyUI(ctx context.Context, rawURL string, opts ...Option) (*ComfyUI, error) {
	b, err := newBase(kindComfyUI, rawURL, "comfyui/", opts)
	if err != nil {
		return nil, err
	}
	c := &ComfyUI{base: b, graphs: map[string]*graph{}}
	for _, kind := range []string{"txt2img", "img2img"} {
		raw := b.cfg.graphs[kind]
		if raw == nil {
			raw = DefaultGraph(kind)
		}
		g, err := parseGraph(kind, raw)
		if err != nil {
			return nil, fmt.Errorf("comfyui backend: %w", err)
		}
		c.graphs[kind] = g
	}
	b.list = c.list
	if err := b.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *ComfyUI) list(ctx context.Context) ([]remoteModel, error) {
	var info map[string]struct {
		Input struct {
			Required map[string][]json.RawMessage `json:"required"`
		} `json:"input"`
	}
	var names []string
	err := c.doJSON(ctx, "listing models", "GET", "/object_info/CheckpointLoaderSimple", nil, nil, &info)
	if err == nil {
		ck := info["CheckpointLoaderSimple"].Input.Required["ckpt_name"]
		var combo string
		var opts struct {
			Options []string `json:"options"`
		}
		switch {
		case len(ck) == 0:
			err = errors.New("listing models: no ckpt_name in /object_info/CheckpointLoaderSimple")
		case json.Unmarshal(ck[0], &names) == nil:
			// Older ComfyUI: [["a.safetensors", ...], {...}].
		case json.Unmarshal(ck[0], &combo) == nil && combo == "COMBO" && len(ck) > 1 && json.Unmarshal(ck[1], &opts) == nil:
			names = opts.Options // newer: ["COMBO", {"options": [...]}]
		default:
			err = fmt.Errorf("listing models: ckpt_name in an unknown shape: %.80s", ck[0])
		}
	}
	if err != nil {
		// Older and newer servers alike answer the plain list.
		if err2 := c.doJSON(ctx, "listing models", "GET", "/models/checkpoints", nil, nil, &names); err2 != nil {
			return nil, errors.Join(err, err2)
		}
	}
	out := make([]remoteModel, 0, len(names))
	for _, n := range names {
		out = append(out, remoteModel{id: n, name: n})
	}
	return out, nil
}

// Name returns the kernel's name, "comfyui-v1" unless WithName set one.
func (c *ComfyUI) Name() string { return c.cfg.name }

// Run runs t through the txt2img graph.
func (c *ComfyUI) Run(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
	return c.run(ctx, t, nil, progress, nil, nil)
}

// RunWithPreviews is Run with ComfyUI's sampler previews passed on at the
// steps in at (when ComfyUI makes them: --preview-method).
func (c *ComfyUI) RunWithPreviews(ctx context.Context, t protocol.Task, progress kernel.Progress, at []int, preview kernel.PreviewFunc) ([]kernel.Output, error) {
	return c.run(ctx, t, nil, progress, at, preview)
}

// Edit uploads t's one input image and runs the img2img graph with it,
// its strength as the sampler's denoise.
func (c *ComfyUI) Edit(ctx context.Context, t protocol.Task, in kernel.Inputs, progress kernel.Progress, at []int, preview kernel.PreviewFunc) ([]kernel.Output, error) {
	return c.run(ctx, t, &in, progress, at, preview)
}

// wsMessage is a JSON message of ComfyUI's /ws.
type wsMessage struct {
	Type string `json:"type"`
	Data struct {
		PromptID         string          `json:"prompt_id"`
		Node             json.RawMessage `json:"node"`
		Value            int             `json:"value"`
		Max              int             `json:"max"`
		ExceptionMessage string          `json:"exception_message"`
		ExceptionType    string          `json:"exception_type"`
		NodeType         string          `json:"node_type"`
	} `json:"data"`
}

// Binary /ws frames: a big-endian event type, then its payload.
const (
	comfyPreviewImage             = 1 // 4-byte format (1 JPEG, 2 PNG), then the image
	comfyPreviewImageWithMetadata = 4 // 4-byte metadata length, metadata JSON, then the image
)

func (c *ComfyUI) run(ctx context.Context, t protocol.Task, in *kernel.Inputs, progress kernel.Progress, at []int, preview kernel.PreviewFunc) ([]kernel.Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	kind := "txt2img"
	switch {
	case in != nil:
		if err := checkInputs(c.kind, t, *in, 1); err != nil {
			return nil, err
		}
		if in.Mask != nil {
			return nil, fmt.Errorf("%w: the comfyui backend's graph does not inpaint: send the edit without a mask", protocol.ErrBadTask)
		}
		kind = "img2img"
	case len(t.Inputs) > 0:
		return nil, fmt.Errorf("%s: %w", c.Name(), kernel.ErrInputsNotGiven)
	}
	g := c.graphs[kind]
	var params []string
	for _, p := range []string{"cfg", "sampler", "scheduler"} {
		if g.slots[p] {
			params = append(params, p)
		}
	}
	if in != nil {
		params = append(params, "strength")
	}
	ckpt, err := checkTask(c.base, c.Name(), t, params)
	if err != nil {
		return nil, err
	}
	if t.NegativePrompt != "" && !g.slots["negative"] {
		return nil, fmt.Errorf("%w: the comfyui backend's %s graph has no negative prompt slot", protocol.ErrBadTask, kind)
	}
	vals := map[string]any{
		"prompt": t.Prompt, "negative": t.NegativePrompt, "ckpt_name": ckpt,
		"seed": float64(t.Seed), "steps": float64(t.Steps), "width": float64(t.Width), "height": float64(t.Height),
	}
	if s, ok := t.Params["cfg"]; ok {
		cfg, err := strconv.ParseFloat(s, 64)
		if err != nil || !(cfg > 0 && cfg <= 30) {
			return nil, fmt.Errorf("%w: cfg %.40q: want a number above 0 and at most 30, e.g. 7", protocol.ErrBadTask, s)
		}
		vals["cfg"] = cfg
	}
	for _, p := range []string{"sampler", "scheduler"} {
		if s, ok := t.Params[p]; ok {
			vals[p] = s
		}
	}
	if in != nil {
		pm, err := kernel.ParseStrength(t.Params["strength"])
		if err != nil {
			return nil, err
		}
		vals["denoise"] = float64(pm) / 1000
	}

	rctx, cancel := c.runContext(ctx)
	defer cancel()
	fail := func(err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if rctx.Err() != nil {
			return fmt.Errorf("%s backend: %w", c.kind, context.Cause(rctx))
		}
		return err
	}
	if in != nil {
		name, err := c.upload(rctx, in.Images[0], t.Inputs[0].Cid.String())
		if err != nil {
			return nil, fail(fmt.Errorf("%s backend: %w", c.kind, err))
		}
		vals["image"] = name
	}
	nodes, err := g.fill(vals)
	if err != nil {
		return nil, fmt.Errorf("%s backend: filling the %s graph: %w", c.kind, kind, err)
	}

	// The websocket first: a prompt that runs at once must not finish
	// before anyone listens.
	clientID := newClientID()
	ws, err := c.dial(rctx, clientID)
	if err != nil {
		return nil, fail(fmt.Errorf("%s backend: opening /ws: backend unreachable: %w", c.kind, err))
	}
	defer ws.CloseNow()

	var queued struct {
		PromptID string `json:"prompt_id"`
	}
	qctx, qcancel := context.WithTimeout(rctx, c.cfg.requestTimeout)
	err = c.doJSON(qctx, "queueing the prompt", "POST", "/prompt", nil, map[string]any{"prompt": nodes, "client_id": clientID}, &queued)
	qcancel()
	if err != nil {
		return nil, fail(taskError(c.kind, err))
	}
	if queued.PromptID == "" {
		return nil, fmt.Errorf("%s backend: /prompt answered no prompt_id", c.kind)
	}

	started, err := c.follow(rctx, ws, queued.PromptID, g, t, progress, newPreviewer(at, preview, t, func(err error) {
		c.log.Debug("preview dropped", "err", err)
	}))
	if err != nil {
		if rctx.Err() != nil {
			c.cancelPrompt(queued.PromptID, started)
		}
		return nil, fail(err)
	}
	out, err := c.result(rctx, queued.PromptID, g, t)
	if err != nil {
		return nil, fail(err)
	}
	if progress != nil {
		progress(int(t.Steps), int(t.Steps))
	}
	return out, nil
}

func newClientID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// dial opens /ws?clientId=id.
func (c *ComfyUI) dial(ctx context.Context, id string) (*websocket.Conn, error) {
	u := *c.root
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	u.Path = strings.TrimRight(u.Path, "/") + "/ws"
	u.RawQuery = url.Values{"clientId": {id}}.Encode()
	opts := &websocket.DialOptions{HTTPClient: c.cfg.client}
	if c.cfg.apiKey != "" {
		opts.HTTPHeader = map[string][]string{"Authorization": {"Bearer " + c.cfg.apiKey}}
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.requestTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(dctx, u.String(), opts)
	if err != nil {
		return nil, err
	}
	// A preview is at most a latent-sized image; a result never comes
	// this way.
	ws.SetReadLimit(protocol.MaxBlockBytes)
	return ws, nil
}

// follow reads /ws until the prompt is done, passing on its sampler's
// progress and previews. started says whether it began running (for
// cancelling it).
func (c *ComfyUI) follow(ctx context.Context, ws *websocket.Conn, id string, g *graph, t protocol.Task, progress kernel.Progress, prev *previewer) (started bool, err error) {
	total, last := int(t.Steps), 0
	samplerNode, _ := json.Marshal(g.sampler)
	for {
		typ, data, err := ws.Read(ctx)
		if err != nil {
			return started, fmt.Errorf("%s backend: the websocket closed before the prompt finished (backend gone?): %w", c.kind, err)
		}
		if typ == websocket.MessageBinary {
			if img := previewImage(data); started && img != nil {
				prev.offer(last, img)
			}
			continue
		}
		var m wsMessage
		if json.Unmarshal(data, &m) != nil {
			c.log.Debug("websocket: not JSON", "data", clip(string(data)))
			continue
		}
		if m.Data.PromptID != id && m.Type != "progress" {
			continue // status, or another client's prompt
		}
		switch m.Type {
		case "execution_start":
			started = true
		case "progress":
			// Only the sampler's steps: a VAE or upscaler node reports
			// its own.
			if (m.Data.PromptID != "" && m.Data.PromptID != id) || m.Data.Max <= 0 ||
				(len(m.Data.Node) > 0 && !bytes.Equal(m.Data.Node, samplerNode)) {
				continue
			}
			started = true
			if k := min(m.Data.Value*total/m.Data.Max, total-1); k > last {
				last = k
				if progress != nil {
					progress(k, total)
				}
			}
		case "executing":
			if string(m.Data.Node) == "null" {
				return started, nil
			}
			started = true
		case "execution_success":
			return started, nil
		case "execution_error":
			return started, fmt.Errorf("%s backend: node %s failed: %s: %s", c.kind, m.Data.NodeType, m.Data.ExceptionType, clip(m.Data.ExceptionMessage))
		case "execution_interrupted":
			return started, fmt.Errorf("%s backend: the prompt was interrupted (from ComfyUI's own window?)", c.kind)
		}
	}
}

// previewImage returns the image of a binary preview frame, or nil.
func previewImage(b []byte) []byte {
	if len(b) < 8 {
		return nil
	}
	switch binary.BigEndian.Uint32(b) {
	case comfyPreviewImage:
		return b[8:]
	case comfyPreviewImageWithMetadata:
		n := int(binary.BigEndian.Uint32(b[4:]))
		if n < 0 || 8+n > len(b) {
			return nil
		}
		return b[8+n:]
	}
	return nil
}

// comfyImage is one image in a history entry's outputs.
type comfyImage struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

// result reads the prompt's history and fetches its SaveImage image.
func (c *ComfyUI) result(ctx context.Context, id string, g *graph, t protocol.Task) ([]kernel.Output, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.requestTimeout)
	defer cancel()
	var hist map[string]struct {
		Outputs map[string]struct {
			Images []comfyImage `json:"images"`
		} `json:"outputs"`
		Status struct {
			StatusStr string `json:"status_str"`
			Completed bool   `json:"completed"`
		} `json:"status"`
	}
	if err := c.doJSON(ctx, "reading the prompt's history", "GET", "/history/"+url.PathEscape(id), nil, nil, &hist); err != nil {
		return nil, fmt.Errorf("%s backend: %w", c.kind, err)
	}
	h, ok := hist[id]
	if !ok {
		return nil, fmt.Errorf("%s backend: no history for prompt %s", c.kind, id)
	}
	if h.Status.StatusStr != "" && h.Status.StatusStr != "success" {
		return nil, fmt.Errorf("%s backend: prompt %s ended with status %q", c.kind, id, h.Status.StatusStr)
	}
	imgs := h.Outputs[g.output].Images
	if len(imgs) != 1 {
		return nil, fmt.Errorf("%s backend: the SaveImage node (%s) made %d images, want 1", c.kind, g.output, len(imgs))
	}
	q := url.Values{"filename": {imgs[0].Filename}, "subfolder": {imgs[0].Subfolder}, "type": {imgs[0].Type}}
	data, err := c.do(ctx, "fetching the image", "GET", "/view", q, nil, "")
	if err != nil {
		return nil, fmt.Errorf("%s backend: %w", c.kind, err)
	}
	if err := checkOutput(c.kind, data, t); err != nil {
		return nil, err
	}
	return []kernel.Output{{MediaType: "image/png", Data: data}}, nil
}

// upload sends an input image to ComfyUI's input folder, named by its CID
// so that the same input is one file however often it is used, and
// returns the name LoadImage takes.
func (c *ComfyUI) upload(ctx context.Context, img []byte, cid string) (string, error) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if err := writeFile(mw, "image", "gpunet-"+cid, img); err != nil {
		return "", err
	}
	for _, f := range [][2]string{{"type", "input"}, {"overwrite", "true"}} {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return "", err
		}
	}
	if err := mw.Close(); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.requestTimeout)
	defer cancel()
	data, err := c.do(ctx, "uploading the input image", "POST", "/upload/image", nil, &buf, mw.FormDataContentType())
	if err != nil {
		return "", err
	}
	var up struct {
		Name      string `json:"name"`
		Subfolder string `json:"subfolder"`
	}
	if err := json.Unmarshal(data, &up); err != nil || up.Name == "" {
		return "", fmt.Errorf("uploading the input image: answer %.80q is not {\"name\": ...}", data)
	}
	if up.Subfolder != "" {
		return up.Subfolder + "/" + up.Name, nil
	}
	return up.Name, nil
}

// cancelPrompt takes the prompt off the queue, and stops it if it runs.
// An older ComfyUI's /interrupt stops whatever runs, so it is sent only
// once this prompt started.
func (c *ComfyUI) cancelPrompt(id string, started bool) {
	ctx, cancel := context.WithTimeout(context.Background(), interruptTimeout)
	defer cancel()
	if err := c.doJSON(ctx, "deleting the prompt", "POST", "/queue", nil, map[string]any{"delete": []string{id}}, nil); err != nil {
		c.log.Debug("deleting the prompt failed", "err", err)
	}
	if !started {
		return
	}
	if err := c.doJSON(ctx, "interrupting", "POST", "/interrupt", nil, map[string]string{"prompt_id": id}, nil); err != nil {
		c.log.Debug("interrupt failed", "err", err)
	}
}
