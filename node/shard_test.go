package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestShardedBeacons: with beacons split over three topics and every node
// hearing one, a host's view holds the hosts of its own shard, beacon after
// beacon, and no other; a client that hears one shard still gets tasks done
// through the DHT.
func TestShardedBeacons(t *testing.T) {
	const k = 3
	sw := startSwarmWith(t, swarm.Options{
		Profiles: []string{"rtx3060", "rtx3060", "rtx3060", "rtx3060", "rtx3060", "rtx3060"},
		Tune: func(c *node.Config) {
			fastBeacons(c)
			c.BeaconShards, c.ViewShards = k, 1
		},
	})
	byShard := map[int][]*node.Node{}
	for _, h := range sw.Hosts {
		s := protocol.BeaconShard(h.ID().String(), k)
		byShard[s] = append(byShard[s], h)
	}
	// Six hosts in three shards: one shard holds at least two.
	var watcher *node.Node
	mates := map[string]bool{}
	for _, hs := range byShard {
		if len(hs) >= 2 {
			watcher = hs[0]
			for _, m := range hs[1:] {
				mates[m.ID().String()] = true
			}
			break
		}
	}
	// Wait until every shard-mate's beacon has been replaced three times.
	updates := map[string]map[time.Time]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for done := false; !done; {
		if time.Now().After(deadline) {
			t.Fatalf("the watcher never heard its %d shard-mates three times: %v", len(mates), updates)
		}
		for _, ps := range watcher.View() {
			if !mates[ps.ID] {
				t.Fatalf("host %s, of shard %d, in the view of a host that hears only shard %d",
					ps.ID, protocol.BeaconShard(ps.ID, k), protocol.BeaconShard(watcher.ID().String(), k))
			}
			if updates[ps.ID] == nil {
				updates[ps.ID] = map[time.Time]bool{}
			}
			updates[ps.ID][ps.Updated] = true
		}
		done = len(updates) == len(mates)
		for _, u := range updates {
			done = done && len(u) >= 3
		}
		time.Sleep(20 * time.Millisecond)
	}

	c := addClient(t, sw)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := sw.WaitViews(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ps := range c.View() {
		if !c.Hears(mustDecode(t, ps.ID)) {
			t.Errorf("host %s of another shard in the client's view", ps.ID)
		}
	}
	for i := range 4 {
		task := protocol.Task{Prompt: "sharded " + string(rune('a'+i)), Width: 64, Height: 64, Steps: 2}
		if _, err := c.Submit(ctx, task, node.SubmitOptions{}); err != nil {
			t.Fatalf("a client hearing one shard of %d: %v", k, err)
		}
	}
}

func mustDecode(t *testing.T, id string) peer.ID {
	t.Helper()
	p, err := peer.Decode(id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
