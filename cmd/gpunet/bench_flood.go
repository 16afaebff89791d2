package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/network"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/spf13/cobra"
)

type floodFlags struct {
	slots, clients, submitters, tasks int
	size                              string
	steps                             uint32
	flood                             swarm.FloodOptions
}

// floodPhase is one burst of honest tasks: result times from submission,
// all submitted at once.
type floodPhase struct {
	Completed int     `json:"completed"`
	Failed    int     `json:"failed"`
	DoneP50Ms float64 `json:"done_p50_ms"`
	DoneP99Ms float64 `json:"done_p99_ms"`
	ElapsedS  float64 `json:"elapsed_s"`
	// CPUSeconds is the whole process's CPU time over the phase (host,
	// clients and, when flooded, the flooder: all in one process), as the
	// Go runtime estimates it.
	CPUSeconds float64 `json:"cpu_s"`
	// Refusals per task: how often an honest client was turned away (a
	// full queue, a reset stream) and tried again.
	Refusals float64 `json:"refusals_per_task"`
	// FirstError is the first failure's message, if any.
	FirstError string `json:"first_error,omitempty"`
}

// floodReport is `gpunet bench flood`'s result: the same burst of honest
// tasks without and then with a flood of the host, in one run.
type floodReport struct {
	Tasks    int        `json:"tasks"`
	Slots    int        `json:"slots"`
	Calm     floodPhase `json:"calm"`
	Flooded  floodPhase `json:"flooded"`
	RatioP50 float64    `json:"ratio_p50"`
	RatioP99 float64    `json:"ratio_p99"`
	// The process's live heap (the host, its clients and the flooder all
	// live in it) after a collection: before the flood, and after it with
	// the flooder closed.
	HeapBeforeMiB float64 `json:"heap_before_mib"`
	HeapAfterMiB  float64 `json:"heap_after_mib"`
	// StreamsRefused are flood streams the host reset or refused;
	// BeaconsRejected are beacons its validator rejected during the flood.
	StreamsRefused  uint64             `json:"streams_refused"`
	BeaconsRejected uint64             `json:"beacons_rejected"`
	Flood           *swarm.FloodReport `json:"flood"`
}

// newFloodCmd is `gpunet bench flood`: a hostile peer floods a loopback
// host with held streams, slow and junk frames, junk, replayed and
// too-frequent beacons and DHT spam, while honest clients submit a burst
// of tasks; the same burst without the flood, earlier in the run, is the
// yardstick.
func newFloodCmd(g *globals) *cobra.Command {
	f := &floodFlags{flood: swarm.DefaultFloodOptions()}
	cmd := &cobra.Command{
		Use:   "flood",
		Short: "Flood a host with hostile streams, frames, beacons and DHT records, and compare honest latency with and without",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := runFlood(cmd.Context(), f)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(r)
			}
			fmt.Printf("flood: %d honest tasks on %d slot(s), without and with a flood of the host\n", r.Tasks, r.Slots)
			for _, p := range []struct {
				name string
				p    floodPhase
			}{{"calm", r.Calm}, {"flooded", r.Flooded}} {
				fmt.Printf("  %-8s completed %3d, failed %d, result p50 %6.0f ms, p99 %6.0f ms, %.2f refusals per task, %.1f CPU-s\n",
					p.name, p.p.Completed, p.p.Failed, p.p.DoneP50Ms, p.p.DoneP99Ms, p.p.Refusals, p.p.CPUSeconds)
			}
			fmt.Printf("  ratio flooded / calm: p50 %.2f, p99 %.2f\n", r.RatioP50, r.RatioP99)
			fl := r.Flood
			fmt.Printf("  streams opened: %d task, %d fetch (held), %d slow, %d junk; refused by the host: %d\n",
				fl.Task.Opened, fl.Fetch.Opened, fl.Slow.Opened, fl.Junk.Opened, r.StreamsRefused)
			fmt.Printf("  most streams the host held at once: %d task, %d fetch\n", fl.PeakTaskStreams, fl.PeakFetchStreams)
			fmt.Printf("  beacons sent: %d junk, %d too frequent, %d verbatim replays; rejected by the host: %d\n",
				fl.JunkBeacons, fl.RateBeacons, fl.Replays, r.BeaconsRejected)
			fmt.Printf("  DHT: %d capacity records put, %d refused; %d provider records sent (%d forged)\n",
				fl.DHTPuts, fl.DHTPutsRejected, fl.DHTProvides, fl.ForgedProvides)
			fmt.Printf("  heap: %.0f MiB before the flood, %.0f MiB after\n", r.HeapBeforeMiB, r.HeapAfterMiB)
			for _, p := range []floodPhase{r.Calm, r.Flooded} {
				if p.FirstError != "" {
					fmt.Printf("  first error: %s\n", p.FirstError)
				}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.slots, "slots", 1, "slots of the one host (a simulated H100)")
	fl.IntVar(&f.clients, "clients", 2, "honest client nodes")
	fl.IntVar(&f.submitters, "submitters", 4, "honest submitters, spread over the clients")
	fl.IntVar(&f.tasks, "tasks", 24, "distinct honest tasks per phase, all submitted at once")
	fl.StringVar(&f.size, "size", "256x256", "image size WxH")
	fl.Uint32Var(&f.steps, "steps", 8, "steps per image")
	fl.DurationVar(&f.flood.Duration, "flood-for", 60*time.Second, "the flood's bound; it stops earlier, when the flooded burst is done")
	fl.IntVar(&f.flood.StreamWorkers, "stream-workers", f.flood.StreamWorkers, "flooder goroutines per protocol opening and holding streams")
	return cmd
}

func runFlood(ctx context.Context, f *floodFlags) (*floodReport, error) {
	if f.slots < 1 || f.clients < 1 || f.clients > 16 || f.tasks < 1 || f.tasks > 10000 || f.submitters < 1 || f.submitters > f.tasks {
		return nil, fmt.Errorf("flood: want slots >= 1, 1-16 clients, 1-10000 tasks and 1 to that many submitters")
	}
	if f.flood.StreamWorkers < 1 || f.flood.StreamWorkers > 4096 {
		return nil, fmt.Errorf("flood: --stream-workers %d: want 1-4096", f.flood.StreamWorkers)
	}
	w, h, err := parseSize(f.size)
	if err != nil {
		return nil, err
	}
	beacons := &swarm.BeaconCounter{}
	sw, err := swarm.StartWithClients(ctx, swarm.Options{Profiles: []string{"h100"}, Slots: f.slots, TimeScale: 40,
		Tune: func(c *node.Config) {
			c.BeaconInterval = 500 * time.Millisecond
			if c.Kernel != nil {
				c.Observers = append(c.Observers, beacons)
			}
		}}, f.clients)
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	host := sw.Hosts[0]
	burst := func(prefix string) (floodPhase, error) {
		cpu0 := cpuSeconds()
		r, err := sw.Surge(ctx, swarm.SurgeOptions{Tasks: f.tasks, Submitters: f.submitters, Width: w, Height: h, Steps: f.steps,
			Timeout: 10 * time.Minute, Prefix: prefix})
		if err != nil {
			return floodPhase{}, err
		}
		return floodPhase{Completed: r.Completed, Failed: r.Failed, DoneP50Ms: r.DoneP50Ms, DoneP99Ms: r.DoneP99Ms,
			ElapsedS: r.ElapsedS, CPUSeconds: round2(cpuSeconds() - cpu0), Refusals: r.Refusals, FirstError: r.FirstError}, nil
	}
	// A few tasks first, so that neither phase pays for the host learning
	// its service time.
	if _, err := sw.Surge(ctx, swarm.SurgeOptions{Tasks: 4, Submitters: 1, Width: w, Height: h, Steps: f.steps, Prefix: "warm-up "}); err != nil {
		return nil, err
	}
	r := &floodReport{Tasks: f.tasks, Slots: f.slots}
	if r.Calm, err = burst("calm "); err != nil {
		return nil, err
	}

	r.HeapBeforeMiB = heapMiB()
	fl, err := swarm.NewFlooder(ctx, host, "")
	if err != nil {
		return nil, err
	}
	defer fl.Close()
	fctx, stopFlood := context.WithCancel(ctx)
	defer stopFlood()
	type result struct {
		r   *swarm.FloodReport
		err error
	}
	done := make(chan result, 1)
	rejected0 := beacons.Rejected.Load()
	go func() {
		fr, err := fl.Run(fctx, f.flood)
		done <- result{fr, err}
	}()
	// The flooded burst starts once the flood holds streams on the host.
	ramp := min(64, (f.flood.StreamWorkers+1)/2)
	for deadline := time.Now().Add(30 * time.Second); inboundTaskStreams(host) < ramp; {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("flood: the flood did not reach the host within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.Flooded, err = burst("flooded ")
	stopFlood()
	res := <-done
	if err != nil {
		return nil, err
	}
	if res.err != nil {
		return nil, res.err
	}
	r.BeaconsRejected = beacons.Rejected.Load() - rejected0
	if err := fl.Close(); err != nil {
		return nil, err
	}
	r.HeapAfterMiB = heapMiB()
	r.Flood = res.r
	r.StreamsRefused = res.r.StreamsRefused()
	if r.Calm.DoneP50Ms > 0 && r.Calm.DoneP99Ms > 0 {
		r.RatioP50 = round2(r.Flooded.DoneP50Ms / r.Calm.DoneP50Ms)
		r.RatioP99 = round2(r.Flooded.DoneP99Ms / r.Calm.DoneP99Ms)
	}
	return r, nil
}

// inboundTaskStreams is how many inbound task streams n's resource
// manager counts now, from every peer.
func inboundTaskStreams(n *node.Node) int {
	var streams int
	_ = n.Host().Network().ResourceManager().ViewProtocol(lp2pproto.ID(protocol.TaskProtocol), func(s network.ProtocolScope) error {
		streams = s.Stat().NumStreamsInbound
		return nil
	})
	return streams
}

// cpuSeconds is the CPU time this process's goroutines and runtime have
// used, as the Go runtime estimates it (all CPU time but idle).
func cpuSeconds() float64 {
	ms := []metrics.Sample{{Name: "/cpu/classes/total:cpu-seconds"}, {Name: "/cpu/classes/idle:cpu-seconds"}}
	metrics.Read(ms)
	if ms[0].Value.Kind() != metrics.KindFloat64 || ms[1].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return ms[0].Value.Float64() - ms[1].Value.Float64()
}

// heapMiB is the live heap after a full collection, in MiB.
func heapMiB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return round2(float64(m.HeapInuse) / (1 << 20))
}
