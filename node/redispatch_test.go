package node

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestShouldRedispatch: a client leaves a host's queue only when another
// host is predicted to finish clearly sooner.
func TestShouldRedispatch(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir, cfg.ListenAddrs, cfg.MDNS = "", nil, false
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	task, _ := protocol.Task{Prompt: "queued"}.Normalize()
	tc, _ := task.CID()
	busy, idle := newPeerID(t), newPeerID(t)
	put := func(id peer.ID, busy, queue uint32, serviceMs uint32) {
		b := goodBeacon(id, 1, time.Now())
		b.Slots, b.Busy, b.Queue = 1, busy, queue
		b.ServiceMs = map[string]uint32{protocol.DefaultModel: serviceMs}
		n.gossip.view[id] = viewEntry{b: b, received: time.Now()}
	}
	put(busy, 1, 5, 2000)
	if n.shouldRedispatch(busy, task, tc, 5, nil) {
		t.Error("left the queue with no other host to go to")
	}
	put(idle, 0, 0, 2000)
	cases := []struct {
		pos  uint32
		want bool
	}{{1, false}, {2, false}, {3, true}, {5, true}}
	for _, c := range cases {
		if got := n.shouldRedispatch(busy, task, tc, c.pos, nil); got != c.want {
			t.Errorf("position %d with an idle 2 s host elsewhere: %v, want %v", c.pos, got, c.want)
		}
	}
	if n.shouldRedispatch(busy, task, tc, 5, map[string]bool{idle.String(): true}) {
		t.Error("redispatched to a host that was already tried")
	}
}
