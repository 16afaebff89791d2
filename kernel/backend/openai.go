package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

const kindOpenAI = "openai"

// OpenAI is a kernel over an OpenAI-compatible image server:
// stable-diffusion.cpp's sd-server, LocalAI, or another gpunet node's local
// API or gateway. Its models are those of GET /v1/models, named as the
// server names them (WithPrefix adds a prefix); a task runs as POST
// /v1/images/generations (JSON, response_format b64_json), or
// /v1/images/edits (multipart) for an edit.
//
// The task's seed, steps and negative prompt go in the body's "seed",
// "steps" and "negative_prompt" fields, which gpunet and sd-server read; a
// server that ignores them cannot be detected from its answer, so point
// this only at servers that honour them. The only param taken is an
// edit's "strength". The API has no progress: progress is reported once,
// at the end, and no previews are sent.
//
// Never point it at a gateway of the swarm the host itself serves: the
// gateway could route the task back to this host.
type OpenAI struct {
	*base
}

var _ kernel.Editor = (*OpenAI)(nil)

// NewOpenAI returns an adapter for the server at rawURL (e.g.
// http://127.0.0.1:1234; a trailing /v1 is allowed) after a first health
// check. WithAPIKey sets the bearer key. Close stops its health loop.
func NewOpenAI(ctx context.Context, rawURL string, opts ...Option) (*OpenAI, error) {
	b, err := newBase(kindOpenAI, strings.TrimSuffix(strings.TrimRight(rawURL, "/"), "/v1"), "", opts)
	if err != nil {
		return nil, err
	}
	o := &OpenAI{base: b}
	b.list = o.list
	if err := b.start(ctx); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *OpenAI) list(ctx context.Context) ([]remoteModel, error) {
	var page struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := o.doJSON(ctx, "listing models", "GET", "/v1/models", nil, nil, &page); err != nil {
		return nil, err
	}
	out := make([]remoteModel, 0, len(page.Data))
	for _, m := range page.Data {
		if m.ID != "" {
			out = append(out, remoteModel{id: m.ID, name: m.ID})
		}
	}
	return out, nil
}

// Name returns the kernel's name, "openai-v1" unless WithName set one.
func (o *OpenAI) Name() string { return o.cfg.name }

// openaiRequest is the JSON body of POST /v1/images/generations, with the
// extra fields gpunet and sd-server read.
type openaiRequest struct {
	Model          string `json:"model"`
	Prompt         string `json:"prompt"`
	N              int    `json:"n"`
	Size           string `json:"size"`
	ResponseFormat string `json:"response_format"`
	Seed           uint64 `json:"seed"`
	Steps          uint32 `json:"steps"`
	NegativePrompt string `json:"negative_prompt,omitempty"`
}

// openaiResponse is the images response.
type openaiResponse struct {
	Data []struct {
		B64JSON string `json:"b64_json"`
		URL     string `json:"url"`
	} `json:"data"`
}

// Run generates t with POST /v1/images/generations.
func (o *OpenAI) Run(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(t.Inputs) > 0 {
		return nil, fmt.Errorf("%s: %w", o.Name(), kernel.ErrInputsNotGiven)
	}
	id, err := checkTask(o.base, o.Name(), t, nil)
	if err != nil {
		return nil, err
	}
	req := openaiRequest{
		Model: id, Prompt: t.Prompt, N: 1, Size: fmt.Sprintf("%dx%d", t.Width, t.Height), ResponseFormat: "b64_json",
		Seed: t.Seed, Steps: t.Steps, NegativePrompt: t.NegativePrompt,
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	return o.generate(ctx, t, "/v1/images/generations", body, "application/json", progress)
}

// Edit runs t with POST /v1/images/edits: its input images as "image" (or
// "image[]" when there are several), its mask as "mask", and its strength
// (kernel.DefaultStrength when the task has none) as "strength".
func (o *OpenAI) Edit(ctx context.Context, t protocol.Task, in kernel.Inputs, progress kernel.Progress, _ []int, _ kernel.PreviewFunc) ([]kernel.Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkInputs(o.kind, t, in, protocol.MaxInputs); err != nil {
		return nil, err
	}
	id, err := checkTask(o.base, o.Name(), t, []string{"strength"})
	if err != nil {
		return nil, err
	}
	pm, err := kernel.ParseStrength(t.Params["strength"])
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fields := [][2]string{
		{"model", id}, {"prompt", t.Prompt}, {"n", "1"}, {"size", fmt.Sprintf("%dx%d", t.Width, t.Height)},
		{"response_format", "b64_json"}, {"seed", strconv.FormatUint(t.Seed, 10)},
		{"steps", strconv.FormatUint(uint64(t.Steps), 10)},
		{"strength", strconv.FormatFloat(float64(pm)/1000, 'f', -1, 64)},
	}
	if t.NegativePrompt != "" {
		fields = append(fields, [2]string{"negative_prompt", t.NegativePrompt})
	}
	for _, f := range fields {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return nil, err
		}
	}
	field := "image"
	if len(in.Images) > 1 {
		field = "image[]"
	}
	for i, img := range in.Images {
		if err := writeFile(mw, field, fmt.Sprintf("image-%d", i), img); err != nil {
			return nil, err
		}
	}
	if in.Mask != nil {
		if err := writeFile(mw, "mask", "mask", in.Mask); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	return o.generate(ctx, t, "/v1/images/edits", buf.Bytes(), mw.FormDataContentType(), progress)
}

// writeFile adds one image file part, named by its format.
func writeFile(mw *multipart.Writer, field, name string, b []byte) error {
	cfg, err := kernel.DecodeInputConfig(b)
	if err != nil {
		return err
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename="%s.%s"`, field, name, cfg.Format))
	h.Set("Content-Type", "image/"+cfg.Format)
	w, err := mw.CreatePart(h)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (o *OpenAI) generate(ctx context.Context, t protocol.Task, path string, body []byte, ct string, progress kernel.Progress) ([]kernel.Output, error) {
	rctx, cancel := o.runContext(ctx)
	defer cancel()
	data, err := o.do(rctx, "generating", "POST", path, nil, bytes.NewReader(body), ct)
	if err != nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, taskError(o.kind, err)
	}
	var resp openaiResponse
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("%s backend: the answer is not the JSON expected (%v): %.80q", o.kind, err, data)
	}
	switch {
	case len(resp.Data) != 1:
		return nil, fmt.Errorf("%s backend answered %d images for n=1", o.kind, len(resp.Data))
	case resp.Data[0].B64JSON == "":
		return nil, fmt.Errorf("%s backend answered no b64_json (a url?): it must honour response_format b64_json", o.kind)
	}
	img, err := decodeB64(resp.Data[0].B64JSON)
	if err != nil {
		return nil, fmt.Errorf("%s backend answered an image that is not base64: %w", o.kind, err)
	}
	if err := checkOutput(o.kind, img, t); err != nil {
		return nil, err
	}
	if progress != nil {
		progress(int(t.Steps), int(t.Steps))
	}
	return []kernel.Output{{MediaType: "image/png", Data: img}}, nil
}
