package main

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
)

// throughputBench is the fast client path's part of `bench --json` (issue
// 14): how many no-op tasks one client pushes through a swarm of no-op
// hosts per second, next to how many raw libp2p requests (a fresh stream
// each, the task protocol's discipline) the same client gets from the same
// hosts, at each concurrency, interleaved in one run. Maps are keyed by
// the concurrency.
type throughputBench struct {
	ThroughputHosts int `json:"throughput_hosts"`
	// ThroughputPhaseMs is how long each phase ran; every concurrency ran
	// raw, tasks, raw, tasks, and the rates are over both phases of a kind.
	ThroughputPhaseMs int                `json:"throughput_phase_ms"`
	TasksPerS         map[string]float64 `json:"throughput_tasks_per_s"`
	RawRequestsPerS   map[string]float64 `json:"raw_requests_per_s"`
	// ThroughputRatio is tasks/s over raw requests/s at each concurrency.
	ThroughputRatio map[string]float64 `json:"throughput_ratio"`
}

// runThroughputBench starts hosts no-op hosts and one client, waits until
// the client's view holds them all, and measures both rates at each
// concurrency. A task is a full Submit with NoCache (placement over the
// view, the task protocol, verification, the store), each with a new seed
// so that the host computes it.
func runThroughputBench(ctx context.Context, hosts int, concs []int, phase time.Duration) (throughputBench, error) {
	tb := throughputBench{ThroughputHosts: hosts, ThroughputPhaseMs: int(phase / time.Millisecond),
		TasksPerS: map[string]float64{}, RawRequestsPerS: map[string]float64{}, ThroughputRatio: map[string]float64{}}
	// Enough room that 64 tasks in flight over 16 hosts wait in queues,
	// not in the client's waiting room.
	sw, err := swarm.StartWithClients(ctx, swarm.NoopOptions(hosts, 4), 1)
	if err != nil {
		return tb, err
	}
	defer sw.Close()
	client := sw.Clients[0]
	ids := make([]peer.ID, len(sw.Hosts))
	for i, h := range sw.Hosts {
		ids[i] = h.ID()
		h.Host().SetStreamHandler(benchEcho, echoHandler)
	}
	payload := make([]byte, 200)
	raw := func(ctx context.Context, i uint64) error {
		s, err := client.Host().NewStream(ctx, ids[i%uint64(len(ids))], benchEcho)
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
	var seed atomic.Uint64
	seed.Store(1 << 40) // apart from the other measurements' seeds
	task := func(ctx context.Context, _ uint64) error {
		t := protocol.Task{Model: kernel.NoopModel, Prompt: "throughput", Seed: seed.Add(1), Width: 64, Height: 64, Steps: 1}
		_, err := client.Submit(ctx, t, node.SubmitOptions{NoCache: true})
		return err
	}
	// Warm up: a connection to every host, and both paths' buffers.
	for i := range 4 * len(ids) {
		if err := raw(ctx, uint64(i)); err != nil {
			return tb, fmt.Errorf("raw request: %w", err)
		}
		if err := task(ctx, 0); err != nil {
			return tb, fmt.Errorf("task: %w", err)
		}
	}
	for _, c := range concs {
		var rawN, taskN int
		var rawD, taskD time.Duration
		for range 2 {
			n, d, err := rate(ctx, c, phase, raw)
			if err != nil {
				return tb, fmt.Errorf("raw requests at concurrency %d: %w", c, err)
			}
			rawN, rawD = rawN+n, rawD+d
			if n, d, err = rate(ctx, c, phase, task); err != nil {
				return tb, fmt.Errorf("tasks at concurrency %d: %w", c, err)
			}
			taskN, taskD = taskN+n, taskD+d
		}
		k := strconv.Itoa(c)
		tb.RawRequestsPerS[k] = round2(float64(rawN) / rawD.Seconds())
		tb.TasksPerS[k] = round2(float64(taskN) / taskD.Seconds())
		tb.ThroughputRatio[k] = round2(tb.TasksPerS[k] / tb.RawRequestsPerS[k])
	}
	return tb, nil
}

// rate runs op from c goroutines for about d and returns how many calls
// completed and how long it took until the last of them returned.
func rate(ctx context.Context, c int, d time.Duration, op func(context.Context, uint64) error) (int, time.Duration, error) {
	var (
		wg    sync.WaitGroup
		done  atomic.Int64
		next  atomic.Uint64
		first error
		once  sync.Once
	)
	start := time.Now()
	stop := start.Add(d)
	for range c {
		wg.Go(func() {
			for time.Now().Before(stop) {
				octx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := op(octx, next.Add(1))
				cancel()
				if err != nil {
					once.Do(func() { first = err })
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	return int(done.Load()), time.Since(start), first
}
