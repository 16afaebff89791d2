package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// fakeServe plays a serve-mode generator (docs/kernels.md): one task per
// stdin line, answered on stdout. The prompt picks the behaviour:
// "fail" answers an error, "crash" exits mid-task, "garbage" breaks the
// framing, "hang" never answers, "inputs" answers an error listing the
// input images' hashes, "previews" sends the previews asked for among
// others the host must drop (fakePreviews), "preview-oversize" sends a
// preview over the cap; anything else is painted, ignoring preview_steps.
func fakeServe() int {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), 64<<10)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		var t protocol.Task
		if err := json.Unmarshal(in.Bytes(), &t); err != nil {
			fmt.Fprintln(os.Stderr, "decoding task:", err)
			return 1
		}
		var edit struct {
			InputImages  [][]byte `json:"input_images"`
			MaskImage    []byte   `json:"mask_image"`
			PreviewSteps []int    `json:"preview_steps"`
		}
		if err := json.Unmarshal(in.Bytes(), &edit); err != nil {
			fmt.Fprintln(os.Stderr, "decoding input images:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "task for seed", t.Seed)
		switch t.Prompt {
		case "inputs":
			// Says what it got, as an error the host passes on.
			fmt.Fprintf(out, "error got %d input images", len(edit.InputImages))
			for _, b := range edit.InputImages {
				fmt.Fprintf(out, ", %x", sha256.Sum256(b))
			}
			fmt.Fprintf(out, "; mask %d bytes\n", len(edit.MaskImage))
		case "previews":
			fakePreviews(out, t, edit.PreviewSteps)
		case "preview-oversize":
			// Then a good answer, which the host must not read as one.
			big := append(slices.Clone(pngSignature), make([]byte, protocol.MaxPreviewBytes+1-len(pngSignature))...)
			fmt.Fprintf(out, "progress 1 %d\npreview 1 %d\n", t.Steps, len(big))
			out.Write(big)
			b := fakePreview(int(t.Width), int(t.Height), 1)
			fmt.Fprintf(out, "png %d\n", len(b))
			out.Write(b)
		case "fail":
			fmt.Fprintln(out, "error CUDA out of memory at", t.Width, "x", t.Height)
		case "crash":
			fmt.Fprintln(out, "progress 1", t.Steps)
			out.Flush()
			fmt.Fprintln(os.Stderr, "Segmentation fault")
			return 3
		case "garbage":
			fmt.Fprintln(out, "Loading pipeline components...")
		case "hang":
			fmt.Fprintln(out, "progress 1", t.Steps)
			out.Flush()
			time.Sleep(time.Hour)
		default:
			// Progress on stdout; the same lines on stderr are only logs.
			fmt.Fprintf(os.Stderr, "progress 9 9\n")
			for k := 1; k <= int(t.Steps); k++ {
				fmt.Fprintf(out, "progress %d %d\n", k, t.Steps)
				if k == 2 {
					fmt.Fprintf(out, "progress 1 %d\nprogress x y\n", t.Steps) // ignored
				}
			}
			img := image.NewGray(image.Rect(0, 0, int(t.Width), int(t.Height)))
			for i := range img.Pix {
				img.Pix[i] = uint8(uint64(i) * t.Seed >> 3)
			}
			var b bytes.Buffer
			_ = png.Encode(&b, img)
			fmt.Fprintf(out, "png %d\n", b.Len())
			out.Write(b.Bytes())
		}
		if err := out.Flush(); err != nil {
			return 1
		}
	}
	return 0 // stdin closed: the host asks us to exit
}

// fakePreview is the fake generator's picture of w × h, all grey level v.
func fakePreview(w, h, v int) []byte {
	img := image.NewGray(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = uint8(v)
	}
	var b bytes.Buffer
	_ = png.Encode(&b, img)
	return b.Bytes()
}

// fakePreviews answers a task with its progress and, after each step in
// asked, a half-size preview of grey level K, which the host must pass on.
// Around it are those it must drop: one at every step not asked for (0 and
// the last included), bytes that are not a PNG, a PNG larger than the
// task's image, a second preview of the same step.
func fakePreviews(out io.Writer, t protocol.Task, asked []int) {
	w, h, n := int(t.Width), int(t.Height), int(t.Steps)
	preview := func(k int, b []byte) {
		fmt.Fprintf(out, "preview %d %d\n", k, len(b))
		out.Write(b)
	}
	preview(0, fakePreview(w/2, h/2, 200))
	for k := 1; k <= n; k++ {
		fmt.Fprintf(out, "progress %d %d\n", k, n)
		if !slices.Contains(asked, k) {
			preview(k, fakePreview(w/2, h/2, 200))
			continue
		}
		preview(k, []byte("GIF89a, not a PNG"))
		preview(k, fakePreview(w+8, h, 200))
		preview(k, fakePreview(w/2, h/2, k))
		preview(k, fakePreview(w/2, h/2, 200))
	}
	b := fakePreview(w, h, 255)
	fmt.Fprintf(out, "png %d\n", len(b))
	out.Write(b)
}

func serveTask(t *testing.T, prompt string, seed uint64) protocol.Task {
	t.Helper()
	task := fakeTask(t, seed)
	task.Prompt = prompt
	return task
}

// TestServeKeepsOneProcess: tasks in serve mode reach one long-lived
// generator, with their progress, and give the bytes it painted.
func TestServeKeepsOneProcess(t *testing.T) {
	c := fakeCommand(t, "serve", WithCommandServe(1))
	defer c.Close()
	for seed := uint64(1); seed <= 3; seed++ {
		var steps []int
		out, err := c.Run(context.Background(), serveTask(t, "a harbour", seed), func(k, n int) {
			if n != 5 {
				t.Errorf("progress %d of %d, want of 5", k, n)
			}
			steps = append(steps, k)
		})
		if err != nil {
			t.Fatalf("task %d: %v", seed, err)
		}
		if fmt.Sprint(steps) != "[1 2 3 4 5]" {
			t.Errorf("task %d: progress %v, want 1..5", seed, steps)
		}
		img, err := png.Decode(bytes.NewReader(out[0].Data))
		if err != nil {
			t.Fatal(err)
		}
		if g := img.(*image.Gray); g.Pix[9] != uint8(9*seed>>3) {
			t.Errorf("task %d: pixel 9 is %d, want the generator's %d", seed, g.Pix[9], uint8(9*seed>>3))
		}
	}
	if n := c.Starts(); n != 1 {
		t.Errorf("%d generator processes for 3 tasks, want 1", n)
	}
}

// TestServeCheck: in serve mode the start-up check's generator stays for
// the tasks after it, and a generator that does not speak serve mode (it
// waits for the end of stdin) fails the check within the run timeout.
func TestServeCheck(t *testing.T) {
	c := fakeCommand(t, "serve", WithCommandServe(1))
	defer c.Close()
	if err := c.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if _, err := c.Run(context.Background(), serveTask(t, "a harbour", 7), nil); err != nil {
		t.Fatal(err)
	}
	if n := c.Starts(); n != 1 {
		t.Errorf("%d generator processes for the check and one task, want 1", n)
	}

	perTask := fakeCommand(t, "ok", WithCommandServe(1), WithCommandTimeout(300*time.Millisecond))
	defer perTask.Close()
	err := perTask.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "failed its start-up check") || !strings.Contains(err.Error(), "no result after") {
		t.Errorf("Check of a per-task generator in serve mode: %v, want a failed check after the timeout", err)
	}
}

// TestServeFailures: a failed task leaves the generator running; a crash,
// broken framing or a cancelled task replaces it; every error says why.
func TestServeFailures(t *testing.T) {
	c := fakeCommand(t, "serve", WithCommandServe(1))
	defer c.Close()
	ok := func(seed uint64) {
		t.Helper()
		if _, err := c.Run(context.Background(), serveTask(t, "fine", seed), nil); err != nil {
			t.Fatalf("a good task after a bad one: %v", err)
		}
	}
	cases := []struct {
		prompt     string
		want       string
		starts     uint64 // generators started once the next good task ran
		cancelling bool
	}{
		{"fail", "failed the task: CUDA out of memory at 96 x 64", 1, false},
		{"crash", "exited during the task", 2, false},
		{"garbage", `unexpected stdout line "Loading pipeline components..."`, 3, false},
		{"hang", "context canceled", 4, true},
	}
	for i, tc := range cases {
		ctx, cancel := context.WithCancel(context.Background())
		if tc.cancelling {
			time.AfterFunc(200*time.Millisecond, cancel)
		}
		_, err := c.Run(ctx, serveTask(t, tc.prompt, uint64(i+1)), nil)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one saying %q", tc.prompt, err, tc.want)
		}
		if tc.prompt == "crash" && !strings.Contains(err.Error(), "Segmentation fault") {
			t.Errorf("crash: error %v does not quote the generator's last stderr line", err)
		}
		if tc.cancelling && !errors.Is(err, context.Canceled) {
			t.Errorf("hang: error %v, want context.Canceled", err)
		}
		ok(uint64(10 + i))
		if n := c.Starts(); n != tc.starts {
			t.Errorf("after %s and a good task: %d generators started, want %d", tc.prompt, n, tc.starts)
		}
	}
}

// TestServeTimeout: a task past the timeout kills the generator.
func TestServeTimeout(t *testing.T) {
	c := fakeCommand(t, "serve", WithCommandServe(1), WithCommandTimeout(300*time.Millisecond))
	defer c.Close()
	_, err := c.Run(context.Background(), serveTask(t, "hang", 1), nil)
	if err == nil || !strings.Contains(err.Error(), "no result after 300ms") {
		t.Errorf("error %v, want the timeout", err)
	}
}

// TestServeConcurrent: with two generators, concurrent tasks all complete
// and no more than two processes start.
func TestServeConcurrent(t *testing.T) {
	c := fakeCommand(t, "serve", WithCommandServe(2))
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			_, err := c.Run(context.Background(), serveTask(t, "together", uint64(i+1)), nil)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := c.Starts(); n < 1 || n > 2 {
		t.Errorf("%d generators for 8 tasks with 2 allowed", n)
	}
}

// TestServeClose: Close ends idle generators, and Run fails after it.
func TestServeClose(t *testing.T) {
	c := fakeCommand(t, "serve", WithCommandServe(1))
	if _, err := c.Run(context.Background(), serveTask(t, "before", 1), nil); err != nil {
		t.Fatal(err)
	}
	w := <-c.pool.idle
	c.pool.idle <- w
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.exited:
	default:
		t.Error("the generator still runs after Close")
	}
	if _, err := c.Run(context.Background(), serveTask(t, "after", 2), nil); !errors.Is(err, errKernelClosed) {
		t.Errorf("Run after Close: %v, want errKernelClosed", err)
	}
}

func TestReadServeFrame(t *testing.T) {
	cases := map[string]string{
		"preview 1 0\n":           "want preview K N",
		"preview 1 262145\n":      "want preview K N",
		"preview x 3\n":           "want preview K N",
		"preview 3\n":             "want preview K N",
		"preview 1  3\n":          "want preview K N",
		"preview 1 5\nabc":        "ended inside a 5-byte preview",
		"png 0\n":                 "want png N",
		"png -3\n":                "want png N",
		"png 99999999999\n":       "want png N",
		"png 10\nshort":           "ended inside a 10-byte PNG",
		"":                        "stdout ended before an answer",
		"no newline":              "stdout ended before an answer",
		strings.Repeat("x", 5000): "over 1024 bytes",
		"hello\n":                 "unexpected stdout line",
	}
	for in, want := range cases {
		f := readServeFrame(bufio.NewReaderSize(strings.NewReader(in), 4096), func(int, int) {}, func(int, []byte) {})
		if f.err == nil || !strings.Contains(f.err.Error(), want) {
			t.Errorf("%.20q: %v, want an error saying %q", in, f.err, want)
		}
	}
	if f := readServeFrame(bufio.NewReader(strings.NewReader("error\n")), nil, nil); f.failed != "no message" {
		t.Errorf("a bare error: %+v", f)
	}
	var steps []string
	f := readServeFrame(bufio.NewReader(strings.NewReader("progress 1 2\npreview 1 4\nxy\nzprogress 2 2\npng 3\nabcNEXT")),
		func(k, n int) { steps = append(steps, fmt.Sprint(k)) },
		func(k int, b []byte) { steps = append(steps, fmt.Sprintf("%d:%q", k, b)) })
	if f.err != nil || string(f.data) != "abc" || fmt.Sprint(steps) != `[1 1:"xy\nz" 2]` {
		t.Errorf("a 3-byte frame after two steps and a preview: %+v, steps %v", f, steps)
	}
}

// FuzzReadServeFrame: whatever a generator writes, the reader returns one
// answer or an error, never more bytes than a block may hold, steps that
// parseProgress accepts, and previews within their cap.
func FuzzReadServeFrame(f *testing.F) {
	f.Add([]byte("progress 1 2\nprogress 2 2\npng 3\nabc"))
	f.Add([]byte("error CUDA out of memory\n"))
	f.Add([]byte("png 99999999999999999999\n"))
	f.Add([]byte("progress -1 2\nprogress 3 2\nhello\n"))
	f.Add([]byte("png 4\r\n\x89PNG"))
	f.Add([]byte("progress 1 3\npreview 1 3\nabcpreview 2 262145\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := readServeFrame(bufio.NewReaderSize(bytes.NewReader(b), 4096), func(k, n int) {
			if k < 0 || n <= 0 || k > n {
				t.Fatalf("progress %d of %d passed on", k, n)
			}
		}, func(k int, png []byte) {
			if len(png) == 0 || len(png) > protocol.MaxPreviewBytes {
				t.Fatalf("a %d-byte preview passed on", len(png))
			}
		})
		answers := 0
		if fr.err != nil {
			answers++
		}
		if fr.failed != "" {
			answers++
		}
		if fr.data != nil {
			answers++
		}
		if answers != 1 {
			t.Fatalf("%d answers in %+v", answers, fr)
		}
		if len(fr.data) > protocol.MaxBlockBytes || len(fr.failed) > serveMaxHeader {
			t.Fatalf("answer over its caps: %d bytes of data, %d of message", len(fr.data), len(fr.failed))
		}
	})
}

// TestServeEdit: in serve mode the task line carries the input images, and
// a generator's refusal of them ("error ...") fails the task but keeps the
// generator for the next one.
func TestServeEdit(t *testing.T) {
	c := fakeCommand(t, "serve", WithCommandServe(1))
	defer c.Close()
	img, mask := encodePNG(t, photo("disc", 16, 16)), encodePNG(t, image.NewNRGBA(image.Rect(0, 0, 4, 4)))
	task, in := editTaskFor(t, 5, mask, img)
	task.Prompt = "inputs"
	_, err := c.Edit(context.Background(), task, in, nil, nil, nil)
	want := fmt.Sprintf("got 1 input images, %x; mask %d bytes", sha256.Sum256(img), len(mask))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Edit error %v, want the generator's %q", err, want)
	}
	if _, err := c.Run(context.Background(), serveTask(t, "after an edit", 6), nil); err != nil {
		t.Fatalf("a plain task after the edit: %v", err)
	}
	if n := c.Starts(); n != 1 {
		t.Errorf("%d generators started, want 1", n)
	}
}

// TestServePreviews: a serve-mode generator's previews reach the
// PreviewFunc with their step and bytes, in stdout order with progress;
// those not asked for, or not a PNG of at most the task's size, are dropped
// without failing the task; a preview header over the cap breaks the
// framing and replaces the generator; one that ignores preview_steps
// still serves.
func TestServePreviews(t *testing.T) {
	c := fakeCommand(t, "serve", WithCommandServe(1))
	defer c.Close()
	ctx := context.Background()
	var got []string
	progress := func(k, n int) { got = append(got, fmt.Sprintf("progress %d", k)) }
	var images [][]byte
	preview := func(k int, b []byte) {
		got = append(got, fmt.Sprintf("preview %d", k))
		images = append(images, b)
	}
	reset := func() { got, images = nil, nil }

	// Unsorted, repeated and out of range: the task line asks for 2 and 4.
	task := serveTask(t, "previews", 1)
	out, err := c.RunWithPreviews(ctx, task, progress, []int{4, 2, 0, 5, 2, 9}, preview)
	if err != nil {
		t.Fatal(err)
	}
	if want := "[progress 1 progress 2 preview 2 progress 3 progress 4 preview 4 progress 5]"; fmt.Sprint(got) != want {
		t.Errorf("events %v, want %s", got, want)
	}
	for i, k := range []int{2, 4} {
		if want := fakePreview(48, 32, k); i >= len(images) || !bytes.Equal(images[i], want) {
			t.Errorf("preview of step %d is not the generator's", k)
		}
	}
	if len(out) != 1 || !bytes.Equal(out[0].Data, fakePreview(96, 64, 255)) {
		t.Errorf("the output is not the generator's answer")
	}

	// An edit asks for previews as a plain task does.
	reset()
	etask, in := editTaskFor(t, 7, nil, encodePNG(t, photo("disc", 16, 16)))
	etask.Prompt = "previews"
	if _, err := c.Edit(ctx, etask, in, nil, []int{3}, preview); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[preview 3]" || !bytes.Equal(images[0], fakePreview(48, 32, 3)) {
		t.Errorf("edit previews %v, want the generator's of step 3", got)
	}

	// Not asked for at all: every preview is dropped, the task is fine.
	reset()
	if _, err := c.RunWithPreviews(ctx, serveTask(t, "previews", 2), progress, nil, preview); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Run(ctx, serveTask(t, "previews", 3), progress); err != nil {
		t.Fatal(err)
	}
	if len(images) != 0 {
		t.Errorf("%d previews passed on where none was asked for: %v", len(images), got)
	}

	// A generator that ignores preview_steps.
	reset()
	if _, err := c.RunWithPreviews(ctx, serveTask(t, "plain", 4), progress, []int{2}, preview); err != nil {
		t.Fatal(err)
	}
	if want := "[progress 1 progress 2 progress 3 progress 4 progress 5]"; fmt.Sprint(got) != want {
		t.Errorf("events %v, want %s", got, want)
	}
	if n := c.Starts(); n != 1 {
		t.Errorf("%d generators started, want 1: dropped previews must not replace it", n)
	}

	reset()
	_, err = c.RunWithPreviews(ctx, serveTask(t, "preview-oversize", 5), progress, []int{1}, preview)
	if err == nil || !strings.Contains(err.Error(), "want preview K N with 1 ≤ N ≤ 262144") {
		t.Errorf("a preview over the cap: %v, want a framing error", err)
	}
	if len(images) != 0 {
		t.Errorf("a preview over the cap was passed on")
	}
	if _, err := c.Run(ctx, serveTask(t, "after", 6), nil); err != nil {
		t.Fatal(err)
	}
	if n := c.Starts(); n != 2 {
		t.Errorf("%d generators started, want 2: a broken framing replaces the generator", n)
	}
}

// TestServePreviewSteps: the task line's preview_steps are RunWithPreviews'
// at, ascending, distinct and within 1..steps-1.
func TestServePreviewSteps(t *testing.T) {
	for _, tc := range []struct {
		at    []int
		total int
		want  string
	}{
		{nil, 5, "[]"},
		{[]int{4, 2, 0, 5, 2, -1}, 5, "[2 4]"},
		{[]int{1}, 1, "[]"},
		{[]int{1, 149}, 150, "[1 149]"},
	} {
		if got := fmt.Sprint(previewSteps(tc.at, tc.total)); got != tc.want {
			t.Errorf("previewSteps(%v, %d) = %s, want %s", tc.at, tc.total, got, tc.want)
		}
	}
}
