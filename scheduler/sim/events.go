package sim

// Event kinds.
const (
	evArrival  uint8 = iota // the next task arrives
	evComplete              // a task's work is done (a: task, ver: task's version)
	evThermal               // a host crosses a temperature threshold (a: host, ver: host's thermal version)
	evBeacon                // a host publishes a beacon (a: host, ver: epoch)
	evRetry                 // a client tries a task again (a: task)
	evLeave                 // a host leaves (a: host, ver: epoch)
	evJoin                  // a host comes back as a new peer (a: host)
	evHit                   // a cache hit is served (a: task)
	evChange                // a rate-limited change beacon is due (a: host, ver: epoch)
	evHedge                 // a queued task's hedge deadline (a: task, ver: task's version)
	evProbed                // a probe round's replies are in (a: round)
	evShuffle               // a node's peer-sampling shuffle (a: host, or clientNode; ver: epoch)
	evNotice                // an idle notice reaches its client (a: notice)
)

type event struct {
	t    float64
	seq  uint64 // ties in t go to the event scheduled first: determinism
	a    int32
	ver  uint32
	kind uint8
}

func (e *event) before(o *event) bool {
	return e.t < o.t || (e.t == o.t && e.seq < o.seq)
}

// eventQueue is a binary min-heap of events by (t, seq). It is written out
// rather than using container/heap to avoid an interface call per compare.
type eventQueue struct {
	h   []event
	seq uint64
}

func (q *eventQueue) push(t float64, kind uint8, a int32, ver uint32) {
	q.seq++
	q.h = append(q.h, event{t: t, seq: q.seq, a: a, ver: ver, kind: kind})
	i := len(q.h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !q.h[i].before(&q.h[p]) {
			break
		}
		q.h[i], q.h[p] = q.h[p], q.h[i]
		i = p
	}
}

func (q *eventQueue) pop() event {
	top := q.h[0]
	n := len(q.h) - 1
	q.h[0] = q.h[n]
	q.h = q.h[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && q.h[r].before(&q.h[l]) {
			m = r
		}
		if !q.h[m].before(&q.h[i]) {
			break
		}
		q.h[i], q.h[m] = q.h[m], q.h[i]
		i = m
	}
	return top
}

func (q *eventQueue) len() int { return len(q.h) }
