package kernel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// Serve mode keeps a generator running between tasks, so a model loaded
// into GPU memory once serves every task after it (docs/kernels.md,
// "Serve mode"). The contract differs from the per-task one only in how a
// task and its answer are framed:
//
//   - stdin gets one task per line (the same JSON object) and stays open;
//     closing it asks the generator to exit;
//   - stdout carries the task's "progress K N" lines and, when the task
//     line asked for them with "preview_steps", "preview K N" headers each
//     followed by exactly N bytes of PNG (a partial image after step K);
//     then one header line, "png N" followed by exactly N bytes of PNG, or
//     "error MESSAGE" when the task failed but the generator can go on.
//     Progress and previews share the answer's stream so that they can
//     never be taken for the next task's;
//   - stderr is for logs only.
//
// A generator that breaks the framing, exits, or has a task cancelled under
// it (ctx done, timeout) is killed with its process group; the next task
// starts a fresh one.
const (
	// serveMaxHeader bounds a header line on stdout, newline included.
	serveMaxHeader = 1 << 10
	// serveStopGrace is how long Close waits for an idle generator to exit
	// after its stdin is closed before killing it.
	serveStopGrace = 2 * time.Second
)

// WithCommandServe makes the Command run its generator in serve mode, with
// at most workers processes (one task at a time each); a Run beyond that
// waits for a free one. A host passes its slot count.
func WithCommandServe(workers int) CommandOption {
	return func(c *commandConfig) { c.serve = workers }
}

// errKernelClosed is returned by Run after Close.
var errKernelClosed = errors.New("command kernel closed")

// servePool holds a serve-mode Command's generator processes.
type servePool struct {
	c      *Command
	slots  chan struct{}     // one token per task running
	idle   chan *serveWorker // generators waiting for a task
	starts atomic.Uint64

	mu     sync.Mutex
	closed bool
}

func newServePool(c *Command, workers int) *servePool {
	return &servePool{c: c, slots: make(chan struct{}, workers), idle: make(chan *serveWorker, workers)}
}

// serveWorker is one running generator.
type serveWorker struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stdout  *bufio.Reader
	pr      *os.File // stdout's read end, closed once the worker is done
	stderr  *stderrLines
	events  chan serveEvent
	exited  chan struct{} // closed once Wait has returned
	waitErr error         // set before exited is closed
}

func (w *serveWorker) alive() bool {
	select {
	case <-w.exited:
		return false
	default:
		return true
	}
}

// kill ends the generator's process group and waits for it.
func (w *serveWorker) kill() {
	killProcessGroup(w.cmd)
	_ = w.stdin.Close()
	<-w.exited
	_ = w.pr.Close()
}

// stop asks an idle generator to exit by closing its stdin, and kills it
// if it has not within serveStopGrace.
func (w *serveWorker) stop() {
	_ = w.stdin.Close()
	select {
	case <-w.exited:
		_ = w.pr.Close()
	case <-time.After(serveStopGrace):
		w.kill()
	}
}

// Starts is how many generator processes a serve-mode Command has started
// (0 for a per-task Command).
func (c *Command) Starts() uint64 {
	if c.pool == nil {
		return 0
	}
	return c.pool.starts.Load()
}

// Close stops a serve-mode Command's generators; Run fails afterwards. A
// per-task Command has nothing to close.
func (c *Command) Close() error {
	if c.pool == nil {
		return nil
	}
	p := c.pool
	p.mu.Lock()
	p.closed = true
	var idle []*serveWorker
	for drained := false; !drained; {
		select {
		case w := <-p.idle:
			idle = append(idle, w)
		default:
			drained = true
		}
	}
	p.mu.Unlock()
	for _, w := range idle {
		w.stop()
	}
	return nil
}

// run is Run in serve mode: a generator from the pool takes the task. at
// is the task line's preview_steps (normalised by previewSteps), nil when
// preview is.
func (p *servePool) run(ctx context.Context, t protocol.Task, in []byte, progress Progress, at []int, preview PreviewFunc) ([]Output, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-p.slots }()
	w, err := p.get()
	if err != nil {
		return nil, err
	}
	out, keep, err := p.c.runOn(ctx, w, t, in, progress, at, preview)
	p.put(w, keep)
	return out, err
}

// get returns an idle live generator, or starts one.
func (p *servePool) get() (*serveWorker, error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, errKernelClosed
	}
	for {
		select {
		case w := <-p.idle:
			if w.alive() {
				return w, nil
			}
			w.kill() // reap one that died while idle
		default:
			return p.start()
		}
	}
}

// put returns w to the pool after a task, or ends it.
func (p *servePool) put(w *serveWorker, keep bool) {
	if !keep || !w.alive() {
		w.kill()
		return
	}
	p.mu.Lock()
	if !p.closed {
		p.idle <- w // never blocks: at most cap(slots) workers exist
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	w.stop()
}

// start launches a generator in serve mode.
func (p *servePool) start() (*serveWorker, error) {
	c := p.c
	cmd := exec.Command(c.path, c.argv[1:]...)
	cmd.Args[0] = c.argv[0]
	cmd.Dir = c.cfg.dir
	if len(c.cfg.env) > 0 {
		cmd.Env = append(os.Environ(), c.cfg.env...)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	// An os.Pipe rather than StdoutPipe: Wait must not close the read end
	// under a reader that has not yet taken the last frame.
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = pw
	w := &serveWorker{cmd: cmd, stdin: stdin, stdout: bufio.NewReaderSize(pr, 64<<10), pr: pr,
		events: make(chan serveEvent, 16), exited: make(chan struct{})}
	w.stderr = &stderrLines{log: c.cfg.log, logOnly: true}
	cmd.Stderr = w.stderr
	setProcessGroup(cmd)
	cmd.Cancel = nil // no context: kill ends it
	cmd.WaitDelay = commandWaitDelay
	err = cmd.Start()
	_ = pw.Close() // the child holds its own copy
	if err != nil {
		_ = pr.Close()
		return nil, fmt.Errorf("starting %s: %w", c.argv[0], err)
	}
	p.starts.Add(1)
	go func() {
		w.waitErr = cmd.Wait()
		// Whatever it started in its group goes with it, so nothing holds
		// stdout open and a reader sees the end of it.
		killProcessGroup(cmd)
		close(w.exited)
	}()
	return w, nil
}

// serveEvent is a progress line or a preview, passed from the stdout reader
// to the task's goroutine in the order the generator wrote them.
type serveEvent struct {
	k, n int
	png  []byte // a preview of step k; nil for a progress line
}

// serveFrame is one answer read from a generator's stdout.
type serveFrame struct {
	data   []byte
	failed string // the generator's "error" message
	err    error  // the framing broke or stdout ended
	ended  bool   // stdout ended (the generator exited or closed it)
}

// readServeFrame reads one answer: any number of "progress K N" lines,
// passed to onProgress, and "preview K N\n" frames of N bytes, passed to
// onPreview unchecked but for N; then "png N\n" and N bytes, or
// "error MSG\n".
func readServeFrame(r *bufio.Reader, onProgress func(k, n int), onPreview func(k int, png []byte)) serveFrame {
	for {
		f, more := readServeLine(r, onProgress, onPreview)
		if !more {
			return f
		}
	}
}

// readServeLine reads one line of an answer; more is true after a progress
// line or a preview.
func readServeLine(r *bufio.Reader, onProgress func(k, n int), onPreview func(k int, png []byte)) (f serveFrame, more bool) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) || len(line) >= serveMaxHeader {
			return serveFrame{err: fmt.Errorf("a stdout line over %d bytes where a header was due (log lines belong on stderr)", serveMaxHeader)}, false
		}
		return serveFrame{err: fmt.Errorf("stdout ended before an answer: %w", err), ended: true}, false
	}
	if len(line) > serveMaxHeader {
		return serveFrame{err: fmt.Errorf("a stdout line over %d bytes where a header was due (log lines belong on stderr)", serveMaxHeader)}, false
	}
	header := strings.TrimRight(string(line), "\r\n")
	verb, arg, _ := strings.Cut(header, " ")
	switch verb {
	case "progress":
		// A malformed one is ignored, as on stderr per task.
		if k, n, ok := parseProgress(header); ok {
			onProgress(k, n)
		}
		return serveFrame{}, true
	case "preview":
		// Unlike a progress line, a bad header is fatal: the bytes after
		// it cannot be told from the next header.
		ks, ns, _ := strings.Cut(arg, " ")
		k, errK := strconv.Atoi(ks)
		n, errN := strconv.Atoi(ns)
		if errK != nil || errN != nil || n <= 0 || n > protocol.MaxPreviewBytes {
			return serveFrame{err: fmt.Errorf("header %.80q: want preview K N with 1 ≤ N ≤ %d", header, protocol.MaxPreviewBytes)}, false
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return serveFrame{err: fmt.Errorf("stdout ended inside a %d-byte preview: %w", n, err), ended: true}, false
		}
		onPreview(k, data)
		return serveFrame{}, true
	case "png":
		n, err := strconv.Atoi(arg)
		if err != nil || n <= 0 || n > protocol.MaxBlockBytes {
			return serveFrame{err: fmt.Errorf("header %q: want png N with 1 ≤ N ≤ %d", header, protocol.MaxBlockBytes)}, false
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return serveFrame{err: fmt.Errorf("stdout ended inside a %d-byte PNG: %w", n, err), ended: true}, false
		}
		return serveFrame{data: data}, false
	case "error":
		if arg == "" {
			arg = "no message"
		}
		return serveFrame{failed: arg}, false
	}
	return serveFrame{err: fmt.Errorf("unexpected stdout line %.80q where a header was due (log lines belong on stderr)", header)}, false
}

// runOn gives task t to generator w and waits for its answer, passing on
// its progress and the previews asked for at the steps in at. keep says
// whether w is fit for another task.
func (c *Command) runOn(ctx context.Context, w *serveWorker, t protocol.Task, in []byte, progress Progress, at []int, preview PreviewFunc) (out []Output, keep bool, err error) {
	w.stderr.newTask()
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if c.cfg.timeout > 0 {
		var stop context.CancelFunc
		runCtx, stop = context.WithTimeoutCause(runCtx, c.cfg.timeout, fmt.Errorf("no result after %v", c.cfg.timeout))
		defer stop()
	}
	fail := func(format string, a ...any) ([]Output, bool, error) {
		return nil, false, fmt.Errorf("generator %s: %s%s", c.argv[0], fmt.Sprintf(format, a...), w.stderr.tailSuffix())
	}
	// The task is written from a goroutine: with input images a line is
	// megabytes, more than a pipe holds, and a generator that does not
	// read it must not keep this task from its timeout or cancellation.
	// Every way out of runOn either waited for the write or killed w,
	// which ends it (the pipe closes).
	wrote := make(chan error, 1)
	go func() {
		_, err := w.stdin.Write(in)
		wrote <- err
	}()
	writing := true
	defer func() {
		if writing {
			w.kill()
			<-wrote
		}
	}()
	send := func(e serveEvent) {
		select {
		case w.events <- e:
		case <-w.exited:
		case <-runCtx.Done():
		}
	}
	// The reader drops the previews not asked for, so that at most len(at)
	// of them (256 KiB each) wait in w.events; only it touches lastPreview.
	lastPreview := 0
	onPreview := func(k int, b []byte) {
		if reason := checkPreview(k, b, lastPreview, at, t); reason != "" {
			c.cfg.log.Debug("generator: preview dropped", "step", k, "bytes", len(b), "reason", reason)
			return
		}
		lastPreview = k
		send(serveEvent{k: k, png: b})
	}
	got := make(chan serveFrame, 1)
	go func() {
		got <- readServeFrame(w.stdout, func(k, n int) { send(serveEvent{k: k, n: n}) }, onPreview)
	}()
	lastK := 0
	report := func(e serveEvent) {
		if ctx.Err() != nil {
			return
		}
		if e.png != nil {
			if preview != nil { // at is empty without it: never false
				preview(e.k, e.png)
			}
			return
		}
		// Steps never go backwards (see stderrLines).
		if progress != nil && e.k >= lastK {
			lastK = e.k
			progress(e.k, e.n)
		}
	}
	for {
		select {
		case err := <-wrote:
			writing = false
			if err != nil {
				return fail("writing the task: %v", err)
			}
			wrote = nil // a nil channel: this case is done
		case e := <-w.events:
			report(e)
		case f := <-got:
			if writing {
				// An answer before the generator read the whole task:
				// the rest of the line would be taken for the next
				// task. Give the write a moment to report, as the
				// generator may have read it all just now.
				select {
				case err := <-wrote:
					writing = false
					if err != nil {
						return fail("writing the task: %v", err)
					}
				case <-time.After(commandWaitDelay):
					return fail("answered before reading the whole task")
				}
			}
			// The reader passed every progress line and preview before
			// the answer.
			for drained := false; !drained; {
				select {
				case e := <-w.events:
					report(e)
				default:
					drained = true
				}
			}
			switch {
			case f.ended:
				// Most likely it exited: say so, with its status.
				select {
				case <-w.exited:
					return fail("exited during the task: %v", w.waitErr)
				case <-time.After(commandWaitDelay):
					return fail("%v", f.err)
				}
			case f.err != nil:
				return fail("%v", f.err)
			case f.failed != "":
				return nil, true, fmt.Errorf("generator %s failed the task: %s%s", c.argv[0], f.failed, w.stderr.tailSuffix())
			}
			if err := checkPNG(f.data, int(t.Width), int(t.Height)); err != nil {
				return nil, true, fmt.Errorf("generator %s: %w%s", c.argv[0], err, w.stderr.tailSuffix())
			}
			return []Output{{MediaType: "image/png", Data: f.data}}, true, nil
		case <-runCtx.Done():
			w.kill()
			if err := ctx.Err(); err != nil {
				return nil, false, err
			}
			return fail("killed: %v", context.Cause(runCtx))
		case <-w.exited:
			// It may have answered just before it exited: the reader gets
			// the frame or EOF, now that its group is gone (a process it
			// moved out of its group could hold stdout: wait a little).
			select {
			case f := <-got:
				if f.err == nil && f.failed == "" && checkPNG(f.data, int(t.Width), int(t.Height)) == nil {
					return []Output{{MediaType: "image/png", Data: f.data}}, false, nil
				}
			case <-time.After(commandWaitDelay):
			}
			return fail("exited during the task: %v", w.waitErr)
		}
	}
}

// checkPreview says why a preview of step k (bytes b) from a generator is
// dropped, or "" to pass it on: the task must have asked for step k (at,
// normalised by previewSteps), after the last one passed on (last), and b
// must be a PNG no larger than the task's image, read from its header only.
// A dropped preview costs the task nothing: previews show the run, and the
// protocol allows a host to send fewer than asked.
func checkPreview(k int, b []byte, last int, at []int, t protocol.Task) string {
	if !slices.Contains(at, k) {
		return "step not asked for"
	}
	if k <= last {
		return "step already passed"
	}
	if !bytes.HasPrefix(b, pngSignature) {
		return "not a PNG"
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return "not a valid PNG: " + err.Error()
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width > int(t.Width) || cfg.Height > int(t.Height) {
		return fmt.Sprintf("%dx%d, larger than the task's %dx%d", cfg.Width, cfg.Height, t.Width, t.Height)
	}
	return ""
}

// previewSteps normalises RunWithPreviews' at for a task of total steps:
// ascending, distinct, within 1..total-1. It returns nil when none is left.
func previewSteps(at []int, total int) []int {
	var out []int
	for _, k := range at {
		if k >= 1 && k < total {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
