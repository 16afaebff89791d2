package node

import (
	"context"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
)

// Result provides go through one queue with a few workers, instead of a
// goroutine each: a surge of results on one host would otherwise start a
// DHT walk per result at once, every walk competing with the tasks for the
// CPU and the link. A provide is never on a task's critical path; the
// queue only bounds how many run together and drops repeats.
const (
	// provideWorkers is how many provides run at once. Each is a DHT walk
	// of a few round trips, mostly waiting on the network.
	provideWorkers = 4
	// provideQueueLen bounds the provides waiting. Past it a result is not
	// queued: the reprovide round (ReprovideInterval) provides it then,
	// since it provides every result this node made or announced.
	provideQueueLen = 4096
)

// provideQueue is the node's queue of TaskCIDs to provide.
type provideQueue struct {
	mu      sync.Mutex
	pending map[cid.Cid]bool // queued or being provided
	ch      chan cid.Cid
	dropped uint64
}

func newProvideQueue() *provideQueue {
	return &provideQueue{pending: map[cid.Cid]bool{}, ch: make(chan cid.Cid, provideQueueLen)}
}

// add queues tc unless it is already queued or the queue is full; it
// never blocks.
func (q *provideQueue) add(tc cid.Cid) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending[tc] {
		return true
	}
	select {
	case q.ch <- tc:
		q.pending[tc] = true
		return true
	default:
		q.dropped++
		return false
	}
}

func (q *provideQueue) done(tc cid.Cid) {
	q.mu.Lock()
	delete(q.pending, tc)
	q.mu.Unlock()
}

// startProvides starts the queue's workers; they stop with the node.
func (n *Node) startProvides() {
	n.provides = newProvideQueue()
	for range provideWorkers {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			for {
				select {
				case <-n.ctx.Done():
					return
				case tc := <-n.provides.ch:
					ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
					err := n.dht.Provide(ctx, tc, true)
					cancel()
					n.provides.done(tc)
					if err != nil {
						n.log.Debug("providing result", "task", tc, "err", err)
					}
					n.observe(func(o Observer) { o.Provided(err) })
				}
			}
		}()
	}
}
