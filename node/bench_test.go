package node_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
)

// BenchmarkTaskRoundTrip is one task with the no-op kernel between two
// loopback nodes, discovery skipped: the task protocol's own cost.
func BenchmarkTaskRoundTrip(b *testing.B) {
	ctx := context.Background()
	sw, err := swarm.Start(ctx, swarm.Options{
		Profiles: []string{"h100"},
		Kernel:   func(int) kernel.Kernel { return kernel.Noop{} },
		Tune: func(c *node.Config) {
			c.RateLimit = 0
			c.SimulateGPUSpeed = false
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sw.Close()
	c, err := sw.AddClient(ctx)
	if err != nil {
		b.Fatal(err)
	}
	host := sw.Hosts[0].ID()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t := protocol.Task{Model: kernel.NoopModel, Prompt: "bench", Seed: uint64(i + 1), Width: 64, Height: 64, Steps: 1}
		if _, err := c.SubmitTo(ctx, host, t, node.SubmitOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNetworkCacheMiss is the cache lookup a Submit makes before it
// places a task nobody holds (FetchFromNetwork on a fresh TaskCID) on a
// swarm of a bootstrap daemon and three hosts, one at a time and 16 at once
// from one client (issue 14's load). b.N counts lookups.
//
//	go test -run '^$' -bench NetworkCacheMiss ./node/
func BenchmarkNetworkCacheMiss(b *testing.B) {
	ctx := context.Background()
	sw, err := swarm.Start(ctx, swarm.Options{Profiles: []string{"h100", "h100", "h100"}, BootstrapDaemon: true})
	if err != nil {
		b.Fatal(err)
	}
	defer sw.Close()
	c, err := sw.AddClient(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var seed atomic.Uint64
	miss := func() error {
		_, tc, err := protocol.Task{Prompt: "nobody asked for this", Seed: seed.Add(1)}.NormalizeCID()
		if err != nil {
			return err
		}
		if _, err := c.FetchFromNetwork(ctx, tc, 0); !errors.Is(err, node.ErrNoProvider) {
			return fmt.Errorf("a task nobody holds: %v, want a miss", err)
		}
		return nil
	}
	b.Run("serial", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := miss(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("concurrent16", func(b *testing.B) {
		// RunParallel starts parallelism × GOMAXPROCS goroutines.
		b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
		cut0 := c.FetchStats().LookupsCut
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := miss(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(c.FetchStats().LookupsCut-cut0)/float64(b.N), "cut/op")
	})
}

// BenchmarkTaskThroughput is one client pushing no-op tasks (a full Submit,
// NoCache) through 16 no-op hosts, 64 at once: the fast client path of
// issue 14. b.N counts tasks; tasks/s is reported. `gpunet bench` measures
// the same next to raw libp2p requests.
//
//	go test -run '^$' -bench TaskThroughput ./node/
func BenchmarkTaskThroughput(b *testing.B) {
	ctx := context.Background()
	sw, err := swarm.StartWithClients(ctx, swarm.NoopOptions(16, 4), 1)
	if err != nil {
		b.Fatal(err)
	}
	defer sw.Close()
	c := sw.Clients[0]
	var seed atomic.Uint64
	submit := func() error {
		t := protocol.Task{Model: kernel.NoopModel, Prompt: "bench", Seed: seed.Add(1), Width: 64, Height: 64, Steps: 1}
		_, err := c.Submit(ctx, t, node.SubmitOptions{NoCache: true})
		return err
	}
	for range 64 { // connections to every host
		if err := submit(); err != nil {
			b.Fatal(err)
		}
	}
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := submit(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}
