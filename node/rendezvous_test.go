package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestDuplicateAskedOfItsRendezvousHost: a client missing a task in its
// own store asks the host rendezvous hashing on the TaskCID names (the
// likeliest holder of a duplicate) as its DHT lookup starts, and gets the
// result from it in one round trip.
func TestDuplicateAskedOfItsRendezvousHost(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"a100", "a100", "a100"}, Tune: fastBeacons})
	a, b := addClient(t, sw), addClient(t, sw)
	waitForView(t, b, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	task := protocol.Task{Prompt: "a ferry at dawn", Width: 64, Height: 64, Steps: 2}
	_, tc, err := task.NormalizeCID()
	if err != nil {
		t.Fatal(err)
	}
	key := scheduler.KeyHash(tc.Bytes())
	var holder peer.ID
	for _, h := range sw.Hosts {
		if holder == "" || scheduler.RendezvousWeight(key, h.ID().String()) > scheduler.RendezvousWeight(key, holder.String()) {
			holder = h.ID()
		}
	}
	if _, err := a.SubmitTo(ctx, holder, task, node.SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := b.Submit(ctx, task, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Cache != node.CacheNetwork || res.Provider != holder {
		t.Fatalf("cache %s from %s, want a network hit from the rendezvous host %s", res.Cache, res.Provider, holder)
	}
	if got := b.FetchStats().RendezvousHits; got != 1 {
		t.Errorf("rendezvous hits %d, want 1", got)
	}
}
