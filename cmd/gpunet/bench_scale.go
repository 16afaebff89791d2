package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/scale"
	"github.com/spf13/cobra"
)

type scaleFlags struct {
	sizes        []int
	tasks        int
	clients      int
	latency      time.Duration
	settle       time.Duration
	window       time.Duration
	realTime     bool
	beaconShards int
	viewShards   int
	loadInfo     string
}

// scaleBenchReport is `gpunet bench scale --json`: one scale.Report per
// swarm size, each from a fresh swarm.
type scaleBenchReport struct {
	// Clock is "virtual" (each swarm in a testing/synctest bubble: its
	// figures are the protocol's, whatever the machine) or "real".
	Clock     string          `json:"clock"`
	LatencyMs float64         `json:"link_latency_ms"` // one way
	Sizes     []*scale.Report `json:"sizes"`
}

// newScaleCmd is `gpunet bench scale`: swarms of real nodes (DHT, beacon
// gossip, dispatch, the task service) on a simulated network in this
// process, one per size, and what a node costs in each.
func newScaleCmd(g *globals) *cobra.Command {
	f := &scaleFlags{}
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "Run swarms of real nodes on a simulated network, in virtual time, and report latency, bytes/s and memory per node by swarm size",
		Long: `Runs, for each --nodes size, a swarm of real gpunet nodes (a bootstrap daemon,
no-op hosts and a client) on go-libp2p's simulated QUIC network (simnet), with
every link --latency one way, inside a testing/synctest bubble: the clock moves
only when every goroutine waits, so the latencies and bytes per second are the
protocol's, not this machine's. The run itself is CPU-bound: a few seconds at
30 nodes, minutes at 300 (docs/bench.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := runScale(cmd.Context(), f)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(r)
			}
			fmt.Printf("scale: real nodes on simnet, %s clock, links %.0f ms one way\n", r.Clock, r.LatencyMs)
			fmt.Printf("%6s %6s %9s %9s %9s %12s %12s %12s %12s %10s %8s %8s %7s\n",
				"nodes", "tasks", "p50 ms", "p99 ms", "place p50", "idle B/s", "gossip B/s", "probe B/s", "task B/s", "heap/node", "gor/node", "conns", "wall s")
			for _, s := range r.Sizes {
				fmt.Printf("%6d %6d %9.1f %9.1f %9.1f %12.0f %12.0f %12.0f %12.0f %9.1fM %8.0f %8.1f %7.1f\n",
					s.Nodes, s.Completed, s.LatencyP50ms, s.LatencyP99ms, s.PlaceP50ms, s.IdleBytesPerNodeS, gossipBytes(s), s.ProbeBytesPerNodeS, s.TaskBytesPerNodeS,
					s.HeapBytesPerNode/(1<<20), s.GoroutinesPerNode, s.ConnsPerNode, s.WallS)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntSliceVar(&f.sizes, "nodes", []int{3, 30, 100}, "swarm sizes, each a fresh swarm (every node counts: bootstrap, hosts, client)")
	fl.IntVar(&f.tasks, "tasks", 20, "tasks per size, each a fresh computation, submitted one at a time per client, then as many again with NoCache")
	fl.IntVar(&f.clients, "clients", 1, "client nodes submitting the tasks")
	fl.DurationVar(&f.latency, "latency", 10*time.Millisecond, "one-way latency of every link")
	fl.DurationVar(&f.settle, "settle", 5*time.Second, "time the swarm runs, once every client hears every host, before measuring")
	fl.DurationVar(&f.window, "window", 10*time.Second, "how long idle traffic is measured")
	fl.BoolVar(&f.realTime, "real-time", false, "run on the real clock instead of a synctest bubble: figures then include this machine's CPU")
	fl.IntVar(&f.beaconShards, "beacon-shards", 1, "GossipSub topics the beacons are split over (node.Config.BeaconShards)")
	fl.IntVar(&f.viewShards, "view-shards", 0, "shards each node hears (0: all)")
	fl.StringVar(&f.loadInfo, "load-info", node.LoadGossip, "how nodes learn the hosts' load: gossip (every beacon) or probe (peer sampling, probes, idle notices)")
	return cmd
}

// gossipBytes is a report's GossipSub bytes per node per second, every
// version of the protocol together.
func gossipBytes(r *scale.Report) float64 {
	var b float64
	for p, v := range r.IdleBytesByProtocol {
		if strings.HasPrefix(p, "/meshsub/") {
			b += v
		}
	}
	return b
}

func runScale(ctx context.Context, f *scaleFlags) (*scaleBenchReport, error) {
	if len(f.sizes) == 0 || slices.Min(f.sizes) < 3 || slices.Max(f.sizes) > 5000 {
		return nil, errors.New("scale: --nodes wants sizes from 3 to 5000")
	}
	out := &scaleBenchReport{Clock: "virtual", LatencyMs: float64(f.latency) / float64(time.Millisecond)}
	if f.realTime {
		out.Clock = "real"
	}
	scale.PrepareProcess()
	for _, n := range f.sizes {
		o := scale.DefaultOptions(n)
		o.Tasks, o.Clients, o.Latency, o.Settle, o.Window = f.tasks, f.clients, f.latency, f.settle, f.window
		o.LoadInfo = f.loadInfo
		if f.beaconShards > 1 {
			o.Tune = func(c *node.Config) { c.BeaconShards, c.ViewShards = f.beaconShards, f.viewShards }
		}
		start := time.Now()
		var r *scale.Report
		run := func(ctx context.Context) (err error) {
			// Generous: the bound is on the swarm's clock, virtual or not.
			ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
			defer cancel()
			r, err = scale.Run(ctx, o)
			return err
		}
		var err error
		if f.realTime {
			err = run(ctx)
		} else {
			// The bubble cannot watch ctx (a goroutine blocked on a
			// channel from outside would stop its clock), so Ctrl-C or
			// SIGTERM ends the process from here.
			stop := context.AfterFunc(ctx, func() {
				fmt.Fprintln(os.Stderr, "gpunet: bench scale interrupted")
				os.Exit(exitInterrupt)
			})
			err = inBubble(fmt.Sprintf("scale-%d", n), run)
			stop()
		}
		if err != nil {
			return nil, fmt.Errorf("scale: %d nodes: %w", n, err)
		}
		r.WallS = time.Since(start).Seconds()
		out.Sizes = append(out.Sizes, r)
	}
	return out, nil
}

// inBubble runs f in a testing/synctest bubble, from a command rather
// than a test.
//
// synctest lends its bubble only to a *testing.T, and package testing
// makes one only inside a testing.M. So f runs as the single test of an
// M built with testing.MainStart, the entry point that go test's
// generated main calls, with bubbleDeps standing in for go test's own
// (unexported) hooks: none of them is used here. MainStart is outside the
// Go 1 compatibility promise: if a Go release changes its hooks, this
// stops compiling, loudly, and `gpunet bench scale --real-time` still
// runs the same swarm on the real clock.
//
// f's context is not the command's: a bubble may not wait on a channel
// made outside it. The test's output (a failure's log) goes to stderr, so
// that --json's stdout stays JSON.
func inBubble(name string, f func(context.Context) error) error {
	var err error
	m := testing.MainStart(bubbleDeps{}, []testing.InternalTest{{Name: name, F: func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) { err = f(context.Background()) })
	}}}, nil, nil, nil)
	if !flag.Parsed() {
		// M.Run parses os.Args otherwise: the command's, not its own.
		if perr := flag.CommandLine.Parse(nil); perr != nil {
			return perr
		}
	}
	stdout := os.Stdout
	os.Stdout = os.Stderr
	code := m.Run()
	os.Stdout = stdout
	if err == nil && code != 0 {
		err = fmt.Errorf("the bubble failed (exit code %d): see stderr", code)
	}
	return err
}

// corpusEntry is package testing's fuzzing corpus entry, by its
// definition there (a type alias of this struct), for bubbleDeps'
// method set.
type corpusEntry = struct {
	Parent     string
	Path       string
	Data       []byte
	Values     []any
	Generation int
	IsSeed     bool
}

// bubbleDeps is what testing.MainStart asks of go test: only MatchString
// does anything; profiles, coverage and fuzzing are refused or ignored.
type bubbleDeps struct{}

var errNoTestDeps = errors.New("not available in gpunet bench")

func (bubbleDeps) ImportPath() string { return "gpunet/bench" }
func (bubbleDeps) ModulePath() string { return "" }
func (bubbleDeps) MatchString(pat, str string) (bool, error) {
	return regexp.MatchString(pat, str)
}
func (bubbleDeps) SetPanicOnExit0(bool)                        {}
func (bubbleDeps) StartCPUProfile(io.Writer) error             { return errNoTestDeps }
func (bubbleDeps) StopCPUProfile()                             {}
func (bubbleDeps) StartTestLog(io.Writer)                      {}
func (bubbleDeps) StopTestLog() error                          { return nil }
func (bubbleDeps) WriteProfileTo(string, io.Writer, int) error { return errNoTestDeps }
func (bubbleDeps) CoordinateFuzzing(time.Duration, int64, time.Duration, int64, int, []corpusEntry, []reflect.Type, string, string) error {
	return errNoTestDeps
}
func (bubbleDeps) RunFuzzWorker(func(corpusEntry) error) error { return errNoTestDeps }
func (bubbleDeps) ReadCorpus(string, []reflect.Type) ([]corpusEntry, error) {
	return nil, errNoTestDeps
}
func (bubbleDeps) CheckCorpus([]any, []reflect.Type) error { return nil }
func (bubbleDeps) ResetCoverage()                          {}
func (bubbleDeps) SnapshotCoverage()                       {}
func (bubbleDeps) InitRuntimeCoverage() (string, func(string, string) (string, error), func() float64) {
	return "", nil, nil
}
