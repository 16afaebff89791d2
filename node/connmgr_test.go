package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/nodetest"
)

// TestConnectionsAreCapped: a node that every other node of a swarm joins
// through keeps at most its high watermark of connections once the
// connection manager trims, however many peers dialled it. (Peers in its
// DHT routing table and its GossipSub meshes are protected; both bound
// themselves.)
func TestConnectionsAreCapped(t *testing.T) {
	// GossipSub protects its mesh peers (at most 12 for the beacon topic),
	// so a trim leaves low + up to 12; high is above that.
	const low, high, peers = 4, 16, 28
	hub := nodetest.Start(t, func(c *node.Config) {
		c.ConnsLow, c.ConnsHigh, c.ConnsGrace = low, high, 0
	})
	for range peers {
		// DHT clients: peers in the hub's routing table are protected
		// (kad-dht keeps them), and the table's size is bounded by itself.
		nodetest.Start(t, func(c *node.Config) { c.Bootstrap, c.DHTServer = hub.Addrs(), false })
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(hub.Host().Network().Peers()) < peers {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d peers connected after 20 s", len(hub.Host().Network().Peers()), peers)
		}
		time.Sleep(20 * time.Millisecond)
	}
	hub.Host().ConnManager().TrimOpenConns(context.Background())
	if n := len(hub.Host().Network().Peers()); n > high {
		t.Errorf("%d peers connected after a trim, want at most %d", n, high)
	}
}
