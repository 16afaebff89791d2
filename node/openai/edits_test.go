package openai_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"
	"testing"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/openai"
	"github.com/gpunet/gpunet/protocol"
)

// photo is a w×h PNG standing in for a person's photo: a diagonal
// gradient with a dark disc, structure an edit must keep. flip changes one
// pixel.
func photo(t *testing.T, w, h int, flip bool) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.NRGBA{uint8(255 * x / w), uint8(255 * y / h), 180, 255}
			if dx, dy := x-w/2, y-h/2; dx*dx+dy*dy < w*h/16 {
				c = color.NRGBA{20, 20, 30, 255}
			}
			img.Set(x, y, c)
		}
	}
	if flip {
		img.Set(0, 0, color.NRGBA{1, 2, 3, 255})
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// recorder is a node that notes the task of every submission.
type recorder struct {
	*node.Node
	mu    sync.Mutex
	tasks []protocol.Task
}

func (r *recorder) Submit(ctx context.Context, t protocol.Task, o node.SubmitOptions) (*node.Result, error) {
	r.mu.Lock()
	r.tasks = append(r.tasks, t)
	r.mu.Unlock()
	return r.Node.Submit(ctx, t, o)
}

func (r *recorder) last(t *testing.T) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	_, c, err := r.tasks[len(r.tasks)-1].NormalizeCID()
	if err != nil {
		t.Fatal(err)
	}
	return c.String()
}

// serveAPI serves the OpenAI routes of s on loopback.
func serveAPI(t *testing.T, n *node.Node, s openai.Swarm) *localapi.Server {
	t.Helper()
	api, err := localapi.Listen(n, "127.0.0.1:0", slog.New(slog.DiscardHandler), openai.Routes(s)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	return api
}

// meanDiff is the mean absolute difference of two same-sized images' RGB.
func meanDiff(t *testing.T, a, b []byte) float64 {
	t.Helper()
	ia, err := png.Decode(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	ib, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if ia.Bounds() != ib.Bounds() {
		t.Fatalf("sizes %v and %v", ia.Bounds(), ib.Bounds())
	}
	var sum, n float64
	r := ia.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			r1, g1, b1, _ := ia.At(x, y).RGBA()
			r2, g2, b2, _ := ib.At(x, y).RGBA()
			for _, d := range []int{int(r1>>8) - int(r2>>8), int(g1>>8) - int(g2>>8), int(b1>>8) - int(b2>>8)} {
				sum += float64(max(d, -d))
			}
			n += 3
		}
	}
	return sum / n
}

// editParams edits img; extra are gpunet's own fields, name then value.
// The Go client writes extra multipart fields only when they are strings
// (and option.WithJSONSet would replace the whole multipart body).
func editParams(img []byte, prompt string, extra ...string) oai.ImageEditParams {
	p := oai.ImageEditParams{
		Image:  oai.ImageEditParamsImageUnion{OfFile: oai.File(bytes.NewReader(img), "photo.png", "image/png")},
		Prompt: prompt,
	}
	if len(extra) > 0 {
		m := map[string]any{}
		for i := 0; i+1 < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		p.SetExtraFields(m)
	}
	return p
}

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The official client edits an uploaded PNG: the output is the photo
// restyled, not the photo and not a fresh picture; the repeat is a cache
// hit with the same bytes; one pixel changed is another task.
func TestEdit(t *testing.T) {
	n := nodetest.Host(t, nil)
	rec := &recorder{Node: n}
	c, ctx := client(serveAPI(t, n, rec)), ctxT(t)
	in := photo(t, 96, 64, false)
	res, err := c.Images.Edit(ctx, editParams(in, "at night, in snow", "steps", "6"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Data) != 1 {
		t.Fatalf("%d images, want 1", len(res.Data))
	}
	out := b64(t, res.Data[0].B64JSON)
	decodePNG(t, out, 96, 64) // size auto: the photo's
	first := rec.last(t)

	// Recognisably the photo, changed by the prompt: closer to it than a
	// plain generation of the same prompt is, yet not the photo.
	gen, err := c.Images.Generate(ctx, oai.ImageGenerateParams{Prompt: "at night, in snow", Size: "96x64"}, option.WithJSONSet("steps", 6))
	if err != nil {
		t.Fatal(err)
	}
	plain := b64(t, gen.Data[0].B64JSON)
	toPhoto, plainToPhoto := meanDiff(t, out, in), meanDiff(t, plain, in)
	if toPhoto < 2 || toPhoto > plainToPhoto/2 {
		t.Errorf("edit is %.1f from the photo, a plain generation %.1f: want the edit changed (>2) and far closer than the generation", toPhoto, plainToPhoto)
	}

	hits := n.Status(ctx).Cache.Hits
	again, err := c.Images.Edit(ctx, editParams(in, "at night, in snow", "steps", "6"))
	if err != nil {
		t.Fatal(err)
	}
	if again.Data[0].B64JSON != res.Data[0].B64JSON || rec.last(t) != first {
		t.Error("the same photo and prompt gave another image or task")
	}
	if got := n.Status(ctx).Cache.Hits; got <= hits {
		t.Errorf("cache hits %d → %d: the repeated edit should be served from the store", hits, got)
	}

	other, err := c.Images.Edit(ctx, editParams(photo(t, 96, 64, true), "at night, in snow", "steps", "6"))
	if err != nil {
		t.Fatal(err)
	}
	if rec.last(t) == first {
		t.Error("a photo changed by one pixel gave the same TaskCID")
	}
	if other.Data[0].B64JSON == res.Data[0].B64JSON {
		t.Error("a photo changed by one pixel gave the same bytes")
	}

	// Strength moves the output away from the photo.
	strong, err := c.Images.Edit(ctx, editParams(in, "at night, in snow", "steps", "6", "strength", "0.95"))
	if err != nil {
		t.Fatal(err)
	}
	if d := meanDiff(t, b64(t, strong.Data[0].B64JSON), in); d <= toPhoto {
		t.Errorf("strength 0.95 is %.1f from the photo, the default %.1f: want further", d, toPhoto)
	}
}

func TestEditStream(t *testing.T) {
	n := nodetest.Host(t, nil)
	c, ctx := client(serveAPI(t, n, n)), ctxT(t)
	p := editParams(photo(t, 64, 64, false), "as a watercolour")
	p.PartialImages = oai.Int(2)
	// EditStreaming sets its own extra fields (stream), so the default
	// steps: 20 at 64×64 is quick.
	st := c.Images.EditStreaming(ctx, p)
	defer st.Close()
	completed, partials := 0, 0
	for st.Next() {
		switch ev := st.Current(); ev.Type {
		case "image_edit.partial_image":
			if _, err := png.Decode(bytes.NewReader(b64(t, ev.AsImageEditPartialImage().B64JSON))); err != nil {
				t.Errorf("partial image: %v", err)
			}
			partials++
		case "image_edit.completed":
			decodePNG(t, b64(t, ev.AsImageEditCompleted().B64JSON), 64, 64)
			completed++
		default:
			t.Errorf("event %q", ev.Type)
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if completed != 1 || partials < 1 || partials > 2 {
		t.Errorf("%d completed and %d partial events, want 1 and 1..2", completed, partials)
	}
}

func TestEditErrors(t *testing.T) {
	n := nodetest.Host(t, nil)
	api := serveAPI(t, n, n)
	c, ctx := client(api), ctxT(t)
	good := photo(t, 64, 64, false)
	// A PNG header claiming 100000×100000: refused from its header.
	bomb := append([]byte{}, good[:33]...)
	copy(bomb[16:24], []byte{0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0})
	five := make([]io.Reader, 5)
	for i := range five {
		five[i] = oai.File(bytes.NewReader(good), "p.png", "image/png")
	}
	cases := []struct {
		name   string
		params oai.ImageEditParams
		opts   []option.RequestOption
		status int
		param  string
	}{
		{"not an image", editParams([]byte("hello, not a picture"), "x"), nil, 400, "image"},
		{"huge header", editParams(bomb, "x"), nil, 400, "image"},
		{"five images", oai.ImageEditParams{Image: oai.ImageEditParamsImageUnion{OfFileArray: five}, Prompt: "x"}, nil, 400, "image"},
		{"bad strength", editParams(good, "x", "strength", "2"), nil, 400, "strength"},
		{"bad mask", func() oai.ImageEditParams {
			p := editParams(good, "x")
			p.Mask = oai.File(strings.NewReader("nope"), "m.png", "image/png")
			return p
		}(), nil, 400, "mask"},
		{"bad size", func() oai.ImageEditParams { p := editParams(good, "x"); p.Size = "100x100"; return p }(), nil, 400, "size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Images.Edit(ctx, tc.params, tc.opts...)
			var e *oai.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v: want an *openai.Error", err)
			}
			if e.StatusCode != tc.status || e.Param != tc.param || strings.Contains(e.Message, "\n") {
				t.Errorf("status %d param %q message %q: want %d about %q, one line", e.StatusCode, e.Param, e.Message, tc.status, tc.param)
			}
		})
	}
	// strength belongs to edits; no image at all; a JSON body.
	_, err := c.Images.Generate(ctx, oai.ImageGenerateParams{Prompt: "x"}, option.WithJSONSet("strength", "0.5"))
	wantStatus(t, err, 400, "")
	for _, tc := range []struct {
		name, ctype string
		body        func() []byte
		status      int
	}{
		{"no image", "", func() []byte { return nil }, 400},
		{"json", "application/json", func() []byte { return []byte(`{"prompt":"x"}`) }, 415},
	} {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		_ = mw.WriteField("prompt", "x")
		_ = mw.Close()
		body, ctype := buf.Bytes(), mw.FormDataContentType()
		if tc.ctype != "" {
			body, ctype = tc.body(), tc.ctype
		}
		resp, err := http.Post("http://"+api.Addr()+"/v1/images/edits", ctype, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), `"error"`) {
			t.Errorf("%s: %d %s, want %d with an error object", tc.name, resp.StatusCode, b, tc.status)
		}
	}
}

// An edit across the network: the API's node hosts nothing, so the photo
// reaches a remote host by CID over the fetch protocol, and the result
// comes back verified.
func TestEditAcrossTheNetwork(t *testing.T) {
	host := nodetest.Host(t, nil)
	cl := nodetest.Start(t, func(c *node.Config) { c.Bootstrap = host.Addrs() })
	c, ctx := client(serveAPI(t, cl, cl)), ctxT(t)
	in := photo(t, 64, 64, false)
	res, err := c.Images.Edit(ctx, editParams(in, "as a watercolour", "steps", "4"))
	if err != nil {
		t.Fatal(err)
	}
	out := b64(t, res.Data[0].B64JSON)
	decodePNG(t, out, 64, 64)
	if !host.Store().HasBlock(protocol.RawCID(in)) {
		t.Error("the host does not hold the photo: it did not fetch it by CID")
	}
	if st := host.Status(ctx); st.KernelRuns == 0 {
		t.Errorf("the host ran %d tasks: the edit did not run there", st.KernelRuns)
	}
}
