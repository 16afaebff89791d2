package node

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

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
