package node_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
)

// switchingKernel is the sketch kernel under whatever model names the test
// sets: a host whose owner changed what it serves.
type switchingKernel struct {
	kernel.Sketch
	models atomic.Pointer[[]string]
}

func (k *switchingKernel) Models() []string { return *k.models.Load() }

// TestFindHostsSkipsStaleProviders: a host that stopped serving a model
// still has provider records for it on the DHT, but its signed capacity
// record no longer lists it, so FindHosts leaves it out.
func TestFindHostsSkipsStaleProviders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switching := &switchingKernel{}
	switching.models.Store(&[]string{protocol.DefaultModel})
	sw := startSwarmWith(t, swarm.Options{
		Profiles: []string{"rtx3060", "rtx3060"},
		Kernel: func(i int) kernel.Kernel {
			if i == 1 {
				return switching
			}
			return kernel.Sketch{}
		},
		Tune: func(c *node.Config) { c.AdvertiseInterval = 200 * time.Millisecond },
	})
	c := addClient(t, sw)
	kept, moved := sw.Hosts[0].ID(), sw.Hosts[1].ID()
	ids := func(model string) []string {
		hosts, _ := c.FindHosts(ctx, model, 20)
		var out []string
		for _, h := range hosts {
			out = append(out, h.ID.String())
		}
		return out
	}
	if got := ids(protocol.DefaultModel); !slices.Contains(got, moved.String()) {
		t.Fatalf("before the switch FindHosts found %v, want %s among them", got, moved)
	}
	const other = "gpunet/other-v1"
	switching.models.Store(&[]string{other})
	// Once the host re-advertised, the new model finds it...
	for !slices.Contains(ids(other), moved.String()) {
		if ctx.Err() != nil {
			t.Fatalf("the switched host never became findable for %s", other)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// ...and the old one, whose provider records outlive the switch, does not.
	hosts, err := c.FindHosts(ctx, protocol.DefaultModel, 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 1 || hosts[0].ID != kept || hosts[0].Capacity == nil || !hosts[0].Capacity.Serves(protocol.DefaultModel) {
		var got []string
		for _, h := range hosts {
			got = append(got, h.ID.String())
		}
		t.Errorf("FindHosts(%s) after the switch: %v, want only %s with its capacity record", protocol.DefaultModel, got, kept)
	}
}
