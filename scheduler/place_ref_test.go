package scheduler

// placeReference is Place as it was before issue 14's rewrite (full radix
// sort of every candidate, rendezvous weights one at a time, math.Exp):
// kept as the oracle the property test compares Place with, and as the
// baseline BenchmarkPlaceReference1000 times in the same run.

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func placeReference(v View, r Request, now time.Time, rng *rand.Rand, cfg Config) []Candidate {
	return refAppendPlace(nil, v, r, now, rng, cfg)
}

// refAppendPlace is Place appending to dst, so a caller placing many tasks can
// reuse one buffer. The candidates are dst[len(dst):] of the result.
func refAppendPlace(dst []Candidate, v View, r Request, now time.Time, rng *rand.Rand, cfg Config) []Candidate {
	base := len(dst)
	// time.Time.Sub checks for overflow through Add and cost a tenth of
	// Place; staleness is decided with Before, and ages of fresh beacons
	// (whose times are in UnixNano's range) by subtraction.
	at := refClock{now: now.UnixNano(), oldest: now.Add(-cfg.MaxStaleness)}
	load := 0.0
	if cfg.AgeDrain {
		load = refViewLoad(v, at)
	}
	for i := range v {
		if c, ok := refAssess(&v[i], &r, at, load, &cfg); ok {
			c.Index = i
			dst = append(dst, c)
		}
	}
	c := dst[base:]
	if len(c) == 0 {
		return dst
	}
	refSortByScore(c)
	refSpread(c, r.Key, rng, &cfg)
	return dst
}

// refSortByScore sorts c by (Score, ID). Sorting 48-byte candidates through a
// comparison function dominated Place's time, so it sorts packed uint64 keys
// instead: the top 44 bits of the score's IEEE bits (scores are ≥ 0, so the
// bits order like the numbers; 32 mantissa bits keep a relative precision
// of 2⁻³²) above a 20-bit index. An insertion pass with the exact order then
// fixes the rare neighbours the truncation left out of order. This made Place
// over 1,000 peers about 3× faster.
func refSortByScore(c []Candidate) {
	const idxBits = 20
	if len(c) > 1<<idxBits {
		slices.SortFunc(c, refByScore)
		return
	}
	keys := make([]uint64, 2*len(c))
	keys, tmp := keys[:len(c)], keys[len(c):]
	for i := range c {
		keys[i] = math.Float64bits(refScoreKey(c[i].Score))>>idxBits<<idxBits | uint64(i)
	}
	refRadixSort(keys, tmp, idxBits)
	// Apply the permutation in place, following cycles; a done slot is
	// marked with done.
	const mask, done = 1<<idxBits - 1, ^uint64(0)
	for i := range keys {
		if keys[i] == done {
			continue
		}
		tmp, j := c[i], i
		for {
			k := int(keys[j] & mask)
			keys[j] = done
			if k == i {
				c[j] = tmp
				break
			}
			c[j], j = c[k], k
		}
	}
	for i := 1; i < len(c); i++ {
		for j := i; j > 0 && refByScore(c[j-1], c[j]) > 0; j-- {
			c[j-1], c[j] = c[j], c[j-1]
		}
	}
}

// refRadixSort sorts keys by their bits above skip: a least-significant-digit
// radix sort, 8 bits a pass, skipping passes where every key has the same
// digit (the sign and most of the exponent, usually). tmp is scratch of the
// same length. It is stable, so equal scores keep their index order.
func refRadixSort(keys, tmp []uint64, skip uint) {
	if len(keys) < 2 {
		return
	}
	src, dst := keys, tmp
	for shift := skip; shift < 64; shift += 8 {
		var count [256]int
		for _, k := range src {
			count[byte(k>>shift)]++
		}
		if count[byte(src[0]>>shift)] == len(src) {
			continue
		}
		sum := 0
		for i, n := range count {
			count[i] = sum
			sum += n
		}
		for _, k := range src {
			d := byte(k >> shift)
			dst[count[d]] = k
			count[d]++
		}
		src, dst = dst, src
	}
	if &src[0] != &keys[0] {
		copy(keys, src)
	}
}

func refByScore(a, b Candidate) int {
	if c := cmp.Compare(refScoreKey(a.Score), refScoreKey(b.Score)); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// refScoreKey orders a score that is not ≥ 0 (NaN, possible only with a bad
// Config) last.
func refScoreKey(s float64) float64 {
	if !(s >= 0) {
		return math.Inf(1)
	}
	return s
}

// refViewLoad is the mean number of tasks per slot over the fresh peers of v:
// what a peer is expected to hold once its beacon is too old to say.
func refViewLoad(v View, at refClock) float64 {
	tasks, slots := 0, 0
	for i := range v {
		p := &v[i]
		if !p.Updated.Before(at.oldest) {
			tasks += max(p.Busy, 0) + max(p.QueueLen, 0)
			slots += max(p.Slots, 1)
		}
	}
	if slots == 0 {
		return 0
	}
	return float64(tasks) / float64(slots)
}

// assess applies the filters to p and, if it passes, scores it. load is
// the view's mean tasks per slot (see drained).
func refAssess(p *PeerState, r *Request, at refClock, load float64, cfg *Config) (Candidate, bool) {
	// Filters, cheapest first: field compares, then a map lookup, then a
	// scan of the model list.
	if !p.Accepting || p.full() {
		return Candidate{}, false
	}
	if p.Updated.Before(at.oldest) {
		return Candidate{}, false
	}
	age := time.Duration(at.now - p.Updated.UnixNano())
	if p.FreeMemMB < r.MemMB {
		return Candidate{}, false
	}
	limit, telemetry := p.limit()
	// Written so that a NaN temperature fails: a peer whose temperature
	// cannot be read cannot show that it is under its limit.
	if telemetry && !(p.TempC < limit-cfg.MinHeadroomC) {
		return Candidate{}, false
	}
	if r.Exclude[p.ID] {
		return Candidate{}, false
	}
	if !(p.Distrust < 1) {
		return Candidate{}, false
	}
	if !slices.Contains(p.Models, r.Model) {
		return Candidate{}, false
	}

	// Ranking.
	slots := max(p.Slots, 1)
	svc := p.ServiceMs[r.Model]
	if !(svc > 0) || math.IsInf(svc, 1) {
		svc = cfg.DefaultServiceMs
	}
	speed := p.Speed
	if !(speed > 0) || speed > 1 {
		speed = 1
	}
	headroom := cfg.UnknownHeadroomC
	if telemetry {
		heat := p.HeatPerTaskC
		if !(heat > 0) || math.IsInf(heat, 1) {
			heat = cfg.DefaultHeatPerTaskC
		}
		predicted := p.TempC + heat
		if p.SlowdownC > 0 && predicted >= p.SlowdownC && !p.Throttled {
			speed *= refClamp(cfg.SlowdownSpeed, 0.01, 1)
		}
		headroom = limit - predicted
	}
	rtt := p.RTTMs
	if !(rtt > 0) || math.IsInf(rtt, 1) {
		rtt = 0
	}
	run := svc / speed
	// Tasks ahead of ours: what the beacon reported, aged (see drained),
	// plus what this client placed there since.
	n := float64(max(p.Busy, 0) + max(p.QueueLen, 0))
	if cfg.AgeDrain {
		n = refDrained(n, slots, age, run, load)
	}
	n += float64(max(p.Pending, 0))
	ahead := max(n-float64(slots)+1, 0)
	wait := ahead / float64(slots) * run
	pred := wait + run + rtt
	scale := cfg.HeadroomScaleC
	if !(scale > 0) {
		scale = 1
	}
	// The exponent is capped so a peer far past its predicted limit gets a
	// huge but finite score and the order stays total.
	penalty := math.Exp(min(-headroom/scale, 60))
	score := (pred + max(cfg.QueuePenalty, 0)*wait) * (1 + max(cfg.HeadroomWeight, 0)*penalty)
	if p.Distrust > 0 {
		score *= 1 + max(cfg.TrustWeight, 0)*p.Distrust
	}
	return Candidate{
		ID:          p.ID,
		PredictedMs: pred,
		WaitMs:      wait,
		HeadroomC:   headroom,
		Score:       score,
	}, true
}

// drained is the expected number of tasks at a peer that had n when its
// beacon was issued, age ago. The peer finishes tasks (a slot's mean service
// time is run; a queue takes n/slots times longer) and, in a busy swarm,
// other clients send it new ones, so the estimate relaxes exponentially
// from n towards the swarm's mean, load tasks per slot: a long-silent peer
// is as busy as the average one, neither as busy as it was nor empty.
func refDrained(n float64, slots int, age time.Duration, run, load float64) float64 {
	if age <= 0 || !(run > 0) {
		return n
	}
	s := float64(slots)
	mean := load * s
	tau := run * max(1, n/s)
	return mean + (n-mean)*math.Exp(-float64(age.Milliseconds())/tau)
}

// spread is the anti-herding sampler on c, which is sorted by score. The
// pool is the best TopK candidates, cut to those within SampleSlack of the
// best score; Choices of them are drawn and moved to the front, keeping
// score order within both parts. With a key (and Rendezvous on) the draw is
// the pool's Choices candidates with the highest rendezvous weight, so
// clients with similar views draw the same ones for one task; otherwise it
// is random from rng.
func refSpread(c []Candidate, key []byte, rng *rand.Rand, cfg *Config) {
	k := min(max(cfg.TopK, 1), maxTopK, len(c))
	if lim := c[0].Score * (1 + max(cfg.SampleSlack, 0)); !math.IsNaN(lim) {
		for k > 1 && c[k-1].Score > lim {
			k--
		}
	}
	d := min(max(cfg.Choices, 1), maxChoices)
	keyed := len(key) > 0 && cfg.Rendezvous
	if d >= k || (!keyed && rng == nil) {
		return
	}
	var chosen [maxTopK]bool
	if keyed {
		kh := KeyHash(key)
		var w [maxTopK]uint64
		for i := range k {
			w[i] = RendezvousWeight(kh, c[i].ID)
		}
		for range d {
			m := -1
			for i := range k {
				if !chosen[i] && (m < 0 || w[i] > w[m] || (w[i] == w[m] && c[i].ID < c[m].ID)) {
					m = i
				}
			}
			chosen[m] = true
		}
	} else {
		var idx [maxTopK]uint16
		for i := range k {
			idx[i] = uint16(i)
		}
		for i := range d { // partial Fisher–Yates: the first d of a random permutation
			j := i + rng.IntN(k-i)
			idx[i], idx[j] = idx[j], idx[i]
			chosen[idx[i]] = true
		}
	}
	// Stable partition of c[:k]: chosen first.
	var picked [maxChoices]Candidate
	n := 0
	for i := range k {
		if chosen[i] {
			picked[n] = c[i]
			n++
		}
	}
	w := k - 1
	for i := k - 1; i >= 0; i-- {
		if !chosen[i] {
			c[w] = c[i]
			w--
		}
	}
	copy(c, picked[:n])
}

func refClamp(x, lo, hi float64) float64 {
	if !(x >= lo) {
		return lo
	}
	return min(x, hi)
}

type refClock struct {
	now    int64
	oldest time.Time
}

// TestPlaceMatchesReference: on random views, requests and settings, Place
// returns what placeReference returns, the same candidates in the same
// order with the same predictions, from the same random stream.
func TestPlaceMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 14))
	for iter := range 800 {
		n := rng.IntN(300)
		if iter%20 == 0 {
			n = 1000 + rng.IntN(200) // past the pool and the sampler's arrays
		}
		v := randomView(rng, n, t0)
		r := randomRequest(rng, v)
		cfg := randomConfig(rng)
		if iter%3 == 0 {
			cfg = DefaultConfig()
		}
		seed := rng.Uint64()
		got := Place(v, r, t0, rand.New(rand.NewPCG(seed, 1)), cfg)
		want := placeReference(v, r, t0, rand.New(rand.NewPCG(seed, 1)), cfg)
		if len(got) != len(want) {
			t.Fatalf("iteration %d: %d candidates, reference %d", iter, len(got), len(want))
		}
		for i := range got {
			if !sameCandidate(got[i], want[i]) {
				t.Fatalf("iteration %d (n=%d, cfg %+v): candidate %d is %+v, reference %+v", iter, n, cfg, i, got[i], want[i])
			}
		}
	}
	// The realistic view, many keys: the keyed draw over a full pool.
	v := BenchView(1000, 7)
	for k := range 100 {
		r := BenchRequest(uint64(k))
		got := Place(v, r, BenchNow(), nil, DefaultConfig())
		want := placeReference(v, r, BenchNow(), nil, DefaultConfig())
		if !slices.EqualFunc(got, want, sameCandidate) {
			t.Fatalf("bench view, key %d: %v, reference %v", k, ids(got[:8]), ids(want[:8]))
		}
	}
}

// sameCandidate compares two candidates, the floating-point fields to 1e-12
// of their size (the rewrite may round differently in the last bit).
func sameCandidate(a, b Candidate) bool {
	near := func(x, y float64) bool {
		return x == y || math.Abs(x-y) <= 1e-12*max(math.Abs(x), math.Abs(y))
	}
	return a.ID == b.ID && a.Index == b.Index && near(a.PredictedMs, b.PredictedMs) &&
		near(a.WaitMs, b.WaitMs) && near(a.HeadroomC, b.HeadroomC) && near(a.Score, b.Score)
}

func BenchmarkPlaceReference1000(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	cpuLoop(b, func() { placeReference(v, r, now, rng, cfg) })
}
