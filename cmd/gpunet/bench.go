package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p/core/network"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/spf13/cobra"
)

// benchEcho is the raw baseline: a length-prefixed echo on a fresh stream
// per request, the same stream discipline as the task protocol.
const benchEcho = lp2pproto.ID("/gpunet-bench/echo/1.0.0")

type benchFlags struct {
	n            int
	payload      int
	gossipSizes  []int
	gossipFor    time.Duration
	gossipShards int
	tputHosts    int
	tputConc     []int
	tputFor      time.Duration
	cache        bool
	cpuProfile   string
}

// benchReport is what `bench --json` prints. Every ratio is between figures
// measured in the same run, on the same pair of hosts.
type benchReport struct {
	Iterations   int     `json:"iterations"`
	RawRTTP50us  float64 `json:"raw_rtt_p50_us"`
	RawRTTP99us  float64 `json:"raw_rtt_p99_us"`
	TaskRTTP50us float64 `json:"task_rtt_p50_us"`
	TaskRTTP99us float64 `json:"task_rtt_p99_us"`
	RatioP50     float64 `json:"ratio_p50"`
	RatioP99     float64 `json:"ratio_p99"`

	// Placement: one client's decisions over a 1,000-peer view, and one
	// decision's cost as a fraction of the raw round trip above.
	// Place1000us is one placement over scheduler.BenchView(1000, 1) as
	// a node makes it (scheduler.AppendPlaceTop, the best candidate into a
	// reused buffer, a fresh key each call; issue 14's name); PlacementUs
	// is the same figure under its first name, kept for older readers of
	// the JSON.
	PlacementPerS      float64 `json:"placement_decisions_per_s"`
	Place1000us        float64 `json:"place_1000_us"`
	PlacementUs        float64 `json:"placement_us"`
	PlacementOverRawRT float64 `json:"placement_over_raw_rtt"`

	// Gossip: GossipSub bytes (in+out) per node per second, by swarm size,
	// at the bench's beacon interval; scale by 1/interval for others.
	GossipBeaconIntervalMs int                `json:"gossip_beacon_interval_ms"`
	Gossip                 []gossipBenchPoint `json:"gossip"`
	// GossipShardedRatio is the last point's bytes per node with beacons
	// sharded (--gossip-shards, each node hearing one shard) over the same
	// swarm's unsharded figure, measured in the same run.
	GossipShardedRatio float64 `json:"gossip_sharded_ratio,omitempty"`

	throughputBench
	cacheBench
}

type gossipBenchPoint struct {
	Nodes             int     `json:"nodes"`
	Shards            int     `json:"shards"`      // beacon topics
	ViewShards        int     `json:"view_shards"` // topics each node hears
	BytesPerNodePerS  float64 `json:"bytes_per_node_s"`
	BeaconBytesPerSec float64 `json:"beacon_payload_bytes_per_node_s"`
}

func newBenchCmd(g *globals) *cobra.Command {
	f := &benchFlags{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure gpunet against raw libp2p on loopback, in one run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.cpuProfile != "" {
				stop, err := startCPUProfile(f.cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			r, err := runBench(cmd.Context(), f)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(r)
			}
			fmt.Printf("%-34s %10s %10s\n", "round trip (loopback, µs)", "p50", "p99")
			fmt.Printf("%-34s %10.0f %10.0f\n", "raw libp2p stream (echo)", r.RawRTTP50us, r.RawRTTP99us)
			fmt.Printf("%-34s %10.0f %10.0f\n", "gpunet task (noop kernel)", r.TaskRTTP50us, r.TaskRTTP99us)
			fmt.Printf("%-34s %10.2f %10.2f\n", "ratio task / raw", r.RatioP50, r.RatioP99)
			fmt.Printf("\nplacement over 1,000 peers: %.0f decisions/s (%.1f µs, %.3f of a raw round trip)\n", r.PlacementPerS, r.PlacementUs, r.PlacementOverRawRT)
			for _, c := range f.tputConc {
				k := strconv.Itoa(c)
				if _, ok := r.TasksPerS[k]; ok {
					fmt.Printf("one client, %d no-op hosts, concurrency %2d: %7.0f tasks/s, %7.0f raw requests/s, ratio %.2f\n",
						r.ThroughputHosts, c, r.TasksPerS[k], r.RawRequestsPerS[k], r.ThroughputRatio[k])
				}
			}
			for _, g := range r.Gossip {
				fmt.Printf("gossip, %2d hosts, %d shard(s), hearing %d, beacon every %d ms: %.0f B/s per node (beacon payload %.0f B/s)\n",
					g.Nodes, g.Shards, g.ViewShards, r.GossipBeaconIntervalMs, g.BytesPerNodePerS, g.BeaconBytesPerSec)
			}
			if r.GossipShardedRatio > 0 {
				fmt.Printf("sharded / unsharded gossip bytes per node: %.2f\n", r.GossipShardedRatio)
			}
			if !f.cache {
				return nil
			}
			fmt.Printf("store put (synced) vs (unsynced), 177 KiB, p50: %.0f µs vs %.0f µs, ratio %.2f\n", r.StorePutSyncedP50us, r.StorePutUnsyncedP50us, r.StorePutSyncRatio)
			fmt.Printf("submit to placement at concurrency %d, p50/p99: miss %.0f/%.0f µs, no-cache %.0f/%.0f µs (%d lookups cut)\n",
				r.MissConcurrency, r.MissOverheadP50us, r.MissOverheadP99us, r.MissOverheadNoCacheP50us, r.MissOverheadNoCacheP99us, r.LookupsCut)
			fmt.Printf("DHT bytes sent per result: %.0f (host provides) vs %.0f (host and client, before), ratio %.2f\n",
				r.ProvideBytesPerResult, r.ProvideBytesPerResultBoth, r.ProvideBytesRatio)
			return nil
		},
	}
	cmd.AddCommand(newSurgeCmd(g))
	cmd.AddCommand(newFloodCmd(g))
	cmd.AddCommand(newScaleCmd(g))
	cmd.Flags().IntVar(&f.n, "n", 500, "round trips per measurement")
	cmd.Flags().IntSliceVar(&f.gossipSizes, "gossip-sizes", []int{4, 12}, "swarm sizes for the gossip measurement (empty: skip)")
	cmd.Flags().DurationVar(&f.gossipFor, "gossip-for", 3*time.Second, "how long to measure gossip at each size")
	cmd.Flags().IntVar(&f.gossipShards, "gossip-shards", 4, "also measure the largest size with beacons over this many shards, each node hearing one (≤ 1: skip)")
	cmd.Flags().IntVar(&f.payload, "payload", 200, "raw echo payload bytes")
	cmd.Flags().IntVar(&f.tputHosts, "throughput-hosts", 16, "no-op hosts for the throughput measurement")
	cmd.Flags().IntSliceVar(&f.tputConc, "throughput-concurrency", []int{1, 16, 64}, "concurrencies for the throughput measurement")
	cmd.Flags().DurationVar(&f.tputFor, "throughput-for", time.Second, "length of each throughput phase (raw, tasks, raw, tasks per concurrency; 0: skip)")
	cmd.Flags().BoolVar(&f.cache, "cache", true, "measure the cache (hits, misses, provides, store writes); --cache=false skips it")
	cmd.Flags().StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole bench (every node runs in this process) to this file, for go tool pprof")
	return cmd
}

func runBench(ctx context.Context, f *benchFlags) (*benchReport, error) {
	if f.n < 10 || f.n > 100000 {
		return nil, fmt.Errorf("--n %d: want 10..100000", f.n)
	}
	sw, err := swarm.Start(ctx, swarm.Options{
		Profiles: []string{"h100"},
		Kernel:   func(int) kernel.Kernel { return kernel.Noop{} },
		Slots:    4,
		Tune: func(c *node.Config) {
			c.RateLimit = 0            // the bench is one submitter on purpose
			c.SimulateGPUSpeed = false // measure the protocol, not a simulated GPU
		},
	})
	if err != nil {
		return nil, err
	}
	defer sw.Close()
	host := sw.Hosts[0]
	client, err := sw.AddClient(ctx)
	if err != nil {
		return nil, err
	}
	host.Host().SetStreamHandler(benchEcho, echoHandler)
	defer host.Host().RemoveStreamHandler(benchEcho)

	payload := make([]byte, f.payload)
	raw := func(ctx context.Context) error {
		s, err := client.Host().NewStream(ctx, host.ID(), benchEcho)
		if err != nil {
			return err
		}
		defer s.Close()
		if err := protocol.WriteFrame(s, payload); err != nil {
			return err
		}
		_, err = protocol.ReadFrame(bufio.NewReader(s), 1<<20)
		return err
	}
	seed := uint64(1)
	task := func(ctx context.Context) error {
		seed++ // a new task each time: no cache, the kernel runs
		_, err := client.SubmitTo(ctx, host.ID(), protocol.Task{Model: "gpunet/noop", Prompt: "bench", Seed: seed, Width: 64, Height: 64, Steps: 1}, node.SubmitOptions{})
		return err
	}
	// Warm both paths (connection, identify, buffers) before timing.
	for i := 0; i < 20; i++ {
		if err := raw(ctx); err != nil {
			return nil, fmt.Errorf("raw echo: %w", err)
		}
		if err := task(ctx); err != nil {
			return nil, fmt.Errorf("task: %w", err)
		}
	}
	// Interleave the two so that noise on this machine hits both alike.
	var rawT, taskT []time.Duration
	for i := 0; i < f.n; i++ {
		t0 := time.Now()
		if err := raw(ctx); err != nil {
			return nil, err
		}
		t1 := time.Now()
		if err := task(ctx); err != nil {
			return nil, err
		}
		rawT = append(rawT, t1.Sub(t0))
		taskT = append(taskT, time.Since(t1))
	}
	r := &benchReport{Iterations: f.n}
	r.RawRTTP50us, r.RawRTTP99us = micros(pct(rawT, 50)), micros(pct(rawT, 99))
	r.TaskRTTP50us, r.TaskRTTP99us = micros(pct(taskT, 50)), micros(pct(taskT, 99))
	r.RatioP50 = round2(r.TaskRTTP50us / r.RawRTTP50us)
	r.RatioP99 = round2(r.TaskRTTP99us / r.RawRTTP99us)

	benchPlacement(r)
	if f.tputFor > 0 && f.tputHosts > 0 {
		if r.throughputBench, err = runThroughputBench(ctx, f.tputHosts, f.tputConc, f.tputFor); err != nil {
			return nil, fmt.Errorf("throughput bench: %w", err)
		}
	}
	r.GossipBeaconIntervalMs = int(gossipBenchInterval / time.Millisecond)
	for _, size := range f.gossipSizes {
		pt, err := benchGossip(ctx, size, 1, f.gossipFor)
		if err != nil {
			return nil, fmt.Errorf("gossip bench with %d nodes: %w", size, err)
		}
		r.Gossip = append(r.Gossip, pt)
	}
	if n := len(r.Gossip); n > 0 && f.gossipShards > 1 {
		base := r.Gossip[n-1]
		pt, err := benchGossip(ctx, base.Nodes, f.gossipShards, f.gossipFor)
		if err != nil {
			return nil, fmt.Errorf("sharded gossip bench: %w", err)
		}
		r.Gossip = append(r.Gossip, pt)
		r.GossipShardedRatio = round2(pt.BytesPerNodePerS / base.BytesPerNodePerS)
	}
	if f.cache {
		if r.cacheBench, err = runCacheBench(ctx, f.n); err != nil {
			return nil, fmt.Errorf("cache bench: %w", err)
		}
	}
	return r, nil
}

// benchPlacement times scheduler.Place over a 1,000-peer view, the work a
// client does per task.
func benchPlacement(r *benchReport) {
	view := scheduler.BenchView(1000, 1)
	cfg := scheduler.DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 2))
	now := scheduler.BenchNow()
	const n = 2000
	// The best candidate into one buffer, as a node places (dispatch.go).
	var buf []scheduler.Candidate
	start := time.Now()
	for i := 0; i < n; i++ {
		if buf = scheduler.AppendPlaceTop(buf[:0], view, scheduler.BenchRequest(uint64(i)), now, rng, cfg, 1); len(buf) == 0 {
			panic("bench view has no feasible peer")
		}
	}
	per := time.Since(start) / n
	r.PlacementUs = micros(per)
	r.Place1000us = r.PlacementUs
	r.PlacementPerS = round2(float64(time.Second) / float64(per))
	r.PlacementOverRawRT = round2(r.PlacementUs / r.RawRTTP50us)
}

// gossipBenchInterval is short so that a few seconds hold many beacons.
const gossipBenchInterval = 250 * time.Millisecond

// benchGossip runs a swarm of size hosts, with beacons over shards topics
// and each node hearing one of them, and measures GossipSub traffic per
// node over d, after a warm-up for the meshes to form.
func benchGossip(ctx context.Context, size, shards int, d time.Duration) (gossipBenchPoint, error) {
	profiles := make([]string, size)
	for i := range profiles {
		profiles[i] = "rtx4090"
	}
	view, heard := 0, shards // 0: every shard
	if shards > 1 {
		view, heard = 1, 1
	}
	sw, err := swarm.Start(ctx, swarm.Options{Profiles: profiles, Tune: func(c *node.Config) {
		c.BeaconInterval = gossipBenchInterval
		c.BeaconShards, c.ViewShards = shards, view
	}})
	if err != nil {
		return gossipBenchPoint{}, err
	}
	defer sw.Close()
	time.Sleep(2 * time.Second) // mesh formation and first heartbeats
	total := func() (bytes, beacons uint64) {
		for _, h := range sw.Hosts {
			bytes += h.GossipBytes()
			beacons += h.Status(ctx).BeaconBytes
		}
		return
	}
	b0, p0 := total()
	start := time.Now()
	select {
	case <-ctx.Done():
		return gossipBenchPoint{}, ctx.Err()
	case <-time.After(d):
	}
	b1, p1 := total()
	secs := time.Since(start).Seconds()
	// Every byte is counted twice, by its sender and its receiver.
	return gossipBenchPoint{
		Nodes:             size,
		Shards:            shards,
		ViewShards:        heard,
		BytesPerNodePerS:  round2(float64(b1-b0) / 2 / secs / float64(size)),
		BeaconBytesPerSec: round2(float64(p1-p0) / secs / float64(size)),
	}, nil
}

func echoHandler(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := protocol.ReadFrame(bufio.NewReader(s), 1<<20)
	if err != nil {
		s.Reset()
		return
	}
	if err := protocol.WriteFrame(s, b); err != nil {
		s.Reset()
	}
	_, _ = io.Copy(io.Discard, s)
}

// pct returns the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// startCPUProfile starts a CPU profile into path; stop ends it.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("creating the CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting the CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

func micros(d time.Duration) float64 { return round2(float64(d.Nanoseconds()) / 1000) }
func round2(f float64) float64       { return float64(int64(f*100+0.5)) / 100 }
