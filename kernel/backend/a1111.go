package backend

import (
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

const kindA1111 = "a1111"

// interruptTimeout bounds a cancel call (A1111's /interrupt, ComfyUI's
// /interrupt and /queue): the task is over either way, the call only
// frees the GPU sooner.
const interruptTimeout = 10 * time.Second

// A1111 is a kernel over an AUTOMATIC1111 or Forge web UI started with
// --api. Its models are the UI's checkpoints (GET /sdapi/v1/sd-models),
// named "a1111/<model_name>"; a task runs as POST /sdapi/v1/txt2img, or
// /img2img for an edit, after POST /sdapi/v1/options has loaded the task's
// checkpoint. While it runs, GET /sdapi/v1/progress gives its step and
// live preview; a cancelled task is stopped with POST /sdapi/v1/interrupt.
//
// Params: "sampler" (sampler_name, e.g. "Euler a"), "scheduler"
// ("karras", …), "cfg" (cfg_scale, 0 < cfg ≤ 30) and, for an edit,
// "strength" (denoising_strength). Any other param is refused: the
// backend would ignore it.
//
// A1111 runs one job at a time, so A1111 sends it one task at a time:
// others wait (or end with their ctx), and the progress polled is the
// task's own unless someone uses the UI at the same time.
type A1111 struct {
	*base
	sem     chan struct{} // one task at a time
	current string        // checkpoint title last set; under sem
}

var (
	_ kernel.Editor    = (*A1111)(nil)
	_ kernel.Previewer = (*A1111)(nil)
)

// NewA1111 returns an adapter for the web UI at rawURL (e.g.
// http://127.0.0.1:7860) after a first health check: it fails if the API
// does not answer or lists no checkpoint. Close stops its health loop.
func NewA1111(ctx context.Context, rawURL string, opts ...Option) (*A1111, error) {
	b, err := newBase(kindA1111, rawURL, "a1111/", opts)
	if err != nil {
		return nil, err
	}
	a := &A1111{base: b, sem: make(chan struct{}, 1)}
	b.list = a.list
	if err := b.start(ctx); err != nil {
		return nil, fmt.Errorf("%w (is it started with --api?)", err)
	}
	return a, nil
}

// a1111Model is one item of GET /sdapi/v1/sd-models (SDModelItem).
type a1111Model struct {
	Title     string  `json:"title"`
	ModelName string  `json:"model_name"`
	Hash      *string `json:"hash"`
	Sha256    *string `json:"sha256"`
	Filename  string  `json:"filename"`
}

func (a *A1111) list(ctx context.Context) ([]remoteModel, error) {
	var ms []a1111Model
	if err := a.doJSON(ctx, "listing models", "GET", "/sdapi/v1/sd-models", nil, nil, &ms); err != nil {
		return nil, err
	}
	out := make([]remoteModel, 0, len(ms))
	for _, m := range ms {
		if m.Title == "" || m.ModelName == "" {
			continue
		}
		rm := remoteModel{id: m.Title, name: m.ModelName}
		if m.Sha256 != nil && isHexDigest(*m.Sha256) {
			rm.digest = strings.ToLower(*m.Sha256)
		}
		out = append(out, rm)
	}
	return out, nil
}

func isHexDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}

// Name returns the kernel's name, "a1111-v1" unless WithName set one.
func (a *A1111) Name() string { return a.cfg.name }

// Run generates t with txt2img.
func (a *A1111) Run(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
	return a.run(ctx, t, nil, progress, nil, nil)
}

// RunWithPreviews is Run with the UI's live previews passed on at the
// steps in at. A1111 makes them only when live previews are on in its
// settings; without them none are sent, which the Previewer contract
// allows.
func (a *A1111) RunWithPreviews(ctx context.Context, t protocol.Task, progress kernel.Progress, at []int, preview kernel.PreviewFunc) ([]kernel.Output, error) {
	return a.run(ctx, t, nil, progress, at, preview)
}

// Edit runs t with img2img: its one input image as init_images, its mask
// (turned into A1111's white-repaints form) as mask, and the strength
// param as denoising_strength.
func (a *A1111) Edit(ctx context.Context, t protocol.Task, in kernel.Inputs, progress kernel.Progress, at []int, preview kernel.PreviewFunc) ([]kernel.Output, error) {
	return a.run(ctx, t, &in, progress, at, preview)
}

// a1111Request is the body of POST /sdapi/v1/txt2img and /img2img
// (StableDiffusionProcessingTxt2Img/Img2Img; testdata/a1111 has samples).
type a1111Request struct {
	Prompt           string         `json:"prompt"`
	NegativePrompt   string         `json:"negative_prompt"`
	Seed             int64          `json:"seed"`
	Steps            int            `json:"steps"`
	Width            int            `json:"width"`
	Height           int            `json:"height"`
	BatchSize        int            `json:"batch_size"`
	NIter            int            `json:"n_iter"`
	SamplerName      string         `json:"sampler_name,omitempty"`
	Scheduler        string         `json:"scheduler,omitempty"`
	CfgScale         *float64       `json:"cfg_scale,omitempty"`
	SendImages       bool           `json:"send_images"`
	SaveImages       bool           `json:"save_images"`
	OverrideSettings map[string]any `json:"override_settings"`
	// false: keep the checkpoint loaded after the job, or every task
	// would reload the weights.
	OverrideSettingsRestoreAfterwards bool `json:"override_settings_restore_afterwards"`

	// img2img only.
	InitImages        []string `json:"init_images,omitempty"`
	DenoisingStrength *float64 `json:"denoising_strength,omitempty"`
	Mask              string   `json:"mask,omitempty"`
	ResizeMode        *int     `json:"resize_mode,omitempty"`
}

// a1111Response is TextToImageResponse / ImageToImageResponse.
type a1111Response struct {
	Images []string `json:"images"`
	Info   string   `json:"info"`
}

// a1111Progress is ProgressResponse.
type a1111Progress struct {
	Progress    float64 `json:"progress"`
	ETARelative float64 `json:"eta_relative"`
	State       struct {
		Interrupted   bool `json:"interrupted"`
		JobCount      int  `json:"job_count"`
		SamplingStep  int  `json:"sampling_step"`
		SamplingSteps int  `json:"sampling_steps"`
	} `json:"state"`
	CurrentImage *string `json:"current_image"`
}

// request builds the generation body of t.
func (a *A1111) request(t protocol.Task, title string, in *kernel.Inputs) (a1111Request, error) {
	r := a1111Request{
		Prompt: t.Prompt, NegativePrompt: t.NegativePrompt,
		Seed: int64(t.Seed), Steps: int(t.Steps), Width: int(t.Width), Height: int(t.Height),
		BatchSize: 1, NIter: 1,
		SamplerName: t.Params["sampler"], Scheduler: t.Params["scheduler"],
		SendImages:       true,
		OverrideSettings: map[string]any{"sd_model_checkpoint": title},
	}
	if s, ok := t.Params["cfg"]; ok {
		cfg, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(cfg) || cfg <= 0 || cfg > 30 {
			return r, fmt.Errorf("%w: cfg %.40q: want a number above 0 and at most 30, e.g. 7", protocol.ErrBadTask, s)
		}
		r.CfgScale = &cfg
	}
	if in == nil {
		return r, nil
	}
	pm, err := kernel.ParseStrength(t.Params["strength"])
	if err != nil {
		return r, err
	}
	strength := float64(pm) / 1000
	justResize := 0 // the input is scaled to the task's size
	r.DenoisingStrength, r.ResizeMode = &strength, &justResize
	r.InitImages = []string{base64.StdEncoding.EncodeToString(in.Images[0])}
	if in.Mask != nil {
		m, err := a1111Mask(in.Mask)
		if err != nil {
			return r, fmt.Errorf("mask: %w", err)
		}
		r.Mask = base64.StdEncoding.EncodeToString(m)
	}
	return r, nil
}

func (a *A1111) run(ctx context.Context, t protocol.Task, in *kernel.Inputs, progress kernel.Progress, at []int, preview kernel.PreviewFunc) ([]kernel.Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	params := []string{"sampler", "scheduler", "cfg"}
	path := "/sdapi/v1/txt2img"
	switch {
	case in != nil:
		if err := checkInputs(a.kind, t, *in, 1); err != nil {
			return nil, err
		}
		params, path = append(params, "strength"), "/sdapi/v1/img2img"
	case len(t.Inputs) > 0:
		return nil, fmt.Errorf("%s: %w", a.Name(), kernel.ErrInputsNotGiven)
	}
	title, err := checkTask(a.base, a.Name(), t, params)
	if err != nil {
		return nil, err
	}
	req, err := a.request(t, title, in)
	if err != nil {
		return nil, err
	}

	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-a.sem }()
	rctx, cancel := a.runContext(ctx)
	defer cancel()

	if a.current != title {
		// Loading a checkpoint is the slow part of a switch; it happens
		// inside this call, so it gets the request timeout, not a poll's.
		octx, ocancel := context.WithTimeout(rctx, a.cfg.requestTimeout)
		err := a.doJSON(octx, "switching to checkpoint "+title, "POST", "/sdapi/v1/options", nil, map[string]string{"sd_model_checkpoint": title}, nil)
		ocancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			a.current = ""
			return nil, fmt.Errorf("%s backend: %w", a.kind, err)
		}
		a.current = title
	}

	type result struct {
		resp a1111Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = a.doJSON(rctx, "generating", "POST", path, nil, req, &r.resp)
		done <- r
	}()

	prev := newPreviewer(at, preview, t, func(err error) { a.log.Debug("preview dropped", "err", err) })
	total, last := int(t.Steps), 0
	tick := time.NewTicker(a.cfg.pollInterval)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if ctx.Err() != nil {
				// The generation call may end (cut by rctx) before this
				// select sees rctx done: the job must still be stopped.
				if r.err != nil {
					a.interrupt()
				}
				return nil, ctx.Err()
			}
			if r.err != nil {
				if rctx.Err() != nil {
					a.interrupt()
					return nil, fmt.Errorf("%s backend: %w", a.kind, context.Cause(rctx))
				}
				a.current = "" // a failed job may have left another checkpoint loaded
				return nil, taskError(a.kind, r.err)
			}
			out, err := a.output(r.resp, t)
			if err != nil {
				return nil, err
			}
			if progress != nil {
				progress(total, total)
			}
			return out, nil
		case <-rctx.Done():
			// Stop the job rather than let it run on for nobody; the
			// generation call ends with rctx, so done comes next.
			a.interrupt()
			<-done
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%s backend: %w", a.kind, context.Cause(rctx))
		case <-tick.C:
			k, img := a.poll(rctx, total, prev)
			if k > last && k < total {
				last = k
				if progress != nil {
					progress(k, total)
				}
			}
			if img != nil {
				prev.offer(k, img)
			}
		}
	}
}

// poll reads the job's progress: its step on the task's scale (img2img
// runs steps × strength sampling steps) and, when a preview is due, the
// live preview's bytes. A failed poll reports nothing: the generation call
// says whether the backend is gone.
func (a *A1111) poll(ctx context.Context, total int, prev *previewer) (int, []byte) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.requestTimeout)
	defer cancel()
	q := url.Values{}
	// Without a preview due, A1111 need not encode its current image.
	if !prev.wants(total - 1) {
		q.Set("skip_current_image", "true")
	}
	var p a1111Progress
	if err := a.doJSON(ctx, "polling progress", "GET", "/sdapi/v1/progress", q, nil, &p); err != nil {
		a.log.Debug("progress poll failed", "err", err)
		return 0, nil
	}
	// Between jobs A1111 reports its last job's steps: progress 0 and no
	// job count mean nothing runs yet (the checkpoint is loading, or
	// another job holds the GPU).
	if p.Progress <= 0 || p.State.JobCount == 0 || p.State.SamplingSteps <= 0 || p.State.SamplingStep < 0 {
		return 0, nil
	}
	k := min(p.State.SamplingStep*total/p.State.SamplingSteps, total)
	if p.CurrentImage == nil || *p.CurrentImage == "" || !prev.wants(k) {
		return k, nil
	}
	img, err := decodeB64(*p.CurrentImage)
	if err != nil {
		a.log.Debug("preview dropped: not base64", "err", err)
		return k, nil
	}
	return k, img
}

// interrupt asks A1111 to stop its job. The task's ctx is over, so the
// call has its own.
func (a *A1111) interrupt() {
	ctx, cancel := context.WithTimeout(context.Background(), interruptTimeout)
	defer cancel()
	if err := a.doJSON(ctx, "interrupting", "POST", "/sdapi/v1/interrupt", nil, nil, nil); err != nil {
		a.log.Debug("interrupt failed", "err", err)
	}
}

// output checks the answer: one image, a PNG of the task's size.
func (a *A1111) output(resp a1111Response, t protocol.Task) ([]kernel.Output, error) {
	if len(resp.Images) == 0 {
		return nil, fmt.Errorf("%s backend answered no image (send_images was asked for)", a.kind)
	}
	data, err := decodeB64(resp.Images[0])
	if err != nil {
		return nil, fmt.Errorf("%s backend answered an image that is not base64: %w", a.kind, err)
	}
	if err := checkOutput(a.kind, data, t); err != nil {
		return nil, err
	}
	return []kernel.Output{{MediaType: "image/png", Data: data}}, nil
}

// decodeB64 decodes standard base64, with or without a data: URL prefix
// (A1111's decoder accepts both, and some forks answer with it).
func decodeB64(s string) ([]byte, error) {
	if strings.HasPrefix(s, "data:") {
		_, s, _ = strings.Cut(s, ",")
	}
	return base64.StdEncoding.DecodeString(strings.TrimSpace(s))
}
