package node

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// fairQueue holds tasks waiting for a slot, one FIFO per submitter, served
// round robin: a submitter with a hundred queued tasks delays another's one
// task by at most one task, not a hundred. Not safe for concurrent use; the
// server guards it.
type fairQueue struct {
	order []peer.ID // submitters with queued tasks, in service order
	q     map[peer.ID][]*flight
	n     int
}

func (fq *fairQueue) len() int { return fq.n }

func (fq *fairQueue) push(id peer.ID, f *flight) {
	if fq.q == nil {
		fq.q = map[peer.ID][]*flight{}
	}
	if len(fq.q[id]) == 0 {
		fq.order = append(fq.order, id)
	}
	fq.q[id] = append(fq.q[id], f)
	fq.n++
}

// pop returns the next task: the head of the first submitter's queue; that
// submitter then goes to the back of the line.
func (fq *fairQueue) pop() *flight {
	if fq.n == 0 {
		return nil
	}
	id := fq.order[0]
	fq.order = fq.order[1:]
	f := fq.q[id][0]
	fq.q[id] = fq.q[id][1:]
	if len(fq.q[id]) > 0 {
		fq.order = append(fq.order, id)
	} else {
		delete(fq.q, id)
	}
	fq.n--
	return f
}

// remove takes f out of the queue; false if it was not queued.
func (fq *fairQueue) remove(f *flight) bool {
	for i, id := range fq.order {
		q := fq.q[id]
		for j, g := range q {
			if g != f {
				continue
			}
			fq.q[id] = append(q[:j:j], q[j+1:]...)
			if len(fq.q[id]) == 0 {
				delete(fq.q, id)
				fq.order = append(fq.order[:i:i], fq.order[i+1:]...)
			}
			fq.n--
			return true
		}
	}
	return false
}

// drain removes and returns every queued task.
func (fq *fairQueue) drain() []*flight {
	var out []*flight
	for f := fq.pop(); f != nil; f = fq.pop() {
		out = append(out, f)
	}
	return out
}

// position is f's 1-based place in the order the queue would serve it.
func (fq *fairQueue) position(f *flight) int {
	// Round k serves the k-th task of every submitter in turn.
	for k, pos := 0, 0; ; k++ {
		any := false
		for _, id := range fq.order {
			if k < len(fq.q[id]) {
				any = true
				pos++
				if fq.q[id][k] == f {
					return pos
				}
			}
		}
		if !any {
			return 0
		}
	}
}

// rateLimiter is a token bucket per submitter. Not safe for concurrent use;
// the server guards it.
type rateLimiter struct {
	rate, burst float64 // tokens per second, bucket size
	buckets     map[peer.ID]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxBuckets bounds the limiter's memory: past it, full (idle) buckets are
// dropped, which forgets nothing a limit needs.
const maxBuckets = 10000

// take spends one token of id's bucket at now, or says how long until one
// is available.
func (l *rateLimiter) take(id peer.ID, now time.Time) (bool, time.Duration) {
	if l.rate <= 0 {
		return true, 0
	}
	if l.buckets == nil {
		l.buckets = map[peer.ID]*bucket{}
	}
	b, ok := l.buckets[id]
	if !ok {
		if len(l.buckets) >= maxBuckets {
			l.prune(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[id] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

func (l *rateLimiter) prune(now time.Time) {
	for id, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, id)
		}
	}
}
