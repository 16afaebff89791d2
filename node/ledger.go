package node

import (
	"sync"
	"time"

	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ledger remembers the tasks this node placed, so that its view of each
// host is corrected for what the host's last beacon could not yet know:
// tasks placed after the beacon are charged (scheduler.PeerState.Charge),
// and tasks the beacon counted that have since finished are taken off.
// Without it a client sends its next task to the host that looks idle but
// is running its previous one, or avoids one that has just finished.
// Safe for concurrent use.
type ledger struct {
	mu     sync.Mutex
	placed map[peer.ID][]*placement
}

type placement struct {
	at, done time.Time // done is zero while running
}

// start records a task placed on p now; the returned func marks it done.
func (l *ledger) start(p peer.ID) func() {
	pl := &placement{at: time.Now()}
	l.mu.Lock()
	if l.placed == nil {
		l.placed = map[peer.ID][]*placement{}
	}
	l.placed[p] = append(l.placed[p], pl)
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		pl.done = time.Now()
		l.mu.Unlock()
	}
}

// adjust corrects v in place, and forgets placements finished longer ago
// than keep (older than any beacon the view still holds).
func (l *ledger) adjust(v scheduler.View, keep time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cutoff := time.Now().Add(-keep)
	for id, pls := range l.placed {
		live := pls[:0]
		for _, pl := range pls {
			if pl.done.IsZero() || pl.done.After(cutoff) {
				live = append(live, pl)
			}
		}
		if len(live) == 0 {
			delete(l.placed, id)
		} else {
			l.placed[id] = live
		}
	}
	for i := range v {
		id, err := peer.Decode(v[i].ID)
		if err != nil {
			continue
		}
		for _, pl := range l.placed[id] {
			beacon := v[i].Updated
			switch {
			case pl.at.After(beacon) && pl.done.IsZero():
				v[i].Charge()
			case !pl.at.After(beacon) && !pl.done.IsZero() && pl.done.After(beacon):
				uncharge(&v[i])
			}
		}
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
