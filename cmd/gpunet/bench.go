package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/network"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/spf13/cobra"
)

// benchEcho is the raw baseline: a length-prefixed echo on a fresh stream
// per request, the same stream discipline as the task protocol.
const benchEcho = lp2pproto.ID("/gpunet-bench/echo/1.0.0")

type benchFlags struct {
	n       int
	payload int
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
}

func newBenchCmd(g *globals) *cobra.Command {
	f := &benchFlags{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure gpunet against raw libp2p on loopback, in one run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			return nil
		},
	}
	cmd.Flags().IntVar(&f.n, "n", 500, "round trips per measurement")
	cmd.Flags().IntVar(&f.payload, "payload", 200, "raw echo payload bytes")
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
	return r, nil
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

func micros(d time.Duration) float64 { return round2(float64(d.Nanoseconds()) / 1000) }
func round2(f float64) float64       { return float64(int64(f*100+0.5)) / 100 }
