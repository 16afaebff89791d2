package node_test

import (
	"context"
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
