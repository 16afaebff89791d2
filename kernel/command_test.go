package kernel

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// The test binary doubles as the generator under test (the os/exec test
// pattern): run with fakeEnv set, TestMain plays the generator instead of
// running tests.
const (
	fakeEnv      = "GPUNET_FAKE_GENERATOR"
	fakeStdinEnv = "GPUNET_FAKE_STDIN" // file to copy stdin to
	fakePidsEnv  = "GPUNET_FAKE_PIDS"  // file to write "child grandchild" pids to
	fakeModel    = "test/fake-v1"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEnv); mode != "" {
		os.Exit(fakeGenerator(mode))
	}
	os.Exit(m.Run())
}

// fakeGenerator follows (or, by mode, breaks) the contract in
// docs/kernels.md and returns the exit status.
func fakeGenerator(mode string) int {
	switch mode {
	case "serve":
		return fakeServe()
	case "deaf":
		// Never reads stdin: a task bigger than a pipe holds cannot be
		// written to it.
		time.Sleep(time.Hour)
		return 0
	}
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading stdin:", err)
		return 1
	}
	if p := os.Getenv(fakeStdinEnv); p != "" {
		if err := os.WriteFile(p, in, 0o600); err != nil {
			return 1
		}
	}
	var t protocol.Task
	if err := json.Unmarshal(in, &t); err != nil {
		fmt.Fprintln(os.Stderr, "decoding task:", err)
		return 1
	}
	w, h, n := int(t.Width), int(t.Height), int(t.Steps)
	writePNG := func(w, h int) {
		img := image.NewGray(image.Rect(0, 0, w, h))
		for i := range img.Pix {
			img.Pix[i] = uint8(uint64(i) * t.Seed >> 3)
		}
		_ = png.Encode(os.Stdout, img)
	}
	switch mode {
	case "ok":
		fmt.Fprintln(os.Stderr, "loading weights")
		fmt.Fprintln(os.Stderr, strings.Repeat("x", 3*CommandMaxStderrLine)) // cut by the host
		for k := 1; k <= n; k++ {
			fmt.Fprintf(os.Stderr, "progress %d %d\n", k, n)
			if k == 2 {
				// Ignored: a step going back, a malformed line, a
				// step past the total.
				fmt.Fprintf(os.Stderr, "progress 1 %d\nprogress x y\nprogress %d %d\n", n, n+1, n)
			}
		}
		writePNG(w, h)
	case "notpng":
		fmt.Fprintln(os.Stdout, "hello, not a picture")
	case "wrongsize":
		writePNG(w/2, h)
	case "empty":
	case "toobig":
		os.Stdout.Write(pngSignature)
		chunk := make([]byte, 1<<20)
		for {
			if _, err := os.Stdout.Write(chunk); err != nil {
				break
			}
		}
		time.Sleep(time.Hour) // the host must kill us
	case "fail":
		for i := 1; i <= 40; i++ {
			fmt.Fprintf(os.Stderr, "noise line %d\n", i)
		}
		fmt.Fprintln(os.Stderr, "RuntimeError: CUDA out of memory")
		return 3
	case "hang":
		// Start a grandchild in our process group, report both pids,
		// report one step, then wait to be killed.
		exe, _ := os.Executable()
		gc := exec.Command(exe)
		gc.Env = append(os.Environ(), fakeEnv+"=sleep")
		gc.Stdin = strings.NewReader("{}")
		if err := gc.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "starting grandchild:", err)
			return 1
		}
		pids := fmt.Sprintf("%d %d", os.Getpid(), gc.Process.Pid)
		if err := os.WriteFile(os.Getenv(fakePidsEnv), []byte(pids), 0o600); err != nil {
			return 1
		}
		fmt.Fprintf(os.Stderr, "progress 1 %d\n", n)
		time.Sleep(time.Hour)
	case "sleep":
		time.Sleep(time.Hour)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		return 2
	}
	return 0
}

// fakeCommand returns a Command that runs this test binary in mode.
func fakeCommand(t *testing.T, mode string, opts ...CommandOption) *Command {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]CommandOption{
		WithCommandLogger(slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		// A -race child sleeps a second at exit unless told not to.
		WithCommandEnv(fakeEnv+"="+mode, "GORACE=atexit_sleep_ms=0"),
	}, opts...)
	// -test.run=^$: should the environment not reach the child, it runs no
	// tests rather than all of them again.
	c, err := NewCommand("cmd:fake-v1", []string{fakeModel}, []string{exe, "-test.run=^$"}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func fakeTask(t *testing.T, seed uint64) protocol.Task {
	t.Helper()
	task, err := protocol.Task{
		Model: fakeModel, Prompt: "a quiet harbour at dusk", NegativePrompt: "fog",
		Seed: seed, Steps: 5, Width: 96, Height: 64,
		Params: map[string]string{"sampler": "euler"},
	}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func TestCommandSuccess(t *testing.T) {
	var logs syncBuffer
	stdinFile := t.TempDir() + "/stdin.json"
	c := fakeCommand(t, "ok",
		WithCommandEnv(fakeStdinEnv+"="+stdinFile),
		WithCommandLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	task := fakeTask(t, 42)

	var steps [][2]int
	outs, err := c.Run(context.Background(), task, func(k, n int) { steps = append(steps, [2]int{k, n}) })
	if err != nil {
		t.Fatalf("Run: %v", err)
	}

	t.Run("progress forwarded in order", func(t *testing.T) {
		var want [][2]int
		for k := 1; k <= int(task.Steps); k++ {
			want = append(want, [2]int{k, int(task.Steps)})
		}
		if fmt.Sprint(steps) != fmt.Sprint(want) {
			t.Errorf("progress %v, want %v", steps, want)
		}
	})
	t.Run("output is the PNG", func(t *testing.T) {
		if len(outs) != 1 || outs[0].MediaType != "image/png" {
			t.Fatalf("outputs %+v, want one image/png", outs)
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(outs[0].Data))
		if err != nil || cfg.Width != int(task.Width) || cfg.Height != int(task.Height) {
			t.Errorf("PNG %dx%d (%v), want %dx%d", cfg.Width, cfg.Height, err, task.Width, task.Height)
		}
	})
	t.Run("stdin is the task as JSON", func(t *testing.T) {
		got, err := os.ReadFile(stdinFile)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(task)
		if string(got) != string(want)+"\n" {
			t.Errorf("stdin %q, want %q and a newline", got, want)
		}
		var back protocol.Task
		if err := json.Unmarshal(got, &back); err != nil || !back.Equal(task) {
			t.Errorf("stdin decodes to %+v (%v), want %+v", back, err, task)
		}
	})
	t.Run("stderr logged with lines cut", func(t *testing.T) {
		s := logs.String()
		if !strings.Contains(s, "loading weights") {
			t.Errorf("log lacks the generator's stderr line:\n%s", s)
		}
		if !strings.Contains(s, strings.Repeat("x", CommandMaxStderrLine)) || strings.Contains(s, strings.Repeat("x", CommandMaxStderrLine+1)) {
			t.Errorf("long stderr line not cut at %d bytes", CommandMaxStderrLine)
		}
	})
}

func TestCommandBadOutput(t *testing.T) {
	for _, tc := range []struct{ mode, want string }{
		{"notpng", "not a PNG"},
		{"wrongsize", "48x64, the task asked for 96x64"},
		{"empty", "wrote nothing"},
		{"toobig", fmt.Sprintf("more than %d bytes", protocol.MaxBlockBytes)},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			_, err := fakeCommand(t, tc.mode).Run(context.Background(), fakeTask(t, 1), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestCommandExitStatus(t *testing.T) {
	_, err := fakeCommand(t, "fail").Run(context.Background(), fakeTask(t, 1), nil)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("Run error %v, want exit status 3", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "CUDA out of memory") || !strings.Contains(msg, "noise line 40") {
		t.Errorf("error %q lacks the tail of stderr", msg)
	}
	if strings.Contains(msg, "noise line 1 ") || strings.Contains(msg, "noise line 1|") || len(msg) > commandTailBytes+500 {
		t.Errorf("error carries more than the tail of stderr (%d bytes): %q", len(msg), msg)
	}
}

func TestCommandCancelKillsProcessGroup(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	pidsFile := t.TempDir() + "/pids"
	c := fakeCommand(t, "hang", WithCommandEnv(fakePidsEnv+"="+pidsFile))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := c.Run(ctx, fakeTask(t, 1), func(int, int) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run error %v, want context.Canceled", err)
	}
	b, err := os.ReadFile(pidsFile)
	if err != nil {
		t.Fatal(err)
	}
	var child, grandchild int
	if _, err := fmt.Sscan(string(b), &child, &grandchild); err != nil {
		t.Fatalf("pids file %q: %v", b, err)
	}
	// Run has waited for the child, so it is gone already.
	if processAlive(child) {
		t.Errorf("generator %d still running after Run returned", child)
	}
	// The grandchild was sent SIGKILL with its group; give the kernel a
	// moment to deliver it. (A wait for a condition, not a timing.)
	for deadline := time.Now().Add(10 * time.Second); processAlive(grandchild); {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d still running: the process group was not killed", grandchild)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processAlive reports whether pid runs; a zombie (killed, not yet reaped
// by its new parent) counts as gone.
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}

func TestCommandTimeout(t *testing.T) {
	c := fakeCommand(t, "hang", WithCommandEnv(fakePidsEnv+"="+t.TempDir()+"/pids"), WithCommandTimeout(100*time.Millisecond))
	_, err := c.Run(context.Background(), fakeTask(t, 1), nil)
	if err == nil || !strings.Contains(err.Error(), "no result after 100ms") {
		t.Fatalf("Run error %v, want the timeout", err)
	}
}

func TestCommandConcurrent(t *testing.T) {
	c := fakeCommand(t, "ok")
	var wg sync.WaitGroup
	outs := make([][]byte, 4)
	errs := make([]error, len(outs))
	for i := range outs {
		wg.Go(func() {
			o, err := c.Run(context.Background(), fakeTask(t, uint64(i+1)), func(int, int) {})
			if err == nil {
				outs[i] = o[0].Data
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("run %d: %v", i, errs[i])
		}
		for j := range i {
			if bytes.Equal(outs[i], outs[j]) {
				t.Errorf("runs %d and %d (different seeds) returned the same bytes: outputs crossed", i, j)
			}
		}
	}
}

func TestCommandRejectsOtherModel(t *testing.T) {
	task, err := protocol.Task{Prompt: "x"}.Normalize() // the default model
	if err != nil {
		t.Fatal(err)
	}
	_, err = fakeCommand(t, "ok").Run(context.Background(), task, nil)
	if !errors.Is(err, protocol.ErrBadTask) {
		t.Fatalf("Run error %v, want ErrBadTask", err)
	}
}

func TestNewCommandErrors(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(t.TempDir(), "generator.py")
	if err := os.WriteFile(notExec, []byte("print('hi')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		models []string
		argv   []string
		want   string
	}{
		{"cmd:x", []string{"m/x"}, []string{"gpunet-no-such-generator", "--flag"}, `generator "gpunet-no-such-generator" not found: give its full path, or put it on PATH`},
		{"cmd:x", []string{"m/x"}, []string{"/nonexistent/generator"}, `generator "/nonexistent/generator" not found`},
		{"cmd:x", []string{"m/x"}, []string{notExec}, "is not executable: chmod +x it"},
		{"cmd:x", []string{"m/x"}, nil, "no command"},
		{"cmd:x", nil, []string{exe}, "no models"},
		{"cmd:x", []string{"Bad Model"}, []string{exe}, "not a normalised model name"},
		{" ", []string{"m/x"}, []string{exe}, "empty name"},
	} {
		if _, err := NewCommand(tc.name, tc.models, tc.argv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewCommand(%q, %q, %q) error %v, want one containing %q", tc.name, tc.models, tc.argv, err, tc.want)
		}
	}
}

// TestCommandCheck: the start-up check passes a generator that follows the
// contract and fails, with the generator's own words, one that does not.
func TestCommandCheck(t *testing.T) {
	for _, tc := range []struct {
		mode string
		opts []CommandOption
		want string // "" for success
	}{
		{"ok", nil, ""},
		{"fail", nil, "CUDA out of memory"},
		{"notpng", nil, "not a PNG"},
		{"empty", nil, "wrote nothing to stdout"},
		// A generator that never answers is bounded by the run timeout.
		{"sleep", []CommandOption{WithCommandTimeout(300 * time.Millisecond)}, "no result after 300ms"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			err := fakeCommand(t, tc.mode, tc.opts...).Check(context.Background())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case tc.want == "":
			case err == nil:
				t.Fatalf("Check passed a generator in mode %s", tc.mode)
			case !strings.Contains(err.Error(), "failed its start-up check (model "+fakeModel+", 1 step at 64x64)") ||
				!strings.Contains(err.Error(), tc.want):
				t.Errorf("Check error %q, want the check named and %q", err, tc.want)
			}
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := fakeCommand(t, "ok").Check(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Check with a cancelled ctx: %v, want context.Canceled", err)
		}
	})
}

// TestStderrLines feeds stderr in pieces that split lines anywhere.
func TestStderrLines(t *testing.T) {
	steps := make(chan [2]int, 10)
	s := &stderrLines{log: slog.New(slog.NewTextHandler(testWriter{t}, nil)), steps: steps, done: make(chan struct{})}
	for _, p := range []string{"prog", "ress 1 3\npro", "gress 2 3\r\nprogress 2 3\nprogress 3", " 3\nTraceback\n", "last words"} {
		if n, err := s.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	close(steps)
	var got [][2]int
	for st := range steps {
		got = append(got, st)
	}
	if want := [][2]int{{1, 3}, {2, 3}, {2, 3}, {3, 3}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("steps %v, want %v", got, want)
	}
	if tail := s.tailSuffix(); !strings.HasSuffix(tail, "Traceback | last words") {
		t.Errorf("tail %q, want it to end with the last two lines", tail)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// editTaskFor is fakeTask naming images and a mask, with their Inputs.
func editTaskFor(t *testing.T, seed uint64, mask []byte, images ...[]byte) (protocol.Task, Inputs) {
	t.Helper()
	task := fakeTask(t, seed)
	return withInputs(t, task, mask, images...)
}

// TestCommandEdit: the generator receives the task with its input images
// and mask as base64 beside the task's fields; a task whose inputs were not
// given, or whose image header is refused, never starts it.
func TestCommandEdit(t *testing.T) {
	stdinFile := filepath.Join(t.TempDir(), "stdin.json")
	c := fakeCommand(t, "ok", WithCommandEnv(fakeStdinEnv+"="+stdinFile))
	photoA, photoB := encodePNG(t, photo("disc", 32, 32)), encodePNG(t, photo("stripes", 24, 16))
	mask := encodePNG(t, image.NewNRGBA(image.Rect(0, 0, 8, 8)))
	task, in := editTaskFor(t, 42, mask, photoA, photoB)

	outs, err := c.Edit(context.Background(), task, in, nil, nil, nil)
	if err != nil || len(outs) != 1 {
		t.Fatalf("Edit: %v", err)
	}
	raw, err := os.ReadFile(stdinFile)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		protocol.Task
		InputImages []string `json:"input_images"`
		MaskImage   string   `json:"mask_image"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("stdin %.200q: %v", raw, err)
	}
	if !got.Task.Equal(task) {
		t.Errorf("stdin task %+v, want %+v", got.Task, task)
	}
	if len(got.InputImages) != 2 {
		t.Fatalf("%d input_images, want 2", len(got.InputImages))
	}
	for i, want := range [][]byte{photoA, photoB} {
		if b, err := base64.StdEncoding.DecodeString(got.InputImages[i]); err != nil || !bytes.Equal(b, want) {
			t.Errorf("input_images[%d] is not the image in base64 (%v)", i, err)
		}
	}
	if b, err := base64.StdEncoding.DecodeString(got.MaskImage); err != nil || !bytes.Equal(b, mask) {
		t.Errorf("mask_image is not the mask in base64 (%v)", err)
	}

	notRun := func(name string, err error) {
		t.Helper()
		if _, statErr := os.Stat(stdinFile); !errors.Is(statErr, fs.ErrNotExist) {
			t.Errorf("%s: the generator ran (%v)", name, err)
		}
	}
	os.Remove(stdinFile)
	_, err = c.Run(context.Background(), task, nil)
	if !errors.Is(err, ErrInputsNotGiven) {
		t.Errorf("Run of a task with inputs: %v, want ErrInputsNotGiven", err)
	}
	notRun("Run", err)

	bomb := pngHeader(100000, 100000)
	task, in = editTaskFor(t, 42, nil, photoA, bomb)
	_, err = c.Edit(context.Background(), task, in, nil, nil, nil)
	if !errors.Is(err, protocol.ErrBadTask) || !strings.Contains(err.Error(), "input 1: png of 100000x100000") {
		t.Errorf("Edit with a huge header: %v, want ErrBadTask naming input 1", err)
	}
	notRun("a huge header", err)

	// Without inputs, Edit is Run: no input fields on stdin.
	plain := fakeTask(t, 43)
	if _, err := c.Edit(context.Background(), plain, Inputs{}, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(stdinFile); bytes.Contains(raw, []byte("input_images")) || bytes.Contains(raw, []byte("mask_image")) {
		t.Errorf("a plain task's stdin has input fields: %s", raw)
	}
}

// bigInput is a PNG header followed by n bytes of junk: it passes the
// host's header check and is more than a pipe holds.
func bigInput(n int) []byte {
	return append(pngHeader(64, 64), make([]byte, n)...)
}

// TestCommandEditDeafGenerator: a generator that never reads its task
// still ends at the timeout, in both modes.
func TestCommandEditDeafGenerator(t *testing.T) {
	for _, serve := range []int{0, 1} {
		c := fakeCommand(t, "deaf", WithCommandServe(serve), WithCommandTimeout(300*time.Millisecond))
		task, in := editTaskFor(t, 1, nil, bigInput(4<<20))
		_, err := c.Edit(context.Background(), task, in, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "no result after 300ms") {
			t.Errorf("serve %d: Edit error %v, want the timeout", serve, err)
		}
		c.Close()
	}
}

// TestCommandPreviewsPerTask: a per-task generator has no stream for
// previews, so RunWithPreviews asks for none (no preview_steps on stdin),
// sends none, and otherwise is Run.
func TestCommandPreviewsPerTask(t *testing.T) {
	stdinFile := filepath.Join(t.TempDir(), "stdin.json")
	c := fakeCommand(t, "ok", WithCommandEnv(fakeStdinEnv+"="+stdinFile))
	task := fakeTask(t, 3)
	steps := 0
	outs, err := c.RunWithPreviews(context.Background(), task, func(int, int) { steps++ }, []int{2, 4}, func(k int, _ []byte) {
		t.Errorf("preview of step %d from a per-task generator", k)
	})
	if err != nil || len(outs) != 1 || steps != int(task.Steps) {
		t.Fatalf("RunWithPreviews: %d outputs, %d steps, %v; want Run's", len(outs), steps, err)
	}
	raw, err := os.ReadFile(stdinFile)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := json.Marshal(task); string(raw) != string(want)+"\n" {
		t.Errorf("stdin %q, want the task alone, without preview_steps", raw)
	}
}

// With WithCommandCheckInput the start-up check is an edit: the generator
// gets the check image and must answer it; without, a generator that
// needs an input fails the check.
func TestCommandCheckInput(t *testing.T) {
	// The generator fails a task without input_images, as an upscaler does.
	script := `read -r line; case "$line" in *'"input_images":["'*) cat "$0.png" ;; *) echo "no input image" >&2; exit 3 ;; esac`
	dir := t.TempDir()
	gen := filepath.Join(dir, "gen.sh")
	if err := os.WriteFile(gen, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gen+".png", encodePNG(t, image.NewGray(image.Rect(0, 0, checkSide, checkSide))), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	plain, err := NewCommand("cmd:needs-input", []string{"test/up"}, []string{"sh", gen})
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Check(ctx); err == nil {
		t.Error("a generator that needs an input passed the plain start-up check")
	}
	with, err := NewCommand("cmd:needs-input", []string{"test/up"}, []string{"sh", gen}, WithCommandCheckInput())
	if err != nil {
		t.Fatal(err)
	}
	if err := with.Check(ctx); err != nil {
		t.Errorf("start-up check with an input image: %v", err)
	}
	if _, err := DecodeInputConfig(checkImage()); err != nil {
		t.Errorf("the check image is not a valid input: %v", err)
	}
}
