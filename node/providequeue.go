package node

import (
	"errors"
	"sync"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// The TaskCIDs this node is to provide wait here until the sweep (sweep.go)
// hands them to kad-dht's SweepingProvider, and are remembered until their
// first provider record has gone out, so that each is reported to the
// observers once (Observer.Provided): done when a record reached a peer,
// failed when the node closed first.
//
// The queue itself never batches by time: a provide is handed over as soon
// as it comes. Batches form in the provider, whose provide queue groups
// keys by keyspace region while its workers are busy; so one result on an
// idle node is provided at once, as before, and a surge of results costs a
// few region walks rather than one DHT walk per result.

// provideQueueLen bounds the TaskCIDs waiting or in flight (a few MiB).
// Past it a result is not queued: the sweep's keystore sync (sweep.go, at
// start and every sweep interval) takes every result this node serves from
// the store, so it is provided then.
const provideQueueLen = 1 << 16

// errNotProvided is what Observer.Provided hears for a TaskCID whose
// provider record had not gone out when the node closed. A node with a data
// directory provides it at its next start: the provider saves its queue,
// and the keystore sync finds the result in the store.
var errNotProvided = errors.New("node closed before the provide went out")

// provideQueue is the node's queue of TaskCIDs to provide. It is safe for
// concurrent use.
type provideQueue struct {
	mu      sync.Mutex
	waiting []cid.Cid            // not handed to the provider yet
	pending map[string]cid.Cid   // by multihash: waiting or handed over, no record out yet
	wake    chan struct{}        // a TaskCID is waiting
	closed  bool                 // no more TaskCIDs are taken
	report  func(n int, e error) // reports n provides done (e nil) or failed
}

// newProvideQueue returns an empty queue that tells report of each provide
// done or failed. report is called without the queue's lock held and must
// not block.
func newProvideQueue(report func(n int, err error)) *provideQueue {
	return &provideQueue{pending: map[string]cid.Cid{}, wake: make(chan struct{}, 1), report: report}
}

// add queues tc unless it is queued already, the queue is full or closed; it
// never blocks.
func (q *provideQueue) add(tc cid.Cid) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := string(tc.Hash())
	if _, ok := q.pending[k]; ok {
		return true
	}
	if q.closed || len(q.pending) >= provideQueueLen {
		return false
	}
	q.pending[k] = tc
	q.waiting = append(q.waiting, tc)
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// take returns the TaskCIDs waiting, as multihashes (what the DHT provides),
// and empties the waiting list; they stay pending until sent.
func (q *provideQueue) take() []mh.Multihash {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) == 0 {
		return nil
	}
	out := make([]mh.Multihash, len(q.waiting))
	for i, tc := range q.waiting {
		out[i] = tc.Hash()
	}
	q.waiting = q.waiting[:0]
	return out
}

// hasWaiting reports whether a TaskCID waits to be handed over.
func (q *provideQueue) hasWaiting() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting) > 0
}

// sent marks the provide of h done: a provider record for it reached a
// peer. A key this queue does not hold (a reprovide, a model key) is
// ignored. It must be safe to call from the provider's workers.
func (q *provideQueue) sent(h mh.Multihash) {
	q.mu.Lock()
	_, ok := q.pending[string(h)]
	delete(q.pending, string(h))
	q.mu.Unlock()
	if ok {
		q.report(1, nil)
	}
}

// close stops the queue taking TaskCIDs and reports every one whose
// record had not gone out as failed.
func (q *provideQueue) close() {
	q.mu.Lock()
	q.closed = true
	n := len(q.pending)
	q.pending, q.waiting = map[string]cid.Cid{}, nil
	q.mu.Unlock()
	if n > 0 {
		q.report(n, errNotProvided)
	}
}
