package node

// fairKey names who queued an item: outer is served round robin first, and
// inner round robin within it. A host keys its queue by (peer, the peer's
// submitter), so a peer that forwards for many submitters gets one peer's
// share, split fairly between them; a client's waiting room keys by
// (submitter, "").
type fairKey struct{ outer, inner string }

// fairQueue holds items waiting for service, one FIFO per key, served round
// robin on two levels: a key with a hundred items delays another's one item
// by at most one item of each other key, not a hundred. Not safe for
// concurrent use; its owner guards it.
type fairQueue[T comparable] struct {
	order []string // outer keys with items, in service order
	inner map[string]*innerQueue[T]
	n     int
}

type innerQueue[T comparable] struct {
	order []string // inner keys with items, in service order
	q     map[string][]T
}

func (fq *fairQueue[T]) len() int { return fq.n }

// push appends x to k's FIFO.
func (fq *fairQueue[T]) push(k fairKey, x T) {
	iq := fq.innerFor(k)
	iq.q[k.inner] = append(iq.q[k.inner], x)
	fq.n++
}

// pushFront puts x at the head of k's FIFO: an item that was served and came
// back (its host refused it) keeps its place among its own key's items, but
// a key that had already left the rotation rejoins it at the back.
func (fq *fairQueue[T]) pushFront(k fairKey, x T) {
	iq := fq.innerFor(k)
	iq.q[k.inner] = append([]T{x}, iq.q[k.inner]...)
	fq.n++
}

// innerFor returns k's inner queue, entering k into the rotations it is not
// in yet (at the back).
func (fq *fairQueue[T]) innerFor(k fairKey) *innerQueue[T] {
	if fq.inner == nil {
		fq.inner = map[string]*innerQueue[T]{}
	}
	iq, ok := fq.inner[k.outer]
	if !ok {
		iq = &innerQueue[T]{q: map[string][]T{}}
		fq.inner[k.outer] = iq
		fq.order = append(fq.order, k.outer)
	}
	if len(iq.q[k.inner]) == 0 {
		iq.order = append(iq.order, k.inner)
	}
	return iq
}

// pop returns the next item: the head of the first inner key of the first
// outer key; both then go to the back of their rotations.
func (fq *fairQueue[T]) pop() (T, bool) {
	var zero T
	if fq.n == 0 {
		return zero, false
	}
	o := fq.order[0]
	fq.order = fq.order[1:]
	iq := fq.inner[o]
	i := iq.order[0]
	iq.order = iq.order[1:]
	x := iq.q[i][0]
	iq.q[i] = iq.q[i][1:]
	if len(iq.q[i]) > 0 {
		iq.order = append(iq.order, i)
	} else {
		delete(iq.q, i)
	}
	if len(iq.order) > 0 {
		fq.order = append(fq.order, o)
	} else {
		delete(fq.inner, o)
	}
	fq.n--
	return x, true
}

// remove takes x out of the queue; false if it was not queued.
func (fq *fairQueue[T]) remove(x T) bool {
	for oi, o := range fq.order {
		iq := fq.inner[o]
		for ii, i := range iq.order {
			q := iq.q[i]
			for j, y := range q {
				if y != x {
					continue
				}
				iq.q[i] = append(q[:j:j], q[j+1:]...)
				if len(iq.q[i]) == 0 {
					delete(iq.q, i)
					iq.order = append(iq.order[:ii:ii], iq.order[ii+1:]...)
				}
				if len(iq.order) == 0 {
					delete(fq.inner, o)
					fq.order = append(fq.order[:oi:oi], fq.order[oi+1:]...)
				}
				fq.n--
				return true
			}
		}
	}
	return false
}

// drain removes and returns every item, in service order.
func (fq *fairQueue[T]) drain() []T {
	var out []T
	for x, ok := fq.pop(); ok; x, ok = fq.pop() {
		out = append(out, x)
	}
	return out
}

// serviceOrder lists the items in the order pop would return them, without
// changing the queue. O(items).
func (fq *fairQueue[T]) serviceOrder() []T {
	c := fairQueue[T]{order: append([]string(nil), fq.order...), inner: make(map[string]*innerQueue[T], len(fq.inner)), n: fq.n}
	for o, iq := range fq.inner {
		ci := &innerQueue[T]{order: append([]string(nil), iq.order...), q: make(map[string][]T, len(iq.q))}
		for i, q := range iq.q {
			ci.q[i] = q // pop reslices, never writes
		}
		c.inner[o] = ci
	}
	return c.drain()
}

// position is x's 1-based place in service order, 0 if it is not queued.
func (fq *fairQueue[T]) position(x T) int {
	for i, y := range fq.serviceOrder() {
		if y == x {
			return i + 1
		}
	}
	return 0
}
