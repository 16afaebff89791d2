package node

import (
	"sync"
	"time"

	"github.com/gpunet/gpunet/scheduler"
)

// ledger remembers the tasks this node placed, so that its view of each
// host is corrected for what the host's last beacon could not yet know:
// tasks placed after the beacon are charged (scheduler.PeerState.Charge),
// and tasks the beacon counted that have since finished are taken off.
// Without it a client sends its next task to the host that looks idle but
// is running its previous one, or avoids one that has just finished.
//
// It is keyed by the peer ID's string form, as scheduler.PeerState.ID
// holds it, so that correcting the view decodes nothing. The placement
// view (view.go) applies it to one peer at a time, when that peer's
// beacon or placements change; adjust corrects a whole copy of the view.
// Safe for concurrent use.
type ledger struct {
	mu     sync.Mutex
	placed map[string][]*placement
	starts int // since the last sweep of every peer
}

type placement struct {
	at, done time.Time // done is zero while running
}

// ledgerSweepEvery bounds how many placements go by between sweeps of
// peers nobody looks at any more (a host that left the view keeps its
// finished placements until then).
const ledgerSweepEvery = 1024

// start records a task placed on the peer id now; the returned func marks
// it done.
func (l *ledger) start(id string, keep time.Duration) func() {
	now := time.Now()
	pl := &placement{at: now}
	l.mu.Lock()
	if l.placed == nil {
		l.placed = map[string][]*placement{}
	}
	l.placed[id] = append(l.placed[id], pl)
	if l.starts++; l.starts >= ledgerSweepEvery {
		l.starts = 0
		cutoff := now.Add(-keep)
		for id := range l.placed {
			l.pruneLocked(id, cutoff)
		}
	}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		pl.done = time.Now()
		l.mu.Unlock()
	}
}

// pruneLocked forgets id's placements finished by cutoff and returns those
// left.
func (l *ledger) pruneLocked(id string, cutoff time.Time) []*placement {
	pls := l.placed[id]
	live := pls[:0]
	for _, pl := range pls {
		if pl.done.IsZero() || pl.done.After(cutoff) {
			live = append(live, pl)
		}
	}
	clear(pls[len(live):])
	if len(live) == 0 {
		delete(l.placed, id)
		return nil
	}
	l.placed[id] = live
	return live
}

// apply corrects one peer's state in place for this node's placements on
// it, forgetting those finished longer ago than keep, or by the time of
// the peer's beacon: the beacon counts those, and so does every later one
// (a peer's beacons only move forward, gossip.go), so they never correct
// this peer again. Under load that keeps the list to what finished since
// the last beacon, not the last three (4 % of a client's CPU at 4,000
// tasks/s went to walking them).
func (l *ledger) apply(p *scheduler.PeerState, keep time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.placed[p.ID]) == 0 {
		return
	}
	cutoff := time.Now().Add(-keep)
	if p.Updated.After(cutoff) {
		cutoff = p.Updated
	}
	for _, pl := range l.pruneLocked(p.ID, cutoff) {
		beacon := p.Updated
		switch {
		case pl.at.After(beacon) && pl.done.IsZero():
			p.Charge()
		case !pl.at.After(beacon) && !pl.done.IsZero() && pl.done.After(beacon):
			uncharge(p)
		}
	}
}

// adjust corrects every peer of v in place.
func (l *ledger) adjust(v scheduler.View, keep time.Duration) {
	for i := range v {
		l.apply(&v[i], keep)
	}
}

// uncharge undoes one Charge: a task the beacon counted has finished.
func uncharge(p *scheduler.PeerState) {
	switch {
	case p.QueueLen > 0:
		p.QueueLen--
	case p.Busy > 0:
		p.Busy--
	}
}
