package kernel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// kernels/diffusers_serve.py --fake swaps the diffusers pipeline for a
// stand-in from Python's standard library; the framing, task parsing,
// refusals, step mapping and preview encoding around it are the code a real
// model runs. These tests drive it through a serve-mode Command, as a host
// would. Nothing here needs torch, diffusers or weights; python3 it does.

const diffusersModel = "local/fake-diffusers"

// diffusersCommand starts kernels/diffusers_serve.py --fake (and extra
// arguments) in serve mode; logs gathers what the host logs of its stderr.
func diffusersCommand(t *testing.T, logs io.Writer, extra ...string) *Command {
	t.Helper()
	py, script := pythonScript(t, "diffusers_serve.py")
	w := io.MultiWriter(testWriter{t}, logs)
	argv := append([]string{py, script, "--fake"}, extra...)
	c, err := NewCommand("cmd:diffusers-fake-v1", []string{diffusersModel}, argv,
		WithCommandServe(1),
		WithCommandTimeout(time.Minute),
		WithCommandLogger(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pythonScript finds python3 and kernels/NAME.
func pythonScript(t *testing.T, name string) (python, script string) {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		// Not a skip: without python3 the generators in kernels/ go untested.
		t.Fatalf("python3 not found on PATH (%v): this test runs kernels/%s; install it (apt-get install -y python3)", err, name)
	}
	script, err = filepath.Abs(filepath.Join("..", "kernels", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("the generator under test: %v", err)
	}
	return python, script
}

func diffusersTask(t *testing.T, seed uint64, w, h, steps uint32, params map[string]string, mask []byte, images ...[]byte) (protocol.Task, Inputs) {
	t.Helper()
	task := protocol.Task{Model: diffusersModel, Prompt: "a lighthouse in fog", NegativePrompt: "people",
		Seed: seed, Steps: steps, Width: w, Height: h, Params: params}
	return withInputs(t, task, mask, images...)
}

// solidPNG decodes b and says its size and its one colour; it fails the test
// if b is not a PNG of a single colour.
func solidPNG(t *testing.T, what string, b []byte) (w, h int, c [3]uint32) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: not a PNG: %v", what, err)
	}
	r := img.Bounds()
	r0, g0, b0, _ := img.At(r.Min.X, r.Min.Y).RGBA()
	r1, g1, b1, _ := img.At(r.Max.X-1, r.Max.Y-1).RGBA()
	if [3]uint32{r0, g0, b0} != [3]uint32{r1, g1, b1} {
		t.Errorf("%s: corners differ; the fake paints one colour", what)
	}
	return r.Dx(), r.Dy(), [3]uint32{r0 >> 8, g0 >> 8, b0 >> 8}
}

// TestDiffusersServeContract: the generator passes the start-up check,
// answers a task with its progress, the previews asked for and a PNG of
// the task's size, refuses what it cannot run with an "error" answer and
// stays for the next task, and gets an edit through.
func TestDiffusersServeContract(t *testing.T) {
	var logs syncBuffer
	c := diffusersCommand(t, &logs)
	ctx := context.Background()
	if err := c.Check(ctx); err != nil {
		t.Fatalf("start-up check: %v", err)
	}

	var events []string
	var previews [][]byte
	progress := func(k, n int) { events = append(events, fmt.Sprintf("progress %d/%d", k, n)) }
	preview := func(k int, b []byte) {
		events = append(events, fmt.Sprintf("preview %d", k))
		previews = append(previews, b)
	}
	reset := func() { events, previews = nil, nil }

	task, _ := diffusersTask(t, 11, 128, 96, 4, map[string]string{"cfg": "6.5", "sampler": "Euler a"}, nil)
	out, err := c.RunWithPreviews(ctx, task, progress, []int{1, 3}, preview)
	if err != nil {
		t.Fatalf("plain task: %v", err)
	}
	if want := "[progress 1/4 preview 1 progress 2/4 progress 3/4 preview 3 progress 4/4]"; fmt.Sprint(events) != want {
		t.Errorf("events %v, want %s", events, want)
	}
	w, h, plain := solidPNG(t, "output", out[0].Data)
	if w != 128 || h != 96 {
		t.Errorf("output %dx%d, want 128x96", w, h)
	}
	for i, b := range previews {
		// The fake's latent is 1/8 of the image a side, as a real one is.
		if pw, ph, _ := solidPNG(t, "preview", b); pw != 16 || ph != 12 {
			t.Errorf("preview %d is %dx%d, want the latent's 16x12", i, pw, ph)
		}
	}
	if len(previews) == 2 {
		_, _, c1 := solidPNG(t, "preview 1", previews[0])
		_, _, c3 := solidPNG(t, "preview 3", previews[1])
		if c1 == c3 {
			t.Errorf("previews of steps 1 and 3 are the same colour %v: not the run's state", c1)
		}
	}

	// The same task gives the same bytes; another seed another picture.
	again, err := c.Run(ctx, task, nil)
	if err != nil || !bytes.Equal(again[0].Data, out[0].Data) {
		t.Errorf("the same task again: err %v, same bytes %v", err, err == nil && bytes.Equal(again[0].Data, out[0].Data))
	}

	// Refusals: each an "error" answer; the generator stays.
	photoPNG := encodePNG(t, photo("disc", 40, 30))
	for _, tc := range []struct {
		name   string
		want   string
		edit   bool
		params map[string]string
	}{
		{name: "size off the latent grid", want: "size 72x64 not supported: this model makes sizes in multiples of 16"},
		{name: "unknown param", params: map[string]string{"scheduler": "karras"}, want: "param 'scheduler' not supported"},
		{name: "unknown sampler", params: map[string]string{"sampler": "magic"}, want: "sampler 'magic' not supported"},
		{name: "cfg out of range", params: map[string]string{"cfg": "31"}, want: "cfg '31': want a number above 0 and at most 30"},
		{name: "two input images", edit: true, want: "2 input images: this generator edits one image"},
	} {
		var task protocol.Task
		var in Inputs
		switch {
		case tc.edit:
			task, in = diffusersTask(t, 3, 64, 64, 4, nil, nil, photoPNG, encodePNG(t, photo("stripes", 16, 16)))
		case tc.params != nil:
			task, _ = diffusersTask(t, 3, 64, 64, 4, tc.params, nil)
		default:
			task, _ = diffusersTask(t, 3, 72, 64, 4, nil, nil)
		}
		var err error
		if tc.edit {
			_, err = c.Edit(ctx, task, in, nil, nil, nil)
		} else {
			_, err = c.Run(ctx, task, nil)
		}
		if err == nil || !strings.Contains(err.Error(), "failed the task: "+tc.want) {
			t.Errorf("%s: error %v, want the generator's %q", tc.name, err, tc.want)
		}
	}

	// An edit: img2img runs int(steps × strength) = 2 of 4 steps, reported
	// on the task's scale; the input image changes the picture.
	reset()
	etask, in := diffusersTask(t, 11, 128, 96, 4, map[string]string{"cfg": "6.5", "sampler": "Euler a", "strength": "0.5"}, nil, photoPNG)
	eout, err := c.Edit(ctx, etask, in, progress, []int{2}, preview)
	if err != nil {
		t.Fatalf("edit: %v", err)
	}
	if want := "[progress 2/4 preview 2 progress 4/4]"; fmt.Sprint(events) != want {
		t.Errorf("edit events %v, want %s", events, want)
	}
	ew, eh, edited := solidPNG(t, "edit output", eout[0].Data)
	if ew != 128 || eh != 96 {
		t.Errorf("edit output %dx%d, want 128x96", ew, eh)
	}
	if edited == plain {
		t.Errorf("the edit's colour %v is the plain task's", edited)
	}
	etask2, in2 := diffusersTask(t, 11, 128, 96, 4, map[string]string{"cfg": "6.5", "sampler": "Euler a", "strength": "0.5"}, nil, encodePNG(t, photo("stripes", 40, 30)))
	eout2, err := c.Edit(ctx, etask2, in2, nil, nil, nil)
	if err != nil {
		t.Fatalf("edit of another image: %v", err)
	}
	if _, _, other := solidPNG(t, "edit output", eout2[0].Data); other == edited {
		t.Errorf("edits of two images gave one colour %v: the input image did not reach the pipeline", other)
	}

	// With a mask (alpha 0 where the picture may change).
	mtask, min8 := diffusersTask(t, 11, 64, 64, 3, nil, encodePNG(t, image.NewNRGBA(image.Rect(0, 0, 8, 8))), photoPNG)
	if _, err := c.Edit(ctx, mtask, min8, nil, nil, nil); err != nil {
		t.Errorf("edit with a mask: %v", err)
	}

	if n := c.Starts(); n != 1 {
		t.Errorf("%d generators started, want 1: refusals must not replace it", n)
	}
}

// TestDiffusersServeDigest: the generator writes the sha256 of a
// single-file checkpoint on stderr at start, as the host's log shows.
func TestDiffusersServeDigest(t *testing.T) {
	ckpt := filepath.Join(t.TempDir(), "model.safetensors")
	weights := []byte("not really weights, but bytes to hash")
	if err := os.WriteFile(ckpt, weights, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	c := diffusersCommand(t, &logs, "--model", ckpt)
	task, _ := diffusersTask(t, 5, 64, 64, 1, nil, nil)
	if _, err := c.Run(context.Background(), task, nil); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("model sha256:%x", sha256.Sum256(weights))
	// stderr is read apart from the answers: its lines may trail them.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the host's log lacks %q; it has:\n%s", want, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDiffusersDirectoryDigest: for a diffusers directory, --digest-only
// prints the sha256 of model_index.json and the weight files' paths and
// sizes (docs/kernels.md, diffusers), the form other tools must reproduce.
func TestDiffusersDirectoryDigest(t *testing.T) {
	py, script := pythonScript(t, "diffusers_serve.py")
	dir := t.TempDir()
	files := map[string]string{
		"model_index.json":                         `{"_class_name": "StableDiffusionPipeline"}`,
		"unet/config.json":                         `{}`, // not a weight file: not listed
		"unet/diffusion_pytorch_model.safetensors": "unet weights",
		"text_encoder/model.safetensors":           "text encoder weights!",
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	index := files["model_index.json"]
	listing := fmt.Sprintf("model_index.json %d\n%s", len(index), index) +
		"text_encoder/model.safetensors 21\n" +
		"unet/diffusion_pytorch_model.safetensors 12\n"
	want := fmt.Sprintf("sha256:%x\n", sha256.Sum256([]byte(listing)))
	out, err := exec.Command(py, script, "--digest-only", "--model", dir).Output()
	if err != nil {
		t.Fatalf("--digest-only: %v", err)
	}
	if string(out) != want {
		t.Errorf("--digest-only printed %q, want %q", out, want)
	}
}

// fakeSD plays stable-diffusion.cpp's CLI as far as kernels/sdcpp_task.py
// sees it: it records its arguments, draws the model-loading bar and the
// sampling bar (redrawn with \r, int(steps × strength) steps for an edit),
// and copies a PNG to -o. It stands in for a binary no test machine has.
const fakeSD = `import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_SD_ARGS"], "w") as f:
    json.dump(args, f)
print("loading tensors |==========| 1131/1131 - 500.00it/s", flush=True)
n = int(args[args.index("--steps") + 1])
if "-i" in args:
    n = int(n * float(args[args.index("--strength") + 1]))
for k in range(1, n + 1):
    sys.stdout.write("\r  |%s>  | %d/%d - 1.00s/it" % ("=" * k, k, n))
    sys.stdout.flush()
print("\ndecode_first_stage completed", file=sys.stderr)
shutil.copy(os.environ["FAKE_SD_PNG"], args[args.index("-o") + 1])
`

// TestSDCppTaskAdapter: kernels/sdcpp_task.py, a per-task generator, gives
// sd.cpp the task's fields as its documented flags (after the host's own),
// turns its sampling bar into progress on the task's scale, passes its PNG
// on, and refuses what it cannot run. Against a fake sd.cpp: the real one
// is untested here.
func TestSDCppTaskAdapter(t *testing.T) {
	py, script := pythonScript(t, "sdcpp_task.py")
	dir := t.TempDir()
	sd := filepath.Join(dir, "sd-cli")
	if err := os.WriteFile(sd, []byte("#!"+py+"\n"+fakeSD), 0o755); err != nil {
		t.Fatal(err)
	}
	want := encodePNG(t, photo("disc", 64, 64))
	pngPath, argsPath := filepath.Join(dir, "out.png"), filepath.Join(dir, "args.json")
	if err := os.WriteFile(pngPath, want, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := NewCommand("cmd:sdcpp-fake-v1", []string{diffusersModel},
		[]string{py, script, "--sd", sd, "-m", "/models/v1-5.safetensors", "--clip-on-cpu"},
		WithCommandEnv("FAKE_SD_ARGS="+argsPath, "FAKE_SD_PNG="+pngPath),
		WithCommandLogger(slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sdArgs := func() string {
		t.Helper()
		b, err := os.ReadFile(argsPath)
		if err != nil {
			t.Fatal(err)
		}
		var args []string
		if err := json.Unmarshal(b, &args); err != nil {
			t.Fatal(err)
		}
		// The output's path is a fresh temporary file: not compared.
		for i := range args {
			if i > 0 && (args[i-1] == "-o" || args[i-1] == "-i") {
				args[i] = filepath.Base(args[i])
			}
		}
		return strings.Join(args, " ")
	}

	var steps []int
	progress := func(k, n int) { steps = append(steps, k) }
	task, _ := diffusersTask(t, 9, 64, 64, 4, map[string]string{"cfg": "6.5", "sampler": "euler_a"}, nil)
	out, err := c.Run(ctx, task, progress)
	if err != nil {
		t.Fatalf("plain task: %v", err)
	}
	if !bytes.Equal(out[0].Data, want) {
		t.Errorf("the output is not sd.cpp's PNG")
	}
	if fmt.Sprint(steps) != "[1 2 3 4]" {
		t.Errorf("progress %v, want [1 2 3 4] (the loading bar is not sampling)", steps)
	}
	if got, want := sdArgs(), "-m /models/v1-5.safetensors --clip-on-cpu -p a lighthouse in fog -n people -s 9 --steps 4 -W 64 -H 64 -o out.png --cfg-scale 6.5 --sampling-method euler_a"; got != want {
		t.Errorf("sd.cpp's arguments\n%s\nwant\n%s", got, want)
	}

	// An edit: gpunet's strength is passed (sd.cpp's default differs), and
	// sd.cpp's int(4 × 0.5) = 2 steps are reported out of 4.
	steps = nil
	etask, in := diffusersTask(t, 9, 64, 64, 4, map[string]string{"strength": ".5"}, nil, encodePNG(t, photo("stripes", 32, 32)))
	if _, err := c.Edit(ctx, etask, in, progress, nil, nil); err != nil {
		t.Fatalf("edit: %v", err)
	}
	if fmt.Sprint(steps) != "[2 4]" {
		t.Errorf("edit progress %v, want [2 4]", steps)
	}
	if got := sdArgs(); !strings.HasSuffix(got, "-o out.png -i init.png --strength 0.5") {
		t.Errorf("edit arguments %q, want the init image and --strength 0.5 last", got)
	}

	for _, tc := range []struct {
		name string
		task protocol.Task
		in   Inputs
		want string
	}{
		{"another size", mustTask(diffusersTask(t, 9, 128, 64, 2, nil, nil)), Inputs{}, "sd.cpp made 64x64, not the task's 128x64"},
		{"mask", mustTask(diffusersTask(t, 9, 64, 64, 2, nil, want, want)), Inputs{Images: [][]byte{want}, Mask: want}, "masks not supported"},
	} {
		_, err := c.Edit(ctx, tc.task, tc.in, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one saying %q", tc.name, err, tc.want)
		}
	}
}

func mustTask(t protocol.Task, _ Inputs) protocol.Task { return t }
