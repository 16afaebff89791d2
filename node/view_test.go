package node

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestPlaceViewMatchesSnapshot checks the placement view against what a
// placement read before it kept a view (issue 14): the gossip snapshot,
// this host's own beacon appended, corrected by the ledger, through
// beacons, placements started and finished, a refusal, the own beacon and
// expiry.
func TestPlaceViewMatchesSnapshot(t *testing.T) {
	self := newPeerID(t)
	g := &gossip{log: slog.New(slog.DiscardHandler), view: map[peer.ID]viewEntry{}}
	g.pv.self = self
	var led ledger
	const expiry = time.Minute
	rtt := func(id peer.ID, _ string) time.Duration { return time.Duration(len(id.String())) * time.Millisecond }
	ids := make([]peer.ID, 5)
	seq := uint64(1)
	beacon := func(id peer.ID, busy uint32, at time.Time) {
		seq++
		b := goodBeacon(id, seq, at)
		b.Busy, b.Queue, b.QueueMax = busy, 1, 4
		e := g.view[id]
		e.received = e.received.Add(-time.Hour) // past the flood guard
		g.view[id] = e
		if r := g.judge(beaconMsg(t, id, b)); r != 0 && r != 1 { // accept
			t.Fatalf("beacon for %s: %v", id, r)
		}
	}
	now := time.Now()
	for i := range ids {
		ids[i] = newPeerID(t)
		beacon(ids[i], uint32(i%2), now.Add(-time.Second))
	}
	beacon(self, 0, now) // a host hears its own beacon: not a peer of its view
	// The node stores a new beacon for each one it publishes (n.own);
	// the view tells them apart by pointer.
	b0 := goodBeacon(self, 99, now)
	own := &b0

	// want is the view as placement used to build it.
	want := func(at time.Time) scheduler.View {
		v := g.snapshot(at, expiry, self, rtt)
		v = append(v, peerState(self, own))
		led.adjust(v, expiry)
		return v
	}
	check := func(step string, at time.Time) {
		t.Helper()
		d := viewDeps{now: at, expiry: expiry, own: own, rtt: rtt, led: &led}
		var got scheduler.View
		g.pv.read(d, func(v scheduler.View, pids []peer.ID) {
			for i := range v {
				if pids[i].String() != v[i].ID {
					t.Errorf("%s: entry %d is %s, its peer %s", step, i, v[i].ID, pids[i])
				}
			}
			got = slices.Clone(v)
		})
		w := want(at)
		byID := func(a, b scheduler.PeerState) int { return strings.Compare(a.ID, b.ID) }
		slices.SortFunc(got, byID)
		slices.SortFunc(w, byID)
		if len(got) != len(w) {
			t.Fatalf("%s: %d peers, want %d", step, len(got), len(w))
		}
		for i := range w {
			if g, w := got[i], w[i]; g.ID != w.ID || g.Busy != w.Busy || g.QueueLen != w.QueueLen || g.Pending != w.Pending ||
				g.TempC != w.TempC || g.Accepting != w.Accepting || g.RTTMs != w.RTTMs || !g.Updated.Equal(w.Updated) {
				t.Errorf("%s: %s is %+v, want %+v", step, w.ID, g, w)
			}
		}
	}
	check("beacons only", now)

	// Placements after the beacons are charged; finished ones are not.
	place := func(id peer.ID) func() {
		done := led.start(id.String(), expiry)
		g.pv.touch(id.String())
		return func() { done(); g.pv.touch(id.String()) }
	}
	d0 := place(ids[0])
	d1 := place(ids[1])
	place(ids[1])
	dSelf := place(self)
	check("three placements running", now)
	d0()
	dSelf()
	check("two finished", now)

	// A beacon that counted a placement still running, then its end.
	time.Sleep(2 * time.Millisecond)
	beacon(ids[1], 2, time.Now())
	check("a beacon after the placements", now)
	d1()
	check("one the beacon counted finished", now)

	// A refusal takes a peer out until its next beacon.
	g.forget(ids[2])
	check("refused", now)
	beacon(ids[2], 0, time.Now())
	check("back after its beacon", now)

	// The own beacon changes; a silent peer expires.
	b1 := goodBeacon(self, 100, now)
	b1.Busy = 2
	own = &b1
	check("own beacon", now)
	check("later: everyone expired but this host", now.Add(2*expiry))
}

// TestLedgerForgetsWhatABeaconCounts: the ledger corrects a peer's state
// for placements its beacon could not know (charged: placed after it and
// running; taken off: counted by it and finished since), and forgets the
// placements a beacon has counted finished, which no later beacon of the
// peer needs either; running ones it keeps.
func TestLedgerForgetsWhatABeaconCounts(t *testing.T) {
	const id, keep = "12D3KooWPeer", time.Hour
	var led ledger
	done := func() { led.start(id, keep)() }
	done()                           // finished before the beacon
	finish := led.start(id, keep)    // counted by the beacon, finished after
	led.start(id, keep)              // counted by the beacon, still running
	time.Sleep(2 * time.Millisecond) // the clock must move for At/After
	beacon := time.Now()
	time.Sleep(2 * time.Millisecond)
	finish()
	led.start(id, keep) // placed after the beacon, running
	p := scheduler.PeerState{ID: id, Slots: 4, Busy: 2, Updated: beacon}
	led.apply(&p, keep)
	if p.Busy != 1 || p.Pending != 1 {
		t.Errorf("after the beacon: busy %d, pending %d; want 1 (one counted task finished) and 1 (one placed since)", p.Busy, p.Pending)
	}
	if n := len(led.placed[id]); n != 3 {
		t.Errorf("the ledger keeps %d placements of the peer; want 3 (the one finished before the beacon forgotten)", n)
	}

	// A later beacon counts the running ones and knows the finished one:
	// nothing to correct, and only the running placements are kept.
	time.Sleep(2 * time.Millisecond)
	later := scheduler.PeerState{ID: id, Slots: 4, Busy: 2, Updated: time.Now()}
	led.apply(&later, keep)
	if later.Busy != 2 || later.Pending != 0 {
		t.Errorf("after a later beacon: busy %d, pending %d; want 2 and 0", later.Busy, later.Pending)
	}
	if n := len(led.placed[id]); n != 2 {
		t.Errorf("the ledger keeps %d placements after a later beacon; want the 2 running", n)
	}
}
