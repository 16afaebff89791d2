package node_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/network"
)

// BenchmarkTaskRoundTrip is one task with the no-op kernel between two
// loopback nodes, discovery skipped: the task protocol's own cost.
// BenchmarkRawRoundTrip is its baseline. Besides time, both report the
// process's CPU time per operation (cpu-µs/op, user and system, every node
// in the process), which a loaded machine disturbs far less than wall time:
//
//	go test -run '^$' -bench 'RoundTrip$' -benchtime 3000x ./node/
func BenchmarkTaskRoundTrip(b *testing.B) {
	c, host := benchPair(b, nil)
	taskRoundTrips(b, c, host)
}

// BenchmarkTaskRoundTripOnDisk is BenchmarkTaskRoundTrip with a client that
// keeps its store in a data directory (a daemon's, a gateway's), which
// syncs the writes that must be durable:
//
//	go test -run '^$' -bench 'RoundTripOnDisk$' -benchtime 2000x ./node/
func BenchmarkTaskRoundTripOnDisk(b *testing.B) {
	dir := b.TempDir() // removed after the nodes close
	c, host := benchPair(b, func(c *node.Config) { c.DataDir = dir })
	taskRoundTrips(b, c, host)
}

func taskRoundTrips(b *testing.B, c, host *node.Node) {
	ctx := context.Background()
	var seed uint64
	// Warm up: the connection, identify, buffers.
	for range 20 {
		seed++
		t := protocol.Task{Model: kernel.NoopModel, Prompt: "bench", Seed: seed, Width: 64, Height: 64, Steps: 1}
		if _, err := c.SubmitTo(ctx, host.ID(), t, node.SubmitOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	cpu := startCPU(b)
	for i := 0; i < b.N; i++ {
		seed++
		t := protocol.Task{Model: kernel.NoopModel, Prompt: "bench", Seed: seed, Width: 64, Height: 64, Steps: 1}
		if _, err := c.SubmitTo(ctx, host.ID(), t, node.SubmitOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b)
}

// BenchmarkRawRoundTrip is the baseline of BenchmarkTaskRoundTrip, as in
// `gpunet bench`: a 200-byte echo on a fresh libp2p stream between the same
// two nodes, the task protocol's stream discipline.
func BenchmarkRawRoundTrip(b *testing.B) {
	ctx := context.Background()
	c, host := benchPair(b, nil)
	const echo = "/gpunet-bench/echo/1.0.0"
	host.Host().SetStreamHandler(echo, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		body, err := protocol.ReadFrame(bufio.NewReader(s), 1<<20)
		if err != nil {
			s.Reset()
			return
		}
		if err := protocol.WriteFrame(s, body); err != nil {
			s.Reset()
		}
		_, _ = io.Copy(io.Discard, s)
	})
	payload := make([]byte, 200)
	raw := func() error {
		s, err := c.Host().NewStream(ctx, host.ID(), echo)
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
	for range 20 {
		if err := raw(); err != nil {
			b.Fatal(err)
		}
	}
	cpu := startCPU(b)
	for i := 0; i < b.N; i++ {
		if err := raw(); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b)
}

// benchPair starts one no-op host and one client, as `gpunet bench` does.
func benchPair(b *testing.B, tuneClient func(*node.Config)) (client, host *node.Node) {
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
	b.Cleanup(func() { _ = sw.Close() })
	c, err := sw.AddClientTuned(ctx, tuneClient)
	if err != nil {
		b.Fatal(err)
	}
	return c, sw.Hosts[0]
}

// cpuClock measures the process's CPU time (user and system) over a
// benchmark's timed part.
type cpuClock struct{ start time.Duration }

func startCPU(b *testing.B) cpuClock {
	b.ResetTimer()
	return cpuClock{processCPU()}
}

func (c cpuClock) report(b *testing.B) {
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-c.start).Microseconds())/float64(b.N), "cpu-µs/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
func BenchmarkTaskThroughput(b *testing.B) { taskThroughput(b, swarm.NoopOptions(16, 4)) }

// BenchmarkTaskThroughputOnDisk is BenchmarkTaskThroughput with every node
// keeping its store in a data directory, as daemons do.
func BenchmarkTaskThroughputOnDisk(b *testing.B) {
	o := swarm.NoopOptions(16, 4)
	o.Dir = b.TempDir()
	taskThroughput(b, o)
}

func taskThroughput(b *testing.B, o swarm.Options) {
	ctx := context.Background()
	sw, err := swarm.StartWithClients(ctx, o, 1)
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
	cpu := startCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := submit(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	cpu.report(b)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}
