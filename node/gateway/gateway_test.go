package gateway_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"image"
	"image/png"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/gateway"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/openai"
	"github.com/gpunet/gpunet/protocol"
)

// recording is the node, noting the submitter of every task.
type recording struct {
	*node.Node
	mu         sync.Mutex
	submitters []string
}

func (r *recording) Submit(ctx context.Context, t protocol.Task, o node.SubmitOptions) (*node.Result, error) {
	r.mu.Lock()
	r.submitters = append(r.submitters, o.Submitter)
	r.mu.Unlock()
	return r.Node.Submit(ctx, t, o)
}

func (r *recording) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.submitters...)
}

// fixture is a lone sketch host behind a gateway whose keys file is path.
type fixture struct {
	gw   *gateway.Server
	n    *recording
	path string
}

func newKey(t *testing.T, name, rate string) (key, line string) {
	t.Helper()
	key, line, err := gateway.NewKey(name, rate)
	if err != nil {
		t.Fatal(err)
	}
	return key, line
}

// writeKeys writes the keys file and moves its mtime on, so that a reload
// sees the change whatever the file system's timestamp granularity.
func writeKeys(t *testing.T, path string, lines ...string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mt := time.Now()
	if fi, err := os.Stat(path); err == nil {
		mt = fi.ModTime()
	}
	writes++
	mt = mt.Add(time.Duration(writes) * time.Hour)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

var writes int

func start(t *testing.T, lines ...string) *fixture {
	t.Helper()
	n := nodetest.Host(t, func(c *node.Config) { c.FindTimeout = time.Second })
	rec := &recording{Node: n}
	path := filepath.Join(t.TempDir(), "keys")
	writeKeys(t, path, lines...)
	// Reload on every request: the test rewrites the file and asks at once.
	gw, err := gateway.Listen("127.0.0.1:0", path, openai.Routes(rec),
		gateway.WithReloadInterval(0), gateway.WithLogger(slog.New(slog.NewTextHandler(tWriter{t}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	return &fixture{gw: gw, n: rec, path: path}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (f *fixture) client(key string) oai.Client {
	opts := []option.RequestOption{option.WithBaseURL("http://" + f.gw.Addr() + "/v1"), option.WithMaxRetries(0)}
	if key != "" {
		opts = append(opts, option.WithAPIKey(key))
	} else {
		// The client reads OPENAI_API_KEY by default; send none at all.
		opts = append(opts, option.WithHeaderDel("Authorization"))
	}
	return oai.NewClient(opts...)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func wantStatus(t *testing.T, err error, status int, code string) {
	t.Helper()
	var e *oai.Error
	if !errors.As(err, &e) {
		t.Fatalf("err %v: want an *openai.Error with status %d", err, status)
	}
	if e.StatusCode != status || e.Code != code {
		t.Errorf("status %d code %q, want %d %q (%s)", e.StatusCode, e.Code, status, code, e.Message)
	}
}

var small = oai.ImageGenerateParams{Prompt: "a lighthouse at dusk", Size: "64x64", Quality: oai.ImageGenerateParamsQualityLow}

func TestKeyGeneratesUnderItsOwnName(t *testing.T) {
	alice, line := newKey(t, "alice", "")
	f := start(t, "# the operator's users", line)
	ctx := ctxT(t)
	params := small
	params.User = oai.String("bob") // not alice's to choose
	c := f.client(alice)
	res, err := c.Images.Generate(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Data) != 1 {
		t.Fatalf("%d images, want 1", len(res.Data))
	}
	if b, err := base64.StdEncoding.DecodeString(res.Data[0].B64JSON); err != nil || len(b) == 0 {
		t.Fatalf("b64_json: %d bytes, %v", len(b), err)
	}
	if got := f.n.seen(); len(got) != 1 || got[0] != "key:alice" {
		t.Errorf("submitters %q, want [key:alice]", got)
	}
	if _, err := c.Models.List(ctx); err != nil {
		t.Errorf("models: %v", err)
	}
	// A url would point at the node's loopback-only blocks route.
	params.ResponseFormat = oai.ImageGenerateParamsResponseFormatURL
	_, err = c.Images.Generate(ctx, params)
	wantStatus(t, err, http.StatusBadRequest, "")
}

// An edit through the gateway runs under the key's name too, whatever
// the form's user says.
func TestKeyEditsUnderItsOwnName(t *testing.T) {
	alice, line := newKey(t, "alice", "")
	f := start(t, line)
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for i := range img.Pix {
		img.Pix[i] = uint8(i)
	}
	var photo bytes.Buffer
	if err := png.Encode(&photo, img); err != nil {
		t.Fatal(err)
	}
	c, nobody := f.client(alice), f.client("")
	res, err := c.Images.Edit(ctxT(t), oai.ImageEditParams{
		Image:  oai.ImageEditParamsImageUnion{OfFile: oai.File(bytes.NewReader(photo.Bytes()), "p.png", "image/png")},
		Prompt: "as a watercolour", User: oai.String("bob"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Data) != 1 || res.Data[0].B64JSON == "" {
		t.Fatalf("data %+v: want one image", res.Data)
	}
	if got := f.n.seen(); len(got) != 1 || got[0] != "key:alice" {
		t.Errorf("submitters %q, want [key:alice]", got)
	}
	_, err = nobody.Images.Edit(ctxT(t), oai.ImageEditParams{
		Image:  oai.ImageEditParamsImageUnion{OfFile: oai.File(bytes.NewReader(photo.Bytes()), "p.png", "image/png")},
		Prompt: "x",
	})
	wantStatus(t, err, http.StatusUnauthorized, "invalid_api_key")
}

func TestMissingOrWrongKeyIs401(t *testing.T) {
	_, line := newKey(t, "alice", "")
	f := start(t, line)
	ctx := ctxT(t)
	wrong, _ := newKey(t, "", "")
	for name, key := range map[string]string{"none": "", "wrong": wrong, "the hash itself": strings.Fields(line)[0]} {
		t.Run(name, func(t *testing.T) {
			c := f.client(key)
			_, err := c.Images.Generate(ctx, small)
			wantStatus(t, err, http.StatusUnauthorized, "invalid_api_key")
			_, err = c.Models.List(ctx)
			wantStatus(t, err, http.StatusUnauthorized, "invalid_api_key")
		})
	}
	if got := f.n.seen(); len(got) != 0 {
		t.Errorf("tasks submitted without a key: %q", got)
	}
}

func TestAdminRoutesAreNotThere(t *testing.T) {
	alice, line := newKey(t, "alice", "")
	f := start(t, line)
	ctx := ctxT(t)
	c := f.client(alice)
	for _, r := range []struct{ method, path string }{
		{"POST", "host/pause"}, {"POST", "host/resume"}, {"POST", "host/limits"},
		{"GET", "status"}, {"GET", "peers"}, {"POST", "tasks"},
		{"GET", "cache"}, {"POST", "cache/pin"}, {"GET", "blocks/bafkqaaa"},
		{"GET", "../metrics"}, {"POST", "images/variations"},
	} {
		err := c.Execute(ctx, r.method, r.path, map[string]any{"paused": true}, nil)
		var e *oai.Error
		if !errors.As(err, &e) || e.StatusCode != http.StatusNotFound {
			t.Errorf("%s /v1/%s: %v, want 404", r.method, r.path, err)
		}
	}
	if f.n.Status(ctx).Paused {
		t.Error("the host is paused by a key holder")
	}
}

func TestReload(t *testing.T) {
	alice, aliceLine := newKey(t, "alice", "")
	bob, bobLine := newKey(t, "bob", "")
	f := start(t, aliceLine)
	ctx := ctxT(t)
	models := func(key string) error {
		c := f.client(key)
		_, err := c.Models.List(ctx)
		return err
	}
	if err := models(alice); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, models(bob), http.StatusUnauthorized, "invalid_api_key")

	writeKeys(t, f.path, bobLine) // alice revoked, bob admitted
	if err := models(bob); err != nil {
		t.Errorf("bob after reload: %v", err)
	}
	wantStatus(t, models(alice), http.StatusUnauthorized, "invalid_api_key")

	// A broken file (here a plain key pasted in) keeps bob's key working.
	writeKeys(t, f.path, bobLine, alice)
	if err := models(bob); err != nil {
		t.Errorf("bob after an invalid rewrite: %v", err)
	}
	wantStatus(t, models(alice), http.StatusUnauthorized, "invalid_api_key")
}

func TestRateLimit(t *testing.T) {
	alice, aliceLine := newKey(t, "alice", "1/h")
	bob, bobLine := newKey(t, "bob", "")
	f := start(t, aliceLine, bobLine)
	ctx := ctxT(t)
	ca, cb := f.client(alice), f.client(bob)
	if _, err := ca.Models.List(ctx); err != nil {
		t.Fatal(err)
	}
	var resp *http.Response
	_, err := ca.Models.List(ctx, option.WithResponseInto(&resp))
	wantStatus(t, err, http.StatusTooManyRequests, "rate_limit_exceeded")
	if resp == nil || resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// Bob's budget is his own.
	if _, err := cb.Models.List(ctx); err != nil {
		t.Errorf("bob: %v", err)
	}
}

func TestListenRefusesAnEmptyOrPlainKeysFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	key, line := newKey(t, "", "")
	for _, content := range []string{"# nobody yet\n", key + "\n", line + " rate=fast\n", line + "\n" + line + "\n"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if gw, err := gateway.Listen("127.0.0.1:0", path, nil); err == nil {
			gw.Close()
			t.Errorf("keys file %q: started", content)
		}
	}
}

func TestParseKeys(t *testing.T) {
	_, line := newKey(t, "", "")
	keys, err := gateway.ParseKeys(strings.NewReader(line + " carol rate=2.5/s # the lab\n\n# done\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Name != "carol" || keys[0].Rate.N != 2.5 || keys[0].Rate.Per != time.Second || keys[0].Submitter() != "key:carol" {
		t.Errorf("keys %+v", keys)
	}
	anon, _ := gateway.ParseKeys(strings.NewReader(line))
	if s := anon[0].Submitter(); s != "key:"+strings.TrimPrefix(line, "sha256:")[:8] {
		t.Errorf("unnamed key's submitter %q, want key: and 8 hex digits of its hash", s)
	}
}
