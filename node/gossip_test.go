package node

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func newPeerID(t *testing.T) peer.ID {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func beaconMsg(t *testing.T, from peer.ID, b protocol.Beacon) *pubsub.Message {
	t.Helper()
	data, err := protocol.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return rawMsg(from, data)
}

func rawMsg(from peer.ID, data []byte) *pubsub.Message {
	return &pubsub.Message{Message: &pb.Message{Data: data, From: []byte(from)}}
}

func goodBeacon(id peer.ID, seq uint64, issued time.Time) protocol.Beacon {
	return protocol.Beacon{Peer: id.String(), Seq: seq, Issued: uint64(issued.UnixMilli()), Models: []string{protocol.DefaultModel},
		Slots: 2, Busy: 1, Accepting: true, TempDC: 650, SlowdownDC: 900, LimitDC: 850, UtilPm: 500, SpeedPm: 1000, FreeMemMB: 8000}
}

// TestBeaconValidator feeds the topic validator what a hostile or broken
// peer could publish, and checks each verdict and the view it leaves.
func TestBeaconValidator(t *testing.T) {
	g := &gossip{log: slog.New(slog.DiscardHandler), view: map[peer.ID]viewEntry{}}
	alice, mallory := newPeerID(t), newPeerID(t)
	now := time.Now()
	oversize := goodBeacon(alice, 1, now)
	for i := 0; i < 16; i++ {
		oversize.Models = append(oversize.Models, "gpunet/model-with-a-rather-long-name-to-take-up-space-"+string(rune('a'+i)))
	}
	stale := goodBeacon(alice, 1, now.Add(-time.Minute))
	forged := goodBeacon(alice, 1, now) // signed by mallory, claims to be alice
	overheated := goodBeacon(alice, 1, now)
	overheated.TempDC = 5000

	steps := []struct {
		name string
		msg  *pubsub.Message
		want pubsub.ValidationResult
	}{
		{"malformed bytes", rawMsg(alice, []byte("not a beacon")), pubsub.ValidationReject},
		{"oversized", beaconMsg(t, alice, oversize), pubsub.ValidationReject},
		{"impossible temperature", beaconMsg(t, alice, overheated), pubsub.ValidationReject},
		{"stale", beaconMsg(t, alice, stale), pubsub.ValidationIgnore},
		{"forged author", beaconMsg(t, mallory, forged), pubsub.ValidationReject},
		{"valid", beaconMsg(t, alice, goodBeacon(alice, 10, now)), pubsub.ValidationAccept},
		{"replayed sequence", beaconMsg(t, alice, goodBeacon(alice, 10, now)), pubsub.ValidationIgnore},
		{"older sequence", beaconMsg(t, alice, goodBeacon(alice, 9, now)), pubsub.ValidationIgnore},
		{"flooding: next one issued too soon", beaconMsg(t, alice, goodBeacon(alice, 11, now.Add(protocol.BeaconMinInterval/2))), pubsub.ValidationReject},
		// Issued far enough apart, but bunched on the way: dropped, and
		// the relay that delivered it is not penalised.
		{"bunched on the way", beaconMsg(t, alice, goodBeacon(alice, 11, now.Add(2*protocol.BeaconMinInterval))), pubsub.ValidationIgnore},
	}
	for _, s := range steps {
		if got := g.validate(context.Background(), "", s.msg); got != s.want {
			t.Errorf("%s: verdict %v, want %v", s.name, got, s.want)
		}
	}
	if len(g.view) != 1 || g.view[alice].b.Seq != 10 {
		t.Fatalf("view after the sequence: %+v, want only alice at seq 10", g.view)
	}
	if _, ok := g.view[mallory]; ok {
		t.Error("the forger got into the view")
	}

	// After the minimum interval a newer beacon is accepted and replaces it.
	e := g.view[alice]
	e.received = e.received.Add(-protocol.BeaconMinInterval)
	g.view[alice] = e
	next := goodBeacon(alice, 12, now.Add(protocol.BeaconMinInterval))
	next.TempDC, next.HeatDC = 700, 55
	if got := g.validate(context.Background(), "", beaconMsg(t, alice, next)); got != pubsub.ValidationAccept {
		t.Fatalf("next beacon after the interval: %v", got)
	}
	v := g.snapshot(time.Now(), time.Minute, "", nil)
	if len(v) != 1 || v[0].TempC != 70 || v[0].LimitC != 85 || v[0].HeatPerTaskC != 5.5 || v[0].Slots != 2 || !v[0].Accepting {
		t.Errorf("snapshot %+v: want alice at 70 °C, limit 85, 5.5 °C predicted heat, 2 slots, accepting", v)
	}
	rtt := func(id peer.ID, _ string) time.Duration {
		if id == alice {
			return 7 * time.Millisecond
		}
		return 0
	}
	if v := g.snapshot(time.Now(), time.Minute, "", rtt); len(v) != 1 || v[0].RTTMs != 7 {
		t.Errorf("snapshot %+v: want alice with the 7 ms round trip this node measured", v)
	}
	// Silent peers expire from the view.
	if v := g.snapshot(time.Now().Add(time.Hour), time.Minute, "", nil); len(v) != 0 {
		t.Errorf("silent peer still in the view: %+v", v)
	}
}
