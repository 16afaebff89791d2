package openai_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/openai"
	"github.com/gpunet/gpunet/node/web"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
)

// startHost serves the API of a lone host with the sketch kernel, with
// these routes and the dashboard's (for GET /v1/blocks/{cid}).
func startHost(t *testing.T) (*localapi.Server, *node.Node) {
	t.Helper()
	n := nodetest.Host(t, func(c *node.Config) {
		c.FindTimeout = time.Second // an unknown model's DHT search, alone
	})
	opts := append(openai.Routes(n), web.New().Routes(web.NodeSource{Node: n})...)
	s, err := localapi.Listen(n, "127.0.0.1:0", slog.New(slog.DiscardHandler), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, n
}

func client(s *localapi.Server) oai.Client {
	return oai.NewClient(option.WithBaseURL("http://"+s.Addr()+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// decodePNG decodes b and checks its size.
func decodePNG(t *testing.T, b []byte, w, h int) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if got := img.Bounds().Size(); got.X != w || got.Y != h {
		t.Errorf("image %dx%d, want %dx%d", got.X, got.Y, w, h)
	}
}

func TestModels(t *testing.T) {
	s, _ := startHost(t)
	c, ctx := client(s), ctxT(t)
	page, err := c.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
		if m.OwnedBy != "gpunet" || m.Object != "model" {
			t.Errorf("model %+v: want object model, owned by gpunet", m)
		}
	}
	if len(ids) != 1 || ids[0] != protocol.DefaultModel {
		t.Errorf("models %v, want [%s]", ids, protocol.DefaultModel)
	}
	m, err := c.Models.Get(ctx, protocol.DefaultModel)
	if err != nil || m.ID != protocol.DefaultModel {
		t.Errorf("get %s: %+v, %v", protocol.DefaultModel, m, err)
	}
	_, err = c.Models.Get(ctx, "gpunet/nobody-serves-this")
	wantStatus(t, err, http.StatusNotFound, "model_not_found")
}

func TestGenerationsN2DifferentImagesThenCacheHit(t *testing.T) {
	s, n := startHost(t)
	c, ctx := client(s), ctxT(t)
	params := oai.ImageGenerateParams{
		Prompt: "a lighthouse at dusk", N: oai.Int(2),
		Size: oai.ImageGenerateParamsSize("128x96"), Quality: oai.ImageGenerateParamsQualityLow,
	}
	first, err := c.Images.Generate(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Data) != 2 {
		t.Fatalf("%d images, want 2", len(first.Data))
	}
	var pngs [][]byte
	for _, d := range first.Data {
		b, err := base64.StdEncoding.DecodeString(d.B64JSON)
		if err != nil {
			t.Fatal(err)
		}
		decodePNG(t, b, 128, 96)
		pngs = append(pngs, b)
	}
	if bytes.Equal(pngs[0], pngs[1]) {
		t.Error("n=2 gave the same image twice: the seeds should differ")
	}
	if first.Size != "128x96" || first.Quality != "low" || first.Created == 0 {
		t.Errorf("response size %q quality %q created %d", first.Size, first.Quality, first.Created)
	}
	hits := n.Status(ctx).Cache.Hits
	again, err := c.Images.Generate(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range again.Data {
		if d.B64JSON != first.Data[i].B64JSON {
			t.Errorf("image %d differs on the same request", i)
		}
	}
	if got := n.Status(ctx).Cache.Hits; got < hits+2 {
		t.Errorf("cache hits %d → %d: the repeat should be served from the store", hits, got)
	}
}

func TestGenerationsURL(t *testing.T) {
	s, _ := startHost(t)
	c, ctx := client(s), ctxT(t)
	res, err := c.Images.Generate(ctx, oai.ImageGenerateParams{
		Prompt: "a red kite", Size: oai.ImageGenerateParamsSize("64x64"),
		ResponseFormat: oai.ImageGenerateParamsResponseFormatURL,
	}, option.WithJSONSet("steps", 2), option.WithJSONSet("seed", 42))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Data) != 1 || res.Data[0].URL == "" || res.Data[0].B64JSON != "" {
		t.Fatalf("data %+v: want one url", res.Data)
	}
	u := res.Data[0].URL
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	decodePNG(t, b, 64, 64)
	if want := "/v1/blocks/" + protocol.RawCID(b).String(); !strings.HasSuffix(u, want) {
		t.Errorf("url %s: want it to end in %s, the bytes' CID", u, want)
	}
}

func TestGenerationsStream(t *testing.T) {
	s, _ := startHost(t)
	c, ctx := client(s), ctxT(t)
	st := c.Images.GenerateStreaming(ctx, oai.ImageGenerateParams{
		Prompt: "a boat", N: oai.Int(2), Size: oai.ImageGenerateParamsSize("64x64"),
		PartialImages: oai.Int(2),
	}, option.WithJSONSet("steps", 8))
	defer st.Close()
	completed, partials := 0, 0
	for st.Next() {
		ev := st.Current()
		switch ev.Type {
		case "image_generation.partial_image":
			// The sketch kernel's scene so far: a real PNG, numbered in
			// order, before both images are done.
			p := ev.AsImageGenerationPartialImage()
			if completed == 2 {
				t.Error("a partial image after every image was done")
			}
			if p.PartialImageIndex != int64(partials) {
				t.Errorf("partial image index %d, want %d", p.PartialImageIndex, partials)
			}
			b, err := base64.StdEncoding.DecodeString(p.B64JSON)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := png.Decode(bytes.NewReader(b)); err != nil {
				t.Errorf("partial image %d is not a PNG: %v", partials, err)
			}
			partials++
		case "image_generation.completed":
			completed++
			done := ev.AsImageGenerationCompleted()
			b, err := base64.StdEncoding.DecodeString(done.B64JSON)
			if err != nil {
				t.Fatal(err)
			}
			decodePNG(t, b, 64, 64)
			if done.Size != "64x64" || done.OutputFormat != "png" || done.CreatedAt == 0 {
				t.Errorf("completed event size %q format %q created %d", done.Size, done.OutputFormat, done.CreatedAt)
			}
		default:
			t.Errorf("event %q", ev.Type)
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if completed != 2 {
		t.Errorf("%d completed events, want 2", completed)
	}
	// Two images, two previews each asked for; a preview may be dropped
	// for a slow reader, so at least one, at most four.
	if partials < 1 || partials > 4 {
		t.Errorf("%d partial images, want 1 to 4", partials)
	}
}

func TestGenerationsErrors(t *testing.T) {
	s, _ := startHost(t)
	c, ctx := client(s), ctxT(t)
	cases := []struct {
		name   string
		params oai.ImageGenerateParams
		opts   []option.RequestOption
		status int
		param  string
	}{
		{"bad size", oai.ImageGenerateParams{Prompt: "x", Size: "100x100"}, nil, 400, "size"},
		{"size word", oai.ImageGenerateParams{Prompt: "x", Size: "big"}, nil, 400, "size"},
		{"unknown field", oai.ImageGenerateParams{Prompt: "x"}, []option.RequestOption{option.WithJSONSet("colour", "red")}, 400, "colour"},
		{"n too big", oai.ImageGenerateParams{Prompt: "x", N: oai.Int(11)}, nil, 400, "n"},
		{"jpeg", oai.ImageGenerateParams{Prompt: "x", OutputFormat: oai.ImageGenerateParamsOutputFormatJPEG}, nil, 400, "output_format"},
		{"transparent", oai.ImageGenerateParams{Prompt: "x", Background: oai.ImageGenerateParamsBackgroundTransparent}, nil, 400, "background"},
		{"bad user", oai.ImageGenerateParams{Prompt: "x", User: oai.String("a\x00b")}, nil, 400, "user"},
		{"empty prompt", oai.ImageGenerateParams{Prompt: " "}, nil, 400, "prompt"},
		{"steps", oai.ImageGenerateParams{Prompt: "x"}, []option.RequestOption{option.WithJSONSet("steps", 151)}, 400, "steps"},
		{"oversized", oai.ImageGenerateParams{Prompt: strings.Repeat("a", 70<<10)}, nil, 413, ""},
		{"unknown model", oai.ImageGenerateParams{Prompt: "x", Model: "gpunet/nobody-serves-this"}, nil, 404, "model"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Images.Generate(ctx, tc.params, tc.opts...)
			var e *oai.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v: want an *openai.Error", err)
			}
			if e.StatusCode != tc.status || e.Param != tc.param || e.Message == "" || strings.Contains(e.Message, "\n") {
				t.Errorf("status %d param %q message %q: want %d about %q, one line", e.StatusCode, e.Param, e.Message, tc.status, tc.param)
			}
		})
	}
	// Ignored fields a P2P swarm cannot honour still make an image.
	if _, err := c.Images.Generate(ctx, oai.ImageGenerateParams{
		Prompt: "x", Size: "64x64", Background: oai.ImageGenerateParamsBackgroundAuto,
		Moderation: oai.ImageGenerateParamsModerationLow, Style: oai.ImageGenerateParamsStyleVivid,
	}, option.WithJSONSet("steps", 1)); err != nil {
		t.Errorf("background auto, moderation, style: %v, want them ignored", err)
	}
}

func wantStatus(t *testing.T, err error, status int, code string) {
	t.Helper()
	var e *oai.Error
	if !errors.As(err, &e) {
		t.Fatalf("err %v: want an *openai.Error", err)
	}
	if e.StatusCode != status || e.Code != code {
		t.Errorf("status %d code %q, want %d %q", e.StatusCode, e.Code, status, code)
	}
}

// saturated is a swarm whose every task runs out its deadline, as a node's
// Submit does when every host stays full.
type saturated struct{}

func (saturated) Submit(ctx context.Context, _ protocol.Task, _ node.SubmitOptions) (*node.Result, error) {
	return nil, fmt.Errorf("task not done before its deadline: %w", context.DeadlineExceeded)
}
func (saturated) View() scheduler.View { return nil }
func (saturated) Models() []string     { return []string{protocol.DefaultModel} }
func (saturated) FindHosts(context.Context, string, int) ([]node.HostInfo, error) {
	return nil, nil
}
func (saturated) PutInput(_ context.Context, b []byte) (cid.Cid, error) {
	return protocol.RawCID(b), nil
}

func TestSaturatedSwarmIs429WithRetryAfter(t *testing.T) {
	mux := http.NewServeMux()
	for _, o := range openai.Routes(saturated{}) {
		o(mux)
	}
	body := `{"prompt":"x"}`
	req, _ := http.NewRequest(http.MethodPost, "/v1/images/generations", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" || !strings.Contains(rec.Body.String(), `"type":"rate_limit_error"`) {
		t.Errorf("status %d Retry-After %q body %s: want 429 with Retry-After", rec.Code, rec.Header().Get("Retry-After"), rec.Body.String())
	}
}

// The clients in other languages read the event name too: each image is
// an "event: image_generation.completed" line before its data.
func TestStreamEventLines(t *testing.T) {
	s, _ := startHost(t)
	resp, err := http.Post("http://"+s.Addr()+"/v1/images/generations", "application/json",
		strings.NewReader(`{"prompt":"a boat","size":"64x64","steps":1,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q, want text/event-stream", ct)
	}
	if !strings.HasPrefix(string(b), "event: image_generation.completed\ndata: {") || strings.Count(string(b), "event: ") != 1 {
		t.Errorf("stream %.120q: want one completed event", b)
	}
}
