package node

import (
	"context"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpunet/gpunet/protocol"
)

// A host whose beacon says it is behind a NAT costs RelayPenalty more in
// placement until this node holds a direct connection to it; a public
// host, or a private one reached directly, costs its round trip alone.
func TestRelayedHostRanksFarther(t *testing.T) {
	a, b := startLoopback(t, loopbackConfig()), startLoopback(t, loopbackConfig())
	id := b.host.ID()
	if got := a.linkRTT(id, protocol.ReachPrivate); got < RelayPenalty {
		t.Errorf("private host, no connection: %v, want at least %v", got, RelayPenalty)
	}
	if got := a.linkRTT(id, protocol.ReachPublic); got >= RelayPenalty {
		t.Errorf("public host: %v, want no penalty", got)
	}
	if got := a.linkRTT(id, ""); got >= RelayPenalty {
		t.Errorf("host of unknown reach: %v, want no penalty", got)
	}
	if err := a.host.Connect(context.Background(), peer.AddrInfo{ID: id, Addrs: b.host.Addrs()}); err != nil {
		t.Fatal(err)
	}
	if got := a.linkRTT(id, protocol.ReachPrivate); got >= RelayPenalty {
		t.Errorf("private host reached directly: %v, want no penalty", got)
	}
}
