package kernel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// fakeServe plays a serve-mode generator (docs/kernels.md): one task per
// stdin line, answered on stdout. The prompt picks the behaviour:
// "fail" answers an error, "crash" exits mid-task, "garbage" breaks the
// framing, "hang" never answers; anything else is painted.
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
		fmt.Fprintln(os.Stderr, "task for seed", t.Seed)
		switch t.Prompt {
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
		f := readServeFrame(bufio.NewReaderSize(strings.NewReader(in), 4096), func(int, int) {})
		if f.err == nil || !strings.Contains(f.err.Error(), want) {
			t.Errorf("%.20q: %v, want an error saying %q", in, f.err, want)
		}
	}
	if f := readServeFrame(bufio.NewReader(strings.NewReader("error\n")), nil); f.failed != "no message" {
		t.Errorf("a bare error: %+v", f)
	}
	var steps []int
	f := readServeFrame(bufio.NewReader(strings.NewReader("progress 1 2\nprogress 2 2\npng 3\nabcNEXT")), func(k, n int) { steps = append(steps, k) })
	if f.err != nil || string(f.data) != "abc" || fmt.Sprint(steps) != "[1 2]" {
		t.Errorf("a 3-byte frame after two steps: %+v, steps %v", f, steps)
	}
}

// FuzzReadServeFrame: whatever a generator writes, the reader returns one
// answer or an error, never more bytes than a block may hold, and steps
// that parseProgress accepts.
func FuzzReadServeFrame(f *testing.F) {
	f.Add([]byte("progress 1 2\nprogress 2 2\npng 3\nabc"))
	f.Add([]byte("error CUDA out of memory\n"))
	f.Add([]byte("png 99999999999999999999\n"))
	f.Add([]byte("progress -1 2\nprogress 3 2\nhello\n"))
	f.Add([]byte("png 4\r\n\x89PNG"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := readServeFrame(bufio.NewReaderSize(bytes.NewReader(b), 4096), func(k, n int) {
			if k < 0 || n <= 0 || k > n {
				t.Fatalf("progress %d of %d passed on", k, n)
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
