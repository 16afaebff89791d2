package node

import (
	"math/rand/v2"
	"sync"
	"time"
)

// waitRoom is where this node's submissions wait while the swarm is
// saturated: every host they could use refused them for load (busy, too
// hot, paused, rate limited). A waiting task does not ask any host again
// until the room lets it go, so a surge queues here, in a fair order,
// instead of hammering hosts with requests they must refuse.
//
// Tasks leave in fair order (round robin between submitters, FIFO within
// one), as room appears:
//   - one whenever a task this node placed ends (its place at a host is
//     free again: a window, the way TCP paces a sender by acknowledgements);
//   - when the timer fires, as many as the view says the swarm would take
//     now. The timer is armed while anyone waits, at the latest retry-after
//     a host sent, with ±25 % jitter so that many nodes refused at the same
//     moment do not come back at the same moment. When the view shows no
//     room, one task still goes, as a probe (the view may be stale), and
//     the timer backs off, doubling up to maxRetry, until the view shows
//     room again.
//
// A task that leaves and is refused again comes back at the head of its
// submitter's line. Safe for concurrent use.
type waitRoom struct {
	// capacity says how many waiting tasks the swarm would take now; it is
	// called without the room's lock held and must not block.
	capacity func() int

	mu     sync.Mutex
	q      fairQueue[*ticket]
	counts map[string]int // waiting tasks by model
	hint   time.Duration
	probes int // timer ticks in a row that found no room in the view
	timer  *time.Timer
	closed bool
	// order caches the service order for position, until the queue changes.
	order map[*ticket]int
}

// ticket is one task's place in the room; ready is closed when it may try
// the hosts again.
type ticket struct {
	key   fairKey
	model string
	ready chan struct{}
}

// Bounds on the timer: sooner than minRetry is hammering; later than
// maxRetry leaves a swarm idle after a lost wake-up.
const (
	minRetry = 100 * time.Millisecond
	maxRetry = 5 * time.Second
)

func newWaitRoom(capacity func() int) *waitRoom {
	return &waitRoom{capacity: capacity}
}

// enter queues a task of submitter for model, with the retry-after the
// hosts sent (0: none). A task coming back after a refusal goes to the head
// of its submitter's line.
func (w *waitRoom) enter(submitter, model string, hint time.Duration, back bool) *ticket {
	t := &ticket{key: fairKey{outer: submitter}, model: model, ready: make(chan struct{})}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		close(t.ready)
		return t
	}
	if back {
		w.q.pushFront(t.key, t)
	} else {
		w.q.push(t.key, t)
	}
	if w.counts == nil {
		w.counts = map[string]int{}
	}
	w.counts[model]++
	w.order = nil
	if hint > 0 {
		w.hint = hint
	}
	w.armLocked()
	return t
}

// waiting reports how many tasks wait for model.
func (w *waitRoom) waiting(model string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.counts[model]
}

// leave takes t out of the room (its submitter gave up).
func (w *waitRoom) leave(t *ticket) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.q.remove(t) {
		w.counts[t.model]--
		w.order = nil
	}
}

// position is t's 1-based place in the room's service order, 0 once it
// left.
func (w *waitRoom) position(t *ticket) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.order == nil {
		w.order = map[*ticket]int{}
		for i, x := range w.q.serviceOrder() {
			w.order[x] = i + 1
		}
	}
	return w.order[t]
}

// release lets up to k waiting tasks go, in fair order.
func (w *waitRoom) release(k int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.releaseLocked(k)
}

func (w *waitRoom) releaseLocked(k int) {
	for ; k > 0; k-- {
		t, ok := w.q.pop()
		if !ok {
			break
		}
		w.counts[t.model]--
		w.order = nil
		close(t.ready)
	}
	w.armLocked()
}

// armLocked starts the timer if anyone waits and it is not running.
func (w *waitRoom) armLocked() {
	if w.closed || w.timer != nil || w.q.len() == 0 {
		return
	}
	d := max(w.hint, minRetry) << min(w.probes, 6)
	d = time.Duration(float64(min(d, maxRetry)) * (0.75 + rand.Float64()/2))
	w.timer = time.AfterFunc(d, w.tick)
}

// tick is the timer: it lets go as many tasks as the swarm would take now.
func (w *waitRoom) tick() {
	k := w.capacity()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer = nil
	if k > 0 {
		w.probes = 0
	} else {
		w.probes++
	}
	w.releaseLocked(max(k, 1))
}

// close stops the timer and lets every waiting task go (they find their
// context done or the node closed).
func (w *waitRoom) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	for _, t := range w.q.drain() {
		close(t.ready)
	}
	w.counts, w.order = nil, nil
}
