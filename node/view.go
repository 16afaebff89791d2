package node

import (
	"sync"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p/core/peer"
)

// placeView is the view placement reads (issue 14): one
// scheduler.PeerState per live peer, made once per beacon (IDs in string
// form, service times as floats) and kept corrected by the ledger, so that
// a placement reads it in place under a read lock (scheduler.Place does not
// modify a view) instead of rebuilding, copying and decoding the whole view
// for every decision.
//
// Changes mark peers dirty; a reader brings them up to date under the write
// lock first: the few peers whose beacon or placements changed, a peer
// silent for longer than the expiry dropped, this host's own beacon, and
// every peer's round trip at most every rttRefresh. The zero value is an
// empty view. Safe for concurrent use.
type placeView struct {
	mu     sync.RWMutex
	self   peer.ID               // never held from gossip: ownB stands for it
	base   []scheduler.PeerState // from each beacon, with this node's round trip
	states scheduler.View        // base, corrected by the ledger: what Place reads
	ids    []peer.ID             // ids[i] is states[i]'s peer
	recv   []time.Time           // when states[i]'s beacon arrived; zero for self
	index  map[string]int        // position by ID string
	dirty  map[int]struct{}      // positions whose states need redoing
	ownB   *protocol.Beacon      // the own beacon the self entry was made from
	oldest time.Time             // no entry received before it, self aside
	rttAt  time.Time             // when round trips were last read
	rtts   func(peer.ID, string) time.Duration
}

// rttRefresh bounds how stale a round trip placement reads may be: the
// estimate is an EWMA of this node's own measurements, which moves far
// slower than this, and reading it for every peer at every placement was
// most of a placement's cost at 1,000 peers.
const rttRefresh = 100 * time.Millisecond

// put records peer id's latest beacon, as ps; from the beacon validator.
func (v *placeView) put(id peer.ID, ps scheduler.PeerState, received time.Time) {
	if id == v.self {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.setLocked(id, ps, received)
}

func (v *placeView) setLocked(id peer.ID, ps scheduler.PeerState, received time.Time) {
	if v.rtts != nil {
		ps.RTTMs = ms(v.rtts(id, ps.Reach))
	}
	i, ok := v.index[ps.ID]
	// Once per beacon, what placement would otherwise work out from it at
	// every decision; a peer's ID table is kept from its last beacon.
	// Placement's own Config is not at hand here: with another than the
	// default, Place works out the thermal term itself, as before.
	var prev *scheduler.PeerState
	if ok {
		prev = &v.base[i]
	}
	ps.Prepare(prev, nil)
	if !ok {
		if v.index == nil {
			v.index, v.dirty = map[string]int{}, map[int]struct{}{}
		}
		i = len(v.states)
		v.index[ps.ID] = i
		v.base, v.states = append(v.base, ps), append(v.states, ps)
		v.ids, v.recv = append(v.ids, id), append(v.recv, received)
	} else {
		v.base[i], v.recv[i] = ps, received
	}
	if !received.IsZero() && (v.oldest.IsZero() || received.Before(v.oldest)) {
		v.oldest = received
	}
	v.dirty[i] = struct{}{}
}

// touch marks peer id's placements changed.
func (v *placeView) touch(id string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if i, ok := v.index[id]; ok {
		v.dirty[i] = struct{}{}
	}
}

// refuse marks peer id as not accepting until its next beacon.
func (v *placeView) refuse(id string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if i, ok := v.index[id]; ok {
		v.base[i].Accepting = false
		v.dirty[i] = struct{}{}
	}
}

// viewDeps is what bringing the view up to date needs from the node.
type viewDeps struct {
	now    time.Time
	expiry time.Duration
	// own is this host's latest beacon (nil when none), a new one for
	// each beacon published (Node.own): the view compares pointers.
	own *protocol.Beacon
	rtt func(peer.ID, string) time.Duration
	led *ledger
	// distrust is each peer's score from node/trust (nil: verification
	// off); a change of it marks the peer dirty (touch).
	distrust func(id string) float64
}

// read calls fn with the live view, up to date as of d.now, and the peer
// of each of its entries. fn must not modify or keep them, nor call back
// into the view.
func (v *placeView) read(d viewDeps, fn func(scheduler.View, []peer.ID)) {
	v.mu.RLock()
	if v.stale(&d) {
		v.mu.RUnlock()
		v.mu.Lock()
		v.updateLocked(&d)
		v.mu.Unlock()
		v.mu.RLock()
	}
	defer v.mu.RUnlock()
	fn(v.states, v.ids)
}

// lookup returns peer id's corrected state.
func (v *placeView) lookup(d viewDeps, id string) (p scheduler.PeerState, ok bool) {
	v.read(d, func(s scheduler.View, _ []peer.ID) {
		if i, found := v.index[id]; found {
			p, ok = s[i], true
		}
	})
	return p, ok
}

// stale reports whether a reader must update the view first. Called with
// the read lock held.
func (v *placeView) stale(d *viewDeps) bool {
	return len(v.dirty) > 0 || d.own != v.ownB ||
		(!v.oldest.IsZero() && d.now.Sub(v.oldest) > d.expiry) ||
		(d.rtt != nil && len(v.states) > 0 && d.now.Sub(v.rttAt) >= rttRefresh)
}

// updateLocked brings the view up to date. Called with the write lock held.
func (v *placeView) updateLocked(d *viewDeps) {
	v.rtts = d.rtt
	if d.own != v.ownB {
		v.ownB = d.own
		v.setOwnLocked(d.own)
	}
	if !v.oldest.IsZero() && d.now.Sub(v.oldest) > d.expiry {
		v.expireLocked(d.now, d.expiry)
	}
	if d.rtt != nil && d.now.Sub(v.rttAt) >= rttRefresh {
		v.rttAt = d.now
		for i := range v.base {
			if v.ids[i] == v.self {
				continue // no link to cross
			}
			if r := ms(d.rtt(v.ids[i], v.base[i].Reach)); r != v.base[i].RTTMs {
				v.base[i].RTTMs = r
				v.dirty[i] = struct{}{}
			}
		}
	}
	for i := range v.dirty {
		v.states[i] = v.base[i]
		if d.led != nil {
			d.led.apply(&v.states[i], d.expiry)
		}
		if d.distrust != nil && v.ids[i] != v.self {
			v.states[i].Distrust = d.distrust(v.states[i].ID)
		}
	}
	clear(v.dirty)
}

// setOwnLocked puts this host's own beacon in the view: its GPU is a
// candidate for its own submissions, ranked like any other, with no link
// to cross, never expiring. Nil takes it out.
func (v *placeView) setOwnLocked(b *protocol.Beacon) {
	if v.self == "" {
		return
	}
	if b == nil {
		if i, ok := v.index[v.self.String()]; ok {
			v.removeLocked(i)
		}
		return
	}
	ps := peerState(v.self, b)
	rtts := v.rtts
	v.rtts = nil
	v.setLocked(v.self, ps, time.Time{})
	v.rtts = rtts
}

// expireLocked drops peers silent for longer than expiry.
func (v *placeView) expireLocked(now time.Time, expiry time.Duration) {
	v.oldest = time.Time{}
	for i := len(v.states) - 1; i >= 0; i-- {
		r := v.recv[i]
		if r.IsZero() {
			continue // self
		}
		if now.Sub(r) > expiry {
			v.removeLocked(i)
			continue
		}
		if v.oldest.IsZero() || r.Before(v.oldest) {
			v.oldest = r
		}
	}
}

// removeLocked drops entry i, moving the last one into its place.
func (v *placeView) removeLocked(i int) {
	last := len(v.states) - 1
	delete(v.index, v.states[i].ID)
	delete(v.dirty, i)
	if i != last {
		v.base[i], v.states[i], v.ids[i], v.recv[i] = v.base[last], v.states[last], v.ids[last], v.recv[last]
		v.index[v.states[i].ID] = i
		if _, ok := v.dirty[last]; ok {
			delete(v.dirty, last)
			v.dirty[i] = struct{}{}
		}
	}
	v.base[last], v.states[last] = scheduler.PeerState{}, scheduler.PeerState{}
	v.base, v.states, v.ids, v.recv = v.base[:last], v.states[:last], v.ids[:last], v.recv[:last]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// viewDeps are this node's, now.
func (n *Node) viewDeps() viewDeps {
	d := viewDeps{now: time.Now(), expiry: n.viewExpiry(), own: n.own.Load(), rtt: n.linkRTT, led: &n.ledger}
	if n.verify != nil {
		d.distrust = n.verify.book.Distrust
	}
	return d
}

// placed records a task placed on p (the ledger) and returns the func that
// marks it done; the placement view hears of both.
func (n *Node) placed(c candidate) func() {
	id := c.key()
	done := n.ledger.start(id, n.viewExpiry())
	n.gossip.pv.touch(id)
	return func() {
		done()
		n.gossip.pv.touch(id)
	}
}

// candPool holds placement buffers: AppendPlace into a reused one
// allocates nothing.
var candPool = sync.Pool{New: func() any { return new([]scheduler.Candidate) }}

// key is c's peer ID in string form, as the view and the ledger hold it.
func (c candidate) key() string {
	if c.pred.ID != "" {
		return c.pred.ID
	}
	return c.p.String()
}
