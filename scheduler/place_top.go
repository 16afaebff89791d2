package scheduler

import (
	"cmp"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"time"
)

// AppendPlaceTop is AppendPlace cut to the best k: it appends the first
// min(k, feasible) candidates AppendPlace would append, in the same order
// and with the same fields, drawing from rng exactly as AppendPlace does.
// A dispatcher that offers the task to the first candidate, and places
// again with the refusers in Exclude when that one refuses, needs only
// k = 1. Like AppendPlace, it is safe for concurrent use and does not
// modify v.
//
// The filters and scores are AppendPlace's; what it saves is the order of
// the rest. Only the sampling pool (the best TopK within SampleSlack of the
// best) and the first k need an order, so it selects them instead of
// sorting every feasible peer, and for a keyed request that wants no more
// than the Choices drawn it orders none: the pool is the peers within
// SampleSlack of the best (when TopK does not cut it), the draw is the
// pool's highest rendezvous weights, and only the drawn are ordered.
func AppendPlaceTop(dst []Candidate, v View, r Request, now time.Time, rng *rand.Rand, cfg Config, k int) []Candidate {
	if k <= 0 {
		return dst
	}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	// Without sort's keys: the keyed draw, which most calls make, needs
	// none, and those that sort make them.
	cand, best, plain := sc.score(v, &r, now, &cfg, false)
	n := len(cand)
	if n == 0 {
		return dst
	}
	if k >= n { // all of them: AppendPlace's way
		base := len(dst)
		dst = slices.Grow(dst, n)[:base+n]
		c := dst[base:]
		sc.makeKeys(cand)
		sc.sort(cand, c)
		spread(v, c, r.Key, rng, &cfg)
		return dst
	}
	// spread's pool is the first top of the order, cut to those within lim
	// of the best. When every score is a number ≥ 0 (plain), the cut keeps
	// exactly those of the first top whose score is ≤ lim, which are a
	// prefix of the order and hold at least the best; a NaN score or limit
	// (a Config that does not validate) leaves spread to decide.
	top := min(max(cfg.TopK, 1), maxTopK, n)
	lim := best * (1 + max(cfg.SampleSlack, 0))
	plain = plain && !math.IsNaN(lim)
	d := min(max(cfg.Choices, 1), maxChoices)
	m := top // how much of the order spread reads
	if plain {
		// The pool, in view order; more than top means TopK cuts it.
		if cap(sc.pool) < maxTopK {
			sc.pool = make([]int32, maxTopK)
		}
		pool, np := sc.pool[:maxTopK], 0
		for i := range cand {
			if cand[i].Score <= lim {
				if np == top {
					np++
					break
				}
				pool[np] = int32(i)
				np++
			}
		}
		if np <= top && d < np && k <= d && len(r.Key) > 0 && cfg.Rendezvous {
			return keyedDraw(dst, v, cand, pool[:np], d, k, KeyHash(r.Key))
		}
		m = min(m, np)
	}
	sc.makeKeys(cand)
	c := sc.best(cand, max(m, k))
	spread(v, c, r.Key, rng, &cfg)
	return append(dst, c[:k]...)
}

// keyedDraw is spread's keyed draw from the pool of candidates c[pool[i]],
// peers of v, and appends the first k ≤ d drawn to dst: the d pool members
// of highest RendezvousWeight (ties to the smaller ID, then to the earlier
// in Place's order), in Place's order. The draw does not depend on the
// pool's order, so the pool is never sorted.
func keyedDraw(dst []Candidate, v View, c []Candidate, pool []int32, d, k int, kh uint64) []Candidate {
	var at [maxTopK]int
	for i, j := range pool {
		at[i] = c[j].Index
	}
	var w [maxTopK]uint64
	weigh(w[:len(pool)], at[:len(pool)], v, kh)
	// Of two pool members of equal weight, before reports whether i is
	// drawn before j.
	before := func(i, j int) bool {
		a, b := &c[pool[i]], &c[pool[j]]
		if a.ID != b.ID {
			return a.ID < b.ID
		}
		return byRank(*a, *b) < 0
	}
	drawn := heaviest(w[:len(pool)], d, before)
	var picked [maxChoices]Candidate
	for i := range d {
		picked[i] = c[pool[drawn[i]]]
	}
	p := picked[:d]
	slices.SortFunc(p, byRank)
	return append(dst, p[:k]...)
}

// byRank is Place's order: by score, then ID, then position in the view.
func byRank(a, b Candidate) int {
	if c := byScore(a, b); c != 0 {
		return c
	}
	return cmp.Compare(a.Index, b.Index)
}

// best returns the first m of w, the candidates score made, in Place's
// order, (Score, ID, Index), in sc.out; their keys must be made
// (makeKeys). It selects before it sorts: the keys are sort's, a
// histogram of their top 8 bits finds the bucket that holds the m-th, and
// only the keys up to that bucket are radix-sorted and gathered, so a few
// hundred of a thousand are sorted and moved.
func (sc *scratch) best(w []Candidate, m int) []Candidate {
	if cap(sc.out) < len(w) {
		sc.out = make([]Candidate, len(w))
	}
	out := sc.out[:len(w)]
	if m >= len(w) || uint64(len(w)) > math.MaxUint32 {
		sc.sort(w, out)
		return out[:min(m, len(w))]
	}
	keys, tmp := sc.keys[:len(w)], sc.tmp[:len(w)]
	lo, shift, span := sc.cut()
	// A bucket is a value of the top 8 bits of the cut scores' span.
	bucket := max(0, 64-bits.LeadingZeros64(span)-8)
	var count [256]int
	for i := range keys {
		c := (keys[i] - lo) >> shift
		keys[i] = c<<32 | uint64(i)
		count[c>>bucket]++
	}
	b, below := 0, 0
	for below+count[b] < m {
		below += count[b]
		b++
	}
	// The keys of buckets ≤ b, in index order so that the stable radix
	// sort keeps equal cut scores in index order, as sort does.
	end := uint64(b+1) << bucket << 32
	sel := tmp[:0]
	for _, k := range keys {
		if k < end {
			sel = append(sel, k)
		}
	}
	radixSort24(sel, keys[:len(sel)])
	// A run of equal cut scores is in one bucket, so the run that holds
	// the m-th is whole in sel; it is gathered whole and ordered.
	e := m
	for e < len(sel) && sel[e]>>32 == sel[m-1]>>32 {
		e++
	}
	for i, k := range sel[:e] {
		out[i] = w[uint32(k)]
	}
	orderRuns(out[:e], sel[:e])
	return out[:m]
}
