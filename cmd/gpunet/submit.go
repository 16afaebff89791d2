package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/protocol"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

type submitFlags struct {
	out       string
	seed      uint64
	steps     uint64 // checked against protocol.MaxSteps when set
	size      string
	model     string
	negative  string
	noCache   bool
	timeout   time.Duration
	p2p       bool
	submitter string
	upscale   bool // then upscale the image ×4 (upscale.go)
}

// submitOutput is what `submit --json` prints.
type submitOutput struct {
	TaskCID   string       `json:"task_cid"`
	ResultCID string       `json:"result_cid"`
	Outputs   []outputFile `json:"outputs"`
	Host      string       `json:"host"`
	Provider  string       `json:"provider"`
	Cache     string       `json:"cache"`
	ElapsedMs float64      `json:"elapsed_ms"`
	Via       string       `json:"via"` // "daemon" or "p2p"
	Seed      uint64       `json:"seed"`
}

type outputFile struct {
	CID       string `json:"cid"`
	Path      string `json:"path"`
	Bytes     int    `json:"bytes"`
	MediaType string `json:"media_type"`
}

func newSubmitCmd(g *globals) *cobra.Command {
	f := &submitFlags{}
	cmd := &cobra.Command{
		Use:   "submit PROMPT",
		Short: "Generate an image on the network (through the local daemon, else as a p2p client)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t := protocol.Task{Prompt: args[0], NegativePrompt: f.negative, Seed: f.seed, Steps: uint32(f.steps)}
			t.Model, t.ModelDigest = protocol.SplitModelRef(f.model)
			// Zero fields are "use the default" to Normalize; a person who
			// typed one meant something else, so an explicit flag is
			// checked here and never silently replaced.
			if cmd.Flags().Changed("size") {
				w, h, err := parseSize(f.size)
				if err != nil {
					return err
				}
				t.Width, t.Height = w, h
			}
			if cmd.Flags().Changed("model") && strings.TrimSpace(f.model) == "" {
				return fmt.Errorf("--model is empty: name a model (default %s), or leave the flag out", protocol.DefaultModel)
			}
			if _, err := t.Normalize(); err != nil {
				return err
			}
			if err := protocol.ValidSubmitter(f.submitter); err != nil {
				return fmt.Errorf("--submitter %q: %w; use at most %d bytes of printable text", f.submitter, err, protocol.MaxSubmitterBytes)
			}
			if f.timeout <= 0 {
				return fmt.Errorf("--timeout %s: want a positive duration such as 10m", f.timeout)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			if f.upscale {
				return submitUpscale(ctx, cmd, g, f, t)
			}
			res, err := submit(ctx, cmd, g, f, t)
			if err != nil {
				return err
			}
			return writeOutputs(g, f, res)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.out, "output", "o", "", "file to write (default: TASKCID.png in the current directory)")
	fl.Var(&rangeFlag{v: &f.seed, min: 1, max: protocol.MaxSeed, zero: "leave --seed out to derive one from the task"},
		"seed", fmt.Sprintf("seed, 1 to %d (default: derived from the task, so the same prompt gives the same image)", uint64(protocol.MaxSeed)))
	fl.Var(&rangeFlag{v: &f.steps, min: protocol.MinSteps, max: protocol.MaxSteps},
		"steps", fmt.Sprintf("sampling steps, %d to %d (default %d)", protocol.MinSteps, protocol.MaxSteps, protocol.DefaultSteps))
	fl.StringVar(&f.size, "size", "", fmt.Sprintf("image size WxH (default %dx%d)", protocol.DefaultWidth, protocol.DefaultHeight))
	fl.StringVar(&f.model, "model", "", "model name, or NAME@sha256:DIGEST to name it by the content of its weights (default "+protocol.DefaultModel+")")
	fl.StringVar(&f.negative, "negative", "", "negative prompt: what the image should not show")
	fl.BoolVar(&f.noCache, "no-cache", false, "compute afresh even if the result is cached")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long; a busy swarm is waited out until then")
	fl.StringVar(&f.submitter, "submitter", defaultSubmitter(), "who submits, for fair sharing between the callers of one daemon (default: your user name)")
	fl.BoolVar(&f.p2p, "p2p", false, "skip the local daemon and submit as a p2p client")
	fl.BoolVar(&f.upscale, "upscale", false, "then upscale the image ×4 with "+upscaleModel+", a second task whose input is the first one's output by CID; writes FILE and FILE-x4.png")
	return cmd
}

// parseSize parses --size WxH and checks each side against the protocol's
// rule, so that 0x0 is an error rather than the default size.
// defaultSubmitter is the user's login name, cut to the protocol's cap: the
// callers of one daemon are shared fairly by it.
func defaultSubmitter() string {
	u, err := user.Current()
	if err != nil || protocol.ValidSubmitter(u.Username) != nil {
		return ""
	}
	return u.Username
}

func parseSize(s string) (uint32, uint32, error) {
	ws, hs, ok := strings.Cut(strings.ToLower(strings.TrimSpace(s)), "x")
	w, err1 := strconv.ParseUint(ws, 10, 32)
	h, err2 := strconv.ParseUint(hs, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("--size %q: want WIDTHxHEIGHT, e.g. %dx%d", s, protocol.DefaultWidth, protocol.DefaultHeight)
	}
	for _, side := range []uint64{w, h} {
		if side < protocol.MinSide || side > protocol.MaxSide || side%protocol.SideMultiple != 0 {
			return 0, 0, fmt.Errorf("--size %s: each side must be %d to %d and a multiple of %d, e.g. %dx%d",
				s, protocol.MinSide, protocol.MaxSide, protocol.SideMultiple, protocol.DefaultWidth, protocol.DefaultHeight)
		}
	}
	return uint32(w), uint32(h), nil
}

// rangeFlag is an unsigned flag with an allowed range. pflag's own uint
// flags answer "-1" with strconv's syntax error and take "0", which
// protocol.Task reads as "use the default"; this one says what is allowed.
type rangeFlag struct {
	v        *uint64
	min, max uint64
	zero     string // what to do instead of 0, when 0 is out of range
}

func (f *rangeFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return strconv.FormatUint(*f.v, 10)
}

func (f *rangeFlag) Type() string { return "uint" }

func (f *rangeFlag) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil || n < f.min || n > f.max {
		msg := fmt.Sprintf("want a whole number from %d to %d", f.min, f.max)
		if n == 0 && err == nil && f.zero != "" {
			msg += " (" + f.zero + ")"
		}
		return errors.New(msg)
	}
	*f.v = n
	return nil
}

// submitted is a finished task, from either path.
type submitted struct {
	tr  *localapi.TaskResult
	via string
}

// submit goes through the local daemon when one answers, else starts an
// ephemeral p2p node. It runs t, then each task that next makes from the
// result before it, through the same daemon or node, which holds that
// result's outputs for a host to fetch by CID; it returns the last result.
func submit(ctx context.Context, cmd *cobra.Command, g *globals, f *submitFlags, t protocol.Task, next ...func(*submitted) (protocol.Task, error)) (*submitted, error) {
	bar := newStageBar(g.json)
	defer bar.finish()
	if !f.p2p {
		c := localapi.NewClient(g.api)
		if err := c.Ping(ctx, 500*time.Millisecond); err == nil {
			return chain(t, next, func(t protocol.Task) (*submitted, error) {
				tr, err := c.Submit(ctx, localapi.SubmitRequest{Task: t, NoCache: f.noCache, Submitter: f.submitter,
					TimeoutMs: uint64(f.timeout.Milliseconds())}, bar.update)
				if err != nil {
					return nil, err
				}
				return &submitted{tr: tr, via: "daemon"}, nil
			})
		} else if !errors.Is(err, localapi.ErrNoDaemon) {
			return nil, err
		}
	}
	log, err := g.logger(slog.LevelWarn)
	if err != nil {
		return nil, err
	}
	cfg := g.nodeConfig(cmd, log)
	cfg.DHTServer = false
	cfg.ListenAddrs = nil // a one-shot client dials out only
	if !cmd.Flags().Changed("data") {
		cfg.DataDir = "" // ephemeral: do not fight a daemon for its store
	}
	if len(cfg.Bootstrap) == 0 && !cfg.MDNS {
		if f.p2p {
			return nil, errors.New("--p2p with --mdns=false has no way to find peers: pass --bootstrap MULTIADDR or enable --mdns")
		}
		return nil, fmt.Errorf("no daemon answers at --api %s and no way to find peers: start `gpunet daemon`, or pass --bootstrap MULTIADDR or enable --mdns", g.api)
	}
	n, err := node.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	if len(cfg.Bootstrap) == 0 {
		waitForPeers(ctx, n, 3*time.Second) // mDNS needs a moment
	}
	return chain(t, next, func(t protocol.Task) (*submitted, error) {
		res, err := n.Submit(ctx, t, node.SubmitOptions{NoCache: f.noCache, Submitter: f.submitter, Progress: bar.update})
		if err != nil {
			return nil, err
		}
		return &submitted{tr: localapi.ToTaskResult(res), via: "p2p"}, nil
	})
}

// chain runs t, then each task that next makes from the result before it,
// and returns the last result.
func chain(t protocol.Task, next []func(*submitted) (protocol.Task, error), run func(protocol.Task) (*submitted, error)) (*submitted, error) {
	s, err := run(t)
	for _, mk := range next {
		if err != nil {
			return nil, err
		}
		if t, err = mk(s); err == nil {
			s, err = run(t)
		}
	}
	return s, err
}

func waitForPeers(ctx context.Context, n *node.Node, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) && len(n.Host().Network().Peers()) == 0 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
}

func writeOutputs(g *globals, f *submitFlags, s *submitted) error {
	out, err := saveOutputs(f.out, s)
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(out)
	}
	printOutput(out)
	return nil
}

// saveOutputs writes s's outputs to file (-o), or to TASKCID.png, and
// describes them.
func saveOutputs(file string, s *submitted) (submitOutput, error) {
	tr := s.tr
	out := submitOutput{TaskCID: tr.TaskCID, ResultCID: tr.ResultCID, Host: tr.Host, Provider: tr.Provider,
		Cache: tr.Cache, ElapsedMs: tr.ElapsedMs, Via: s.via}
	if m, err := protocol.DecodeManifest(tr.Manifest); err == nil {
		out.Seed = m.Task.Seed
	}
	for i, o := range tr.Outputs {
		path := outputPath(file, tr.TaskCID, i, len(tr.Outputs), o.MediaType)
		if err := os.WriteFile(path, o.Data, 0o644); err != nil {
			return out, fmt.Errorf("writing output: %w", err)
		}
		out.Outputs = append(out.Outputs, outputFile{CID: o.CID, Path: path, Bytes: o.Bytes, MediaType: o.MediaType})
	}
	return out, nil
}

func printOutput(out submitOutput) {
	for _, o := range out.Outputs {
		fmt.Printf("%s  %d bytes  %s\n", o.Path, o.Bytes, o.CID)
	}
	fmt.Printf("task %s  host %s  cache %s  %.0f ms\n", out.TaskCID, shortID(out.Host), out.Cache, out.ElapsedMs)
}

// outputPath names output i of n: FILE, or FILE-i.ext for several outputs.
func outputPath(flag, taskCID string, i, n int, mediaType string) string {
	ext := ".png"
	if mediaType != "image/png" {
		ext = ".bin"
	}
	if flag == "" {
		flag = taskCID + ext
	}
	if n == 1 {
		return flag
	}
	base := strings.TrimSuffix(flag, filepath.Ext(flag))
	return fmt.Sprintf("%s-%d%s", base, i+1, filepath.Ext(flag))
}

// stageBar shows a task's progress on stderr when it is a terminal.
type stageBar struct {
	bar   *progressbar.ProgressBar
	quiet bool
}

func newStageBar(quiet bool) *stageBar {
	if fi, err := os.Stderr.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		quiet = true
	}
	return &stageBar{quiet: quiet}
}

func (b *stageBar) update(p node.Progress) {
	if b.quiet {
		return
	}
	if b.bar == nil {
		b.bar = progressbar.NewOptions(100, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetWidth(30),
			progressbar.OptionClearOnFinish(), progressbar.OptionShowElapsedTimeOnFinish())
	}
	desc := p.Stage
	if p.Peer != "" {
		desc += " " + shortID(p.Peer)
	}
	switch {
	case p.Type == protocol.EventProgress && p.Total > 0:
		b.bar.ChangeMax(int(p.Total))
		desc = fmt.Sprintf("step %d/%d on %s, eta %s", p.Step, p.Total, shortID(p.Peer), time.Duration(p.EtaMs)*time.Millisecond)
		_ = b.bar.Set(int(p.Step))
	case p.Type == protocol.EventQueued:
		desc = fmt.Sprintf("queued at %s (position %d)", shortID(p.Peer), p.Position)
		if p.EtaMs > 0 {
			desc += fmt.Sprintf(", eta %s", time.Duration(p.EtaMs)*time.Millisecond)
		}
	case p.Stage == "waiting":
		// Every host is full: the task waits its turn on this node.
		desc = fmt.Sprintf("swarm busy: waiting, position %d", p.Position)
		if p.EtaMs > 0 {
			desc += fmt.Sprintf(", eta %s", (time.Duration(p.EtaMs) * time.Millisecond).Round(100*time.Millisecond))
		}
	}
	b.bar.Describe(desc)
}

func (b *stageBar) finish() {
	if b.bar != nil {
		_ = b.bar.Finish()
	}
}
