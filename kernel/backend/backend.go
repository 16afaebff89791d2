package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// Defaults of Config; each says why.
const (
	// DefaultHealthInterval is how often a backend's model list is read
	// again. A host learns within this that a backend went away (and stops
	// advertising its models) or came back; a list call costs the backend
	// a directory listing, so a few per minute is nothing.
	DefaultHealthInterval = 15 * time.Second
	// DefaultRequestTimeout bounds every call that is not a generation:
	// listing models, switching one (A1111 loads the weights inside that
	// call: a few seconds from disk, a minute from a slow network share),
	// polling progress, uploading an input, fetching a result.
	DefaultRequestTimeout = 2 * time.Minute
	// DefaultRunTimeout bounds one generation, as kernel.DefaultCommandTimeout
	// bounds a generator's run: 150 steps at 2048×2048 on a mid-range card
	// takes a few minutes, and a wedged backend must not hold a slot for
	// ever.
	DefaultRunTimeout = kernel.DefaultCommandTimeout
	// DefaultPollInterval is how often A1111's progress is polled while it
	// runs a task: each poll with a preview costs the backend a VAE decode
	// and an image encode, so twice a second, not per step.
	DefaultPollInterval = 500 * time.Millisecond

	// maxResponse bounds a backend's answer read into memory: one output
	// block (protocol.MaxBlockBytes) in base64 with its JSON around it.
	maxResponse = protocol.MaxBlockBytes/3*4 + 1<<20
	// maxErrorBody bounds how much of a failed answer goes into an error.
	maxErrorBody = 300
)

// Option configures an adapter.
type Option func(*config)

type config struct {
	name           string
	prefix         *string
	apiKey         string
	healthInterval time.Duration
	requestTimeout time.Duration
	runTimeout     time.Duration
	pollInterval   time.Duration
	log            *slog.Logger
	client         *http.Client
	graphs         map[string][]byte // ComfyUI: "txt2img", "img2img", "inpaint"
}

func defaultConfig() config {
	return config{
		healthInterval: DefaultHealthInterval,
		requestTimeout: DefaultRequestTimeout,
		runTimeout:     DefaultRunTimeout,
		pollInterval:   DefaultPollInterval,
		log:            slog.Default(),
		// No client timeout: each call gets its own deadline from ctx.
		client: &http.Client{},
	}
}

// WithName sets the kernel name recorded in manifests. Default: the kind
// and a version, e.g. "a1111-v1".
func WithName(name string) Option { return func(c *config) { c.name = name } }

// WithPrefix sets what goes before a backend's model name to make a gpunet
// model name. Defaults: "a1111/", "comfyui/", and none for OpenAI (another
// gpunet node's models keep their names, so its results and ours share
// TaskCIDs).
func WithPrefix(p string) Option { return func(c *config) { c.prefix = &p } }

// WithAPIKey sets the key sent as "Authorization: Bearer KEY" (OpenAI) or,
// when it has the form user:password, as basic auth (A1111's --api-auth).
func WithAPIKey(key string) Option { return func(c *config) { c.apiKey = key } }

// WithHealthInterval sets how often the model list is read again; 0 turns
// the periodic check off (the start-up check still runs).
func WithHealthInterval(d time.Duration) Option { return func(c *config) { c.healthInterval = d } }

// WithRequestTimeout bounds every call but a generation.
func WithRequestTimeout(d time.Duration) Option { return func(c *config) { c.requestTimeout = d } }

// WithRunTimeout bounds one generation; 0: only the caller's ctx.
func WithRunTimeout(d time.Duration) Option { return func(c *config) { c.runTimeout = d } }

// WithPollInterval sets how often A1111's progress is read during a run.
func WithPollInterval(d time.Duration) Option { return func(c *config) { c.pollInterval = d } }

// WithLogger sets the adapter's logger.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.log = l
		}
	}
}

// WithHTTPClient sets the HTTP client (a proxy, TLS settings). Its own
// Timeout should be 0: calls carry their deadlines in their contexts.
func WithHTTPClient(h *http.Client) Option {
	return func(c *config) {
		if h != nil {
			c.client = h
		}
	}
}

// remoteModel is one model as a backend lists it.
type remoteModel struct {
	id     string // what the backend is asked for: A1111's title, a file name, an OpenAI model id
	name   string // what the gpunet name is made from
	digest string // sha256 of the weights in hex, "" when the backend does not say
}

// base is what every adapter shares: the backend's address, the client,
// the health loop and the models it found.
type base struct {
	kind string
	root *url.URL
	cfg  config
	log  *slog.Logger
	list func(ctx context.Context) ([]remoteModel, error)

	mu      sync.Mutex
	models  []string          // gpunet names, sorted
	ids     map[string]string // gpunet name -> backend's id
	digests map[string]string // gpunet name -> sha256
	err     error             // of the last check
	changed notifier

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newBase parses rawURL, applies opts and defaults, and leaves the start-up
// check to start.
func newBase(kind, rawURL, prefix string, opts []Option) (*base, error) {
	u, err := url.Parse(strings.TrimRight(rawURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s backend: URL %q: want http://HOST:PORT (e.g. http://127.0.0.1:7860)", kind, rawURL)
	}
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.name == "" {
		cfg.name = kind + "-v1"
	}
	if cfg.prefix == nil {
		cfg.prefix = &prefix
	}
	switch {
	case cfg.healthInterval < 0, cfg.requestTimeout <= 0, cfg.runTimeout < 0, cfg.pollInterval <= 0:
		return nil, fmt.Errorf("%s backend: negative or zero interval or timeout", kind)
	case *cfg.prefix != "" && !validModel(*cfg.prefix+"x"):
		return nil, fmt.Errorf("%s backend: model prefix %q: want a-z 0-9 . _ : / -", kind, *cfg.prefix)
	}
	return &base{kind: kind, root: u, cfg: cfg, log: cfg.log.With("backend", kind, "url", u.Redacted())}, nil
}

// start runs the start-up check and, when it passes, the health loop.
func (b *base) start(ctx context.Context) error {
	if err := b.check(ctx); err != nil {
		return fmt.Errorf("%s backend at %s: %w", b.kind, b.root.Redacted(), err)
	}
	if len(b.Models()) == 0 {
		return fmt.Errorf("%s backend at %s has no models: put a checkpoint where it looks for them, then start gpunet again", b.kind, b.root.Redacted())
	}
	lctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	if b.cfg.healthInterval > 0 {
		b.wg.Add(1)
		go b.healthLoop(lctx)
	}
	return nil
}

func (b *base) healthLoop(ctx context.Context) {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.healthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = b.check(ctx)
		}
	}
}

// check reads the backend's models; on failure the backend serves none
// until a later check passes.
func (b *base) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.requestTimeout)
	defer cancel()
	rms, err := b.list(ctx)
	models, ids, digests := b.name(rms)
	if err != nil {
		models, ids, digests = nil, nil, nil
	}
	b.mu.Lock()
	moved := !slices.Equal(models, b.models) || !maps.Equal(digests, b.digests)
	wasDown := b.err != nil
	b.models, b.ids, b.digests, b.err = models, ids, digests, err
	b.mu.Unlock()
	switch {
	case err != nil && !wasDown:
		b.log.Warn("backend unreachable: its models are withdrawn until it answers again", "err", err)
	case err == nil && wasDown:
		b.log.Info("backend answers again", "models", models)
	}
	if moved {
		b.changed.notify()
	}
	return err
}

// name maps the backend's models to gpunet names. Names that cannot be
// made, or that two models would share, are skipped and logged: a name
// must mean one set of weights.
func (b *base) name(rms []remoteModel) (models []string, ids, digests map[string]string) {
	ids, digests = map[string]string{}, map[string]string{}
	for _, rm := range rms {
		n, ok := modelName(*b.cfg.prefix, rm.name)
		if !ok {
			b.log.Debug("backend model skipped: no valid gpunet name", "model", rm.name)
			continue
		}
		if _, dup := ids[n]; dup {
			b.log.Warn("backend model skipped: its gpunet name is taken by another", "model", rm.id, "name", n)
			continue
		}
		ids[n] = rm.id
		if rm.digest != "" {
			digests[n] = rm.digest
		}
		models = append(models, n)
	}
	slices.Sort(models)
	return models, ids, digests
}

// Models lists the gpunet names of the models the backend served at its
// last health check; none while it does not answer.
func (b *base) Models() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.models)
}

// ModelDigests maps each model Models lists to the sha256 (lower-case
// hex) of its weights, where the backend reports one (A1111 does, once it
// has hashed the file; ComfyUI and OpenAI servers do not).
func (b *base) ModelDigests() map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.digests)
}

// Health returns the error of the last health check: nil while the
// backend answers.
func (b *base) Health() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Changed returns a channel that is closed the next time Models or
// ModelDigests change (a backend went away, came back, or its owner added
// a checkpoint). A watcher reads Models again and calls Changed again for
// the next change; it never blocks the adapter.
func (b *base) Changed() <-chan struct{} { return b.changed.wait() }

// Close stops the health loop. Runs in flight are not touched: their
// contexts end them.
func (b *base) Close() error {
	if b.cancel != nil {
		b.cancel()
	}
	b.wg.Wait()
	return nil
}

// remote returns the backend's id for model m, or an ErrBadTask naming
// what is served.
func (b *base) remote(name, m string) (string, error) {
	b.mu.Lock()
	id, ok := b.ids[m]
	models := b.models
	b.mu.Unlock()
	if !ok {
		if len(models) == 0 {
			return "", fmt.Errorf("%s backend is not answering (last check: %v)", b.kind, b.Health())
		}
		return "", fmt.Errorf("%w: %s serves %s, not %q", protocol.ErrBadTask, name, strings.Join(models, ", "), m)
	}
	return id, nil
}

// url returns the backend's URL for path and query.
func (b *base) url(path string, q url.Values) string {
	u := *b.root
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawQuery = q.Encode()
	return u.String()
}

// httpError is a backend's non-2xx answer.
type httpError struct {
	op     string
	status int
	msg    string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("%s: HTTP %d: %s", e.op, e.status, e.msg)
}

// do sends one request and reads the answer (at most maxResponse bytes).
// A non-2xx answer is an *httpError with the backend's message.
func (b *base) do(ctx context.Context, op, method, path string, q url.Values, body io.Reader, contentType string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, b.url(path, q), body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if k := b.cfg.apiKey; k != "" {
		if user, pass, ok := strings.Cut(k, ":"); ok && b.kind == kindA1111 {
			req.SetBasicAuth(user, pass)
		} else {
			req.Header.Set("Authorization", "Bearer "+k)
		}
	}
	if u := b.root.User; u != nil {
		pass, _ := u.Password()
		req.SetBasicAuth(u.Username(), pass)
	}
	resp, err := b.cfg.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", op, context.Cause(ctx))
		}
		return nil, fmt.Errorf("%s: backend unreachable: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", op, context.Cause(ctx))
		}
		return nil, fmt.Errorf("%s: reading the answer: %w", op, err)
	}
	if len(data) > maxResponse {
		return nil, fmt.Errorf("%s: answer larger than %d bytes", op, maxResponse)
	}
	if resp.StatusCode/100 != 2 {
		return nil, &httpError{op: op, status: resp.StatusCode, msg: errorMessage(data)}
	}
	return data, nil
}

// doJSON sends in as JSON (when not nil) and decodes the answer into out
// (when not nil).
func (b *base) doJSON(ctx context.Context, op, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s: encoding: %w", op, err)
		}
		body, ct = bytes.NewReader(data), "application/json"
	}
	data, err := b.do(ctx, op, method, path, q, body, ct)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: the backend's answer is not the JSON expected (%v): %.80q", op, err, data)
	}
	return nil
}

// errorMessage picks the message out of a failed answer: FastAPI's
// {"detail": ...}, A1111's {"error", "errors"}, OpenAI's {"error":
// {"message"}}, ComfyUI's {"error": {"message"}, "node_errors"}, or the
// body's start.
func errorMessage(data []byte) string {
	var m struct {
		Detail json.RawMessage `json:"detail"`
		Error  json.RawMessage `json:"error"`
		Errors string          `json:"errors"`
	}
	if json.Unmarshal(data, &m) == nil {
		var s string
		var obj struct {
			Message string `json:"message"`
		}
		switch {
		case m.Errors != "":
			return clip(m.Errors)
		case json.Unmarshal(m.Error, &obj) == nil && obj.Message != "":
			return clip(obj.Message)
		case json.Unmarshal(m.Detail, &s) == nil && s != "":
			return clip(s)
		case len(m.Detail) > 0 && string(m.Detail) != "null":
			return clip(string(m.Detail))
		case json.Unmarshal(m.Error, &s) == nil && s != "":
			return clip(s)
		}
	}
	return clip(strings.TrimSpace(string(data)))
}

func clip(s string) string {
	if len(s) > maxErrorBody {
		return s[:maxErrorBody] + "…"
	}
	return s
}

// taskError maps a failed generation call: an answer saying the request
// was invalid (400, 404, 422) is the task's fault and wraps
// protocol.ErrBadTask; anything else (the backend down, 5xx, auth, busy) is
// the host's, a plain error.
func taskError(kind string, err error) error {
	var he *httpError
	if errors.As(err, &he) {
		switch he.status {
		case http.StatusBadRequest, http.StatusNotFound, http.StatusUnprocessableEntity:
			return fmt.Errorf("%w: %s backend refused the task: %s", protocol.ErrBadTask, kind, he.msg)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%s backend: %w (check the API key or --api-auth credentials)", kind, err)
		}
	}
	return fmt.Errorf("%s backend: %w", kind, err)
}

// runContext bounds one generation by the run timeout.
func (b *base) runContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if b.cfg.runTimeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, b.cfg.runTimeout, fmt.Errorf("no result from the %s backend after %v", b.kind, b.cfg.runTimeout))
}

// notifier hands out a channel that is closed at the next notify.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

func (n *notifier) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}

// modelExts are the checkpoint file extensions dropped from a name.
var modelExts = []string{".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft"}

// modelName makes a gpunet model name of prefix and a backend's model
// name: lower case, a checkpoint extension dropped; if that is not yet a
// valid model name, runs of characters outside a-z 0-9 . _ - become one
// "-" and the whole is cut to protocol.MaxModelLen bytes.
func modelName(prefix, s string) (string, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	for _, ext := range modelExts {
		s = strings.TrimSuffix(s, ext)
	}
	if n := prefix + s; len(n) <= protocol.MaxModelLen && validModel(n) {
		return n, true // already a model name: a gpunet node's stay as they are
	}
	var sb strings.Builder
	dash := false
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok || r == '-' {
			if !dash && sb.Len() > 0 {
				sb.WriteByte('-')
			}
			dash = true
			continue
		}
		sb.WriteRune(r)
		dash = false
	}
	n := prefix + strings.TrimRight(sb.String(), "-")
	if len(n) > protocol.MaxModelLen {
		n = strings.TrimRight(n[:protocol.MaxModelLen], "-._")
	}
	return n, len(n) > len(prefix) && validModel(n)
}

// validModel reports whether m is a model name a normalised task can
// carry.
func validModel(m string) bool {
	t, err := protocol.Task{Model: m, Prompt: "x"}.Normalize()
	return err == nil && t.Model == m
}

// checkTask checks what every adapter checks before it calls the backend:
// a valid task for a served model, and only the params the backend takes.
func checkTask(b *base, name string, t protocol.Task, params []string) (string, error) {
	if err := t.Validate(); err != nil {
		return "", err
	}
	for k := range t.Params {
		if !slices.Contains(params, k) {
			return "", fmt.Errorf("%w: param %q: the %s backend takes %s", protocol.ErrBadTask, k, b.kind, strings.Join(params, ", "))
		}
	}
	return b.remote(name, t.Model)
}

// checkInputs checks an edit's inputs as kernel.Command does: exactly the
// images the task names, each a PNG, JPEG or WebP within the kernel's
// bounds, and at most max images.
func checkInputs(kind string, t protocol.Task, in kernel.Inputs, max int) error {
	if err := in.Check(t); err != nil {
		return err
	}
	if len(in.Images) == 0 {
		return fmt.Errorf("%w: an edit without an input image", protocol.ErrBadTask)
	}
	if len(in.Images) > max {
		return fmt.Errorf("%w: %d input images: the %s backend takes at most %d", protocol.ErrBadTask, len(in.Images), kind, max)
	}
	for _, b := range in.Images {
		if _, err := kernel.DecodeInputConfig(b); err != nil {
			return err
		}
	}
	if in.Mask != nil {
		if _, err := kernel.DecodeInputConfig(in.Mask); err != nil {
			return fmt.Errorf("mask: %w", err)
		}
	}
	return nil
}
