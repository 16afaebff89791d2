package kernel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// Limits the host puts on a generator's streams. docs/kernels.md states them
// as part of the contract.
const (
	// CommandMaxStderrLine bounds one stderr line; the rest of a longer
	// line is dropped. Progress lines are short, and a log line longer than
	// this is noise in the host's log.
	CommandMaxStderrLine = 4 << 10
	// commandTailLines and commandTailBytes bound the stderr tail kept for
	// the error of a failed run: enough for a Python traceback's last
	// frames and its message.
	commandTailLines = 20
	commandTailBytes = 4 << 10
	// commandMaxLogged bounds how many non-progress stderr lines one run
	// logs at debug, so a chatty generator cannot flood the host's log.
	commandMaxLogged = 200
)

// pngSignature starts every PNG file.
var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// errStdoutTooBig is the cause the run is cancelled with when the generator
// writes more than one output block may hold.
var errStdoutTooBig = fmt.Errorf("wrote more than %d bytes to stdout", protocol.MaxBlockBytes)

// CommandOption configures a Command.
type CommandOption func(*commandConfig)

type commandConfig struct {
	log     *slog.Logger
	env     []string
	dir     string
	timeout time.Duration
	serve   int // serve mode with this many generators; 0: a process per task
	// checkInput: the start-up check is an edit of checkImage (an
	// upscaler, or any generator that needs an input).
	checkInput bool
}

// WithCommandLogger sets the logger for the generator's stderr lines (debug)
// and for the host's notes about it. Default: slog.Default().
func WithCommandLogger(l *slog.Logger) CommandOption {
	return func(c *commandConfig) {
		if l != nil {
			c.log = l
		}
	}
}

// WithCommandEnv adds KEY=VALUE entries to the environment the generator
// inherits from the host (a later entry wins over an inherited one).
func WithCommandEnv(kv ...string) CommandOption {
	return func(c *commandConfig) { c.env = append(c.env, kv...) }
}

// WithCommandDir sets the generator's working directory. Default: the
// host's.
func WithCommandDir(dir string) CommandOption {
	return func(c *commandConfig) { c.dir = dir }
}

// WithCommandCheckInput makes the start-up check (Check) an edit: its
// task names a checkSide/4 × checkSide/4 PNG as its one input image, for a
// generator that runs only on an input (an upscaler ×4 then makes the
// check's checkSide × checkSide output). Default: a plain one-step task.
func WithCommandCheckInput() CommandOption {
	return func(c *commandConfig) { c.checkInput = true }
}

// WithCommandTimeout bounds one run; 0 means no bound other than the
// caller's ctx. Default: DefaultCommandTimeout.
func WithCommandTimeout(d time.Duration) CommandOption {
	return func(c *commandConfig) { c.timeout = d }
}

// DefaultCommandTimeout bounds one run of a generator. A generator that
// hangs (a wedged driver, a deadlock) would otherwise hold a slot for ever;
// 150 steps at 2048×2048 of a diffusion model on a mid-range card takes a
// few minutes, well inside it.
const DefaultCommandTimeout = 30 * time.Minute

// commandWaitDelay is how long Run waits, after the generator exits or is
// killed, for its stdout and stderr to close: a grandchild that keeps them
// open must not hold the task.
const commandWaitDelay = 2 * time.Second

// Command is a Kernel that runs an external generator program once per
// task, so any language or framework can serve a model (docs/kernels.md has
// the contract):
//
//   - argv is run as given: no shell is involved;
//   - stdin gets the normalised task as one JSON object (protocol.Task's
//     json tags; for an edit also input_images and mask_image, see Edit)
//     and a newline, then is closed;
//   - stderr lines "progress K N" report step K of N; other lines are logged
//     at debug, each cut at CommandMaxStderrLine bytes;
//   - stdout gets exactly one PNG of the task's width × height, at most
//     protocol.MaxBlockBytes bytes;
//   - exit status 0 means success.
//
// Run kills the generator's whole process group (where the OS has them)
// when ctx is done, when stdout overflows, or after the timeout.
//
// Per task, Command holds no state between runs and is safe for concurrent
// use: each Run starts its own process. In serve mode (WithCommandServe,
// serve.go) it keeps generators running between tasks instead; Close stops
// them. Only serve mode has a stream to carry previews on
// (RunWithPreviews).
type Command struct {
	name   string
	models []string
	path   string   // argv[0] resolved by exec.LookPath
	argv   []string // as configured, for messages and Args
	cfg    commandConfig
	pool   *servePool // serve mode only
}

var (
	_ Editor    = (*Command)(nil)
	_ Previewer = (*Command)(nil)
)

// NewCommand returns a Command named name (recorded in manifests, e.g.
// "cmd:torch-sketch-v1") serving models, which runs argv per task. argv[0]
// must be found by exec.LookPath now, so that a typo fails when the host
// starts rather than on the first task.
func NewCommand(name string, models []string, argv []string, opts ...CommandOption) (*Command, error) {
	if strings.TrimSpace(name) == "" {
		return nil, errors.New("command kernel: empty name; give one with its version, e.g. cmd:torch-sketch-v1")
	}
	if len(models) == 0 {
		return nil, errors.New("command kernel: no models; name at least one model the generator serves")
	}
	for _, m := range models {
		// A model name is valid when a task naming it normalises to it.
		t, err := protocol.Task{Model: m, Prompt: "x"}.Normalize()
		if err != nil || t.Model != m {
			return nil, fmt.Errorf("command kernel: model %q is not a normalised model name (lower case a-z 0-9 . _ : / -)", m)
		}
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("command kernel: no command given; pass the generator and its arguments")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, lookPathError(argv[0], err)
	}
	c := &Command{
		name:   name,
		models: slices.Clone(models),
		path:   path,
		argv:   slices.Clone(argv),
		cfg:    commandConfig{log: slog.Default(), timeout: DefaultCommandTimeout},
	}
	for _, o := range opts {
		o(&c.cfg)
	}
	if c.cfg.timeout < 0 {
		return nil, fmt.Errorf("command kernel: negative timeout %v", c.cfg.timeout)
	}
	if c.cfg.serve < 0 || c.cfg.serve > 1024 {
		return nil, fmt.Errorf("command kernel: %d serve-mode generators, want 1 to 1024 (0: a process per task)", c.cfg.serve)
	}
	if c.cfg.serve > 0 {
		c.pool = newServePool(c, c.cfg.serve)
	}
	c.cfg.env = slices.Clone(c.cfg.env)
	return c, nil
}

// lookPathError says why argv0 cannot be run and what to do: the first
// thing a host owner sees when --kernel-cmd is wrong.
func lookPathError(argv0 string, err error) error {
	switch {
	case errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("command kernel: generator %q not found: give its full path, or put it on PATH", argv0)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("command kernel: generator %q is not executable: chmod +x it, or put its interpreter first (python3, sh, …)", argv0)
	}
	return fmt.Errorf("command kernel: cannot run generator %q: %w", argv0, err)
}

// checkSide is the width and height of the start-up check's task: the
// smallest the contract allows, so the check costs a generator its start-up
// and little else.
const checkSide = protocol.MinSide

// Check runs one small task per model through the generator (one step,
// checkSide × checkSide, output discarded), exactly as the host will run
// tasks, and returns the first failure. A host calls it before it
// advertises the models: a generator that cannot start (a missing
// interpreter or package, no GPU) or breaks the contract fails here, with
// its stderr tail, rather than on the first submitter's task.
//
// Each run is bounded as any run is (WithCommandTimeout) and by ctx. In
// serve mode the generator started for the check stays in the pool, so the
// first real task does not pay its start-up again.
func (c *Command) Check(ctx context.Context) error {
	var in Inputs
	if c.cfg.checkInput {
		in.Images = [][]byte{checkImage()}
	}
	for _, m := range c.models {
		t := protocol.Task{Model: m, Prompt: "gpunet start-up check", Steps: 1, Width: checkSide, Height: checkSide}
		for _, b := range in.Images {
			t.Inputs = append(t.Inputs, protocol.Link{Cid: protocol.RawCID(b)})
		}
		t, err := t.Normalize()
		if err != nil {
			return fmt.Errorf("command kernel: start-up check task for %s: %w", m, err)
		}
		if _, err := c.Edit(ctx, t, in, nil, nil, nil); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("command kernel: %s failed its start-up check (model %s, 1 step at %dx%d): %w; fix the generator (run it by hand with a task on stdin) or --kernel-cmd, following docs/kernels.md",
				c.argv[0], m, checkSide, checkSide, err)
		}
	}
	return nil
}

// checkImage is the start-up check's input with WithCommandCheckInput: a
// checkSide/4-pixel square of gradients and a checkerboard, so that an
// upscaler's network runs on edges and flat areas alike.
func checkImage() []byte {
	side := checkSide / 4
	img := image.NewNRGBA(image.Rect(0, 0, side, side))
	for y := range side {
		for x := range side {
			v := uint8(25)
			if (x/4+y/4)%2 == 1 {
				v = 230
			}
			img.SetNRGBA(x, y, color.NRGBA{uint8(255 * x / (side - 1)), uint8(255 * y / (side - 1)), v, 255})
		}
	}
	var b bytes.Buffer
	_ = png.Encode(&b, img) // an in-memory image of a fixed size: cannot fail
	return b.Bytes()
}

// Name returns the configured name.
func (c *Command) Name() string { return c.name }

// Models returns the configured models.
func (c *Command) Models() []string { return slices.Clone(c.models) }

// Args returns the configured command line.
func (c *Command) Args() []string { return slices.Clone(c.argv) }

// Run starts the generator for t, forwards its progress and returns its PNG.
// progress is called from Run's goroutine, in the order the generator wrote
// the lines. t must be a normalised task for one of c's models, without
// input images (those go through Edit).
func (c *Command) Run(ctx context.Context, t protocol.Task, progress Progress) ([]Output, error) {
	return c.run(ctx, t, nil, progress, nil, nil)
}

// RunWithPreviews is Run, and in serve mode also asks the generator for
// previews at the steps in at (the task line's preview_steps) and passes
// on, from Run's goroutine, those it sends that pass the checks of
// docs/kernels.md; any others are dropped. A per-task generator has no
// stream for them (its stdout is the output), so per task this is Run and
// sends none, which the Previewer contract allows.
func (c *Command) RunWithPreviews(ctx context.Context, t protocol.Task, progress Progress, at []int, preview PreviewFunc) ([]Output, error) {
	return c.run(ctx, t, nil, progress, at, preview)
}

// Edit is Run for a task with input images: their bytes join the task's
// JSON object as input_images and mask_image (generatorTask). Each must
// pass DecodeInputConfig first, so a generator never sees a file that is
// not a PNG, JPEG or WebP, or one whose header claims a huge picture. A
// generator that cannot edit answers an error, which is the task's.
// Previews are as for RunWithPreviews: serve mode only.
func (c *Command) Edit(ctx context.Context, t protocol.Task, in Inputs, progress Progress, at []int, preview PreviewFunc) ([]Output, error) {
	return c.run(ctx, t, &in, progress, at, preview)
}

// generatorTask is the JSON object a generator reads: the task's fields,
// then the input images' bytes in base64 (standard alphabet, padded), absent
// for plain generation, and in serve mode the steps to send previews at,
// absent when none are wanted.
type generatorTask struct {
	protocol.Task
	InputImages  [][]byte `json:"input_images,omitempty"`
	MaskImage    []byte   `json:"mask_image,omitempty"`
	PreviewSteps []int    `json:"preview_steps,omitempty"`
}

// run is Run, RunWithPreviews and Edit; inputs is nil but for Edit, and
// preview nil when no previews are wanted.
func (c *Command) run(ctx context.Context, t protocol.Task, inputs *Inputs, progress Progress, at []int, preview PreviewFunc) ([]Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !slices.Contains(c.models, t.Model) {
		return nil, fmt.Errorf("%w: %s serves %s, not %q", protocol.ErrBadTask, c.name, strings.Join(c.models, ", "), t.Model)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	gt := generatorTask{Task: t}
	switch {
	case inputs != nil:
		if err := inputs.Check(t); err != nil {
			return nil, err
		}
		for i, b := range inputs.Images {
			if _, err := decodeInputConfig(b, fmt.Sprintf("input %d", i)); err != nil {
				return nil, err
			}
		}
		if inputs.Mask != nil {
			if _, err := decodeInputConfig(inputs.Mask, "mask"); err != nil {
				return nil, err
			}
		}
		gt.InputImages, gt.MaskImage = inputs.Images, inputs.Mask
	case len(t.Inputs) > 0:
		return nil, fmt.Errorf("%s: %w", c.name, ErrInputsNotGiven)
	}
	if c.pool != nil && preview != nil {
		gt.PreviewSteps = previewSteps(at, int(t.Steps))
	}
	in, err := json.Marshal(gt)
	if err != nil {
		return nil, fmt.Errorf("encoding task: %w", err)
	}
	in = append(in, '\n')
	if c.pool != nil {
		return c.pool.run(ctx, t, in, progress, gt.PreviewSteps, preview)
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if c.cfg.timeout > 0 {
		var stop context.CancelFunc
		runCtx, stop = context.WithTimeoutCause(runCtx, c.cfg.timeout,
			fmt.Errorf("no result after %v", c.cfg.timeout))
		defer stop()
	}

	cmd := exec.CommandContext(runCtx, c.path, c.argv[1:]...)
	cmd.Args[0] = c.argv[0]
	cmd.Dir = c.cfg.dir
	if len(c.cfg.env) > 0 {
		cmd.Env = append(os.Environ(), c.cfg.env...)
	}
	cmd.Stdin = bytes.NewReader(in)
	stdout := &cappedBuffer{max: protocol.MaxBlockBytes, overflow: func() { cancel(errStdoutTooBig) }}
	cmd.Stdout = stdout
	// Progress goes through a channel so that the callback runs on this
	// goroutine (the Kernel contract); a slow callback slows the reading of
	// stderr and, once the pipe is full, the generator.
	steps := make(chan [2]int, 16)
	stderr := &stderrLines{log: c.cfg.log, steps: steps, done: runCtx.Done()}
	cmd.Stderr = stderr
	setProcessGroup(cmd)
	cmd.WaitDelay = commandWaitDelay

	if err := cmd.Start(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if runCtx.Err() != nil {
			err = context.Cause(runCtx)
		}
		return nil, fmt.Errorf("starting %s: %w", c.argv[0], err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var waitErr error
loop:
	for {
		select {
		case s := <-steps:
			if progress != nil {
				progress(s[0], s[1])
			}
		case waitErr = <-waited:
			break loop
		}
	}
	// Wait returned, so the stderr writer is done: what is left in the
	// channel is all there will be.
	for done := false; !done; {
		select {
		case s := <-steps:
			if progress != nil && ctx.Err() == nil {
				progress(s[0], s[1])
			}
		default:
			done = true
		}
	}
	if errors.Is(waitErr, exec.ErrWaitDelay) {
		// The generator exited but something it started kept its
		// output open; end the group rather than leave it running.
		killProcessGroup(cmd)
	}

	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cause := context.Cause(runCtx); cause != nil && runCtx.Err() != nil {
		return nil, fmt.Errorf("generator %s killed: %w%s", c.argv[0], cause, stderr.tailSuffix())
	}
	if waitErr != nil {
		return nil, fmt.Errorf("generator %s failed: %w%s", c.argv[0], waitErr, stderr.tailSuffix())
	}
	data := stdout.buf.Bytes()
	if err := checkPNG(data, int(t.Width), int(t.Height)); err != nil {
		return nil, fmt.Errorf("generator %s: %w%s", c.argv[0], err, stderr.tailSuffix())
	}
	return []Output{{MediaType: "image/png", Data: data}}, nil
}

// checkPNG reports whether data is a PNG of w × h, reading the header only.
func checkPNG(data []byte, w, h int) error {
	if len(data) == 0 {
		return errors.New("wrote nothing to stdout; it must write one PNG")
	}
	if !bytes.HasPrefix(data, pngSignature) {
		return fmt.Errorf("stdout is not a PNG (starts % x); log lines belong on stderr", data[:min(len(data), 8)])
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("stdout is not a valid PNG: %w", err)
	}
	if cfg.Width != w || cfg.Height != h {
		return fmt.Errorf("PNG is %dx%d, the task asked for %dx%d", cfg.Width, cfg.Height, w, h)
	}
	return nil
}

// cappedBuffer keeps what is written up to max bytes; one byte more calls
// overflow once and fails the write, which ends exec's copy of the pipe.
// exec calls Write from one goroutine only.
type cappedBuffer struct {
	buf      bytes.Buffer
	max      int
	overflow func()
	over     bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.over || b.buf.Len()+len(p) > b.max {
		if !b.over {
			b.over = true
			b.overflow()
		}
		return 0, errStdoutTooBig
	}
	return b.buf.Write(p)
}

// stderrLines splits the generator's stderr into lines, each cut at
// CommandMaxStderrLine bytes: progress lines go to steps, others to the
// debug log (at most commandMaxLogged a run), and the last few are kept for
// error messages. exec calls Write from one goroutine; in serve mode the
// task's goroutine reads the tail and starts a new task while the generator
// runs, hence mu. A progress send happens outside mu: it may block until
// the task's goroutine takes it.
type stderrLines struct {
	log   *slog.Logger
	steps chan<- [2]int
	done  <-chan struct{}
	// logOnly treats progress lines as logs (serve mode: progress comes on
	// stdout there).
	logOnly bool

	mu      sync.Mutex
	line    []byte
	cut     bool // the current line passed the cap; drop until newline
	logged  int
	lastK   int
	tail    []string
	tailLen int
}

func (s *stderrLines) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		s.mu.Lock()
		if !s.cut {
			room := CommandMaxStderrLine - len(s.line)
			if len(chunk) > room {
				chunk, s.cut = chunk[:room], true
			}
			s.line = append(s.line, chunk...)
		}
		var step [2]int
		send := false
		if i >= 0 {
			step, send = s.endLineLocked()
		}
		s.mu.Unlock()
		if send {
			select {
			case s.steps <- step:
			case <-s.done:
			}
		}
		if i < 0 {
			break
		}
		p = p[i+1:]
	}
	return n, nil
}

// endLineLocked ends the current line; a progress line is returned to be
// sent.
func (s *stderrLines) endLineLocked() (step [2]int, send bool) {
	line := strings.TrimRight(string(s.line), "\r")
	s.line, s.cut = s.line[:0], false
	if k, total, ok := parseProgress(line); ok && !s.logOnly {
		// Steps never go backwards: a generator that restarts its count
		// (a second pass, a retry) must not make the ETA jump back.
		if k < s.lastK {
			return step, false
		}
		s.lastK = k
		return [2]int{k, total}, true
	}
	if line == "" {
		return step, false
	}
	s.tail = append(s.tail, line)
	s.tailLen += len(line)
	for len(s.tail) > commandTailLines || (len(s.tail) > 1 && s.tailLen > commandTailBytes) {
		s.tailLen -= len(s.tail[0])
		s.tail = s.tail[1:]
	}
	switch {
	case s.logged < commandMaxLogged:
		s.log.Debug("generator", "stderr", line)
	case s.logged == commandMaxLogged:
		s.log.Debug("generator: further stderr lines not logged", "after", commandMaxLogged)
	}
	s.logged++
	return step, false
}

// newTask starts a serve-mode generator's next task: steps count from 0
// again, and the tail and log budget are the new task's.
func (s *stderrLines) newTask() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastK, s.logged, s.tail, s.tailLen = 0, 0, nil, 0
}

// tailSuffix returns "; stderr ends: <last lines>" for an error, or "".
func (s *stderrLines) tailSuffix() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	tail := s.tail
	if len(s.line) > 0 {
		tail = append(slices.Clone(tail), string(s.line))
	}
	if len(tail) == 0 {
		return ""
	}
	return "; stderr ends: " + strings.Join(tail, " | ")
}

// parseProgress parses "progress K N" with 0 <= K <= N, N > 0.
func parseProgress(line string) (k, n int, ok bool) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "progress" {
		return 0, 0, false
	}
	k, err1 := strconv.Atoi(f[1])
	n, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || n <= 0 || k < 0 || k > n {
		return 0, 0, false
	}
	return k, n, true
}
