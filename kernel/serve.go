package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
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
//   - stdout carries the task's "progress K N" lines, then one header
//     line, "png N" followed by exactly N bytes of PNG, or "error MESSAGE"
//     when the task failed but the generator can go on. Progress shares the
//     answer's stream so that it can never be taken for the next task's;
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
	steps   chan [2]int
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

// run is Run in serve mode: a generator from the pool takes the task.
func (p *servePool) run(ctx context.Context, t protocol.Task, in []byte, progress Progress) ([]Output, error) {
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
	out, keep, err := p.c.runOn(ctx, w, t, in, progress)
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
		steps: make(chan [2]int, 16), exited: make(chan struct{})}
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

// serveFrame is one answer read from a generator's stdout.
type serveFrame struct {
	data   []byte
	failed string // the generator's "error" message
	err    error  // the framing broke or stdout ended
	ended  bool   // stdout ended (the generator exited or closed it)
}

// readServeFrame reads one answer: any number of "progress K N" lines,
// passed to onProgress, then "png N\n" and N bytes, or "error MSG\n".
func readServeFrame(r *bufio.Reader, onProgress func(k, n int)) serveFrame {
	for {
		f, more := readServeLine(r, onProgress)
		if !more {
			return f
		}
	}
}

// readServeLine reads one line of an answer; more is true after a progress
// line.
func readServeLine(r *bufio.Reader, onProgress func(k, n int)) (f serveFrame, more bool) {
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

// runOn gives task t to generator w and waits for its answer. keep says
// whether w is fit for another task.
func (c *Command) runOn(ctx context.Context, w *serveWorker, t protocol.Task, in []byte, progress Progress) (out []Output, keep bool, err error) {
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
	if _, err := w.stdin.Write(in); err != nil {
		return fail("writing the task: %v", err)
	}
	got := make(chan serveFrame, 1)
	go func() {
		got <- readServeFrame(w.stdout, func(k, n int) {
			select {
			case w.steps <- [2]int{k, n}:
			case <-w.exited:
			case <-runCtx.Done():
			}
		})
	}()
	lastK := 0
	report := func(s [2]int) {
		// Steps never go backwards (see stderrLines).
		if progress != nil && ctx.Err() == nil && s[0] >= lastK {
			lastK = s[0]
			progress(s[0], s[1])
		}
	}
	for {
		select {
		case s := <-w.steps:
			report(s)
		case f := <-got:
			// The reader passed every progress line before the answer.
			for drained := false; !drained; {
				select {
				case s := <-w.steps:
					report(s)
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
