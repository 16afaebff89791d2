package scheduler

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// PeerState is what a client knows about one peer, as of the peer's last
// beacon plus whatever the client itself placed there since (see Charge).
// The node fills it from gossip beacons; the fields are plain so that the
// mapping stays obvious. Zero values mean "not reported" where noted.
type PeerState struct {
	ID        string
	Models    []string
	FreeMemMB uint64
	Accepting bool

	// Slots is how many tasks the peer runs at once (≤ 0 is read as 1);
	// Busy is how many slots are in use and QueueLen how many tasks wait,
	// both as of Updated.
	Slots, Busy, QueueLen int
	// GPU names the peer's GPU, for people; placement does not read it.
	GPU string
	// QueueMax is how many tasks the peer's queue holds (≤ 0: unknown).
	// With Pending it tells a full peer before the peer must refuse.
	QueueMax int
	// Pending counts the tasks this client placed on the peer since the
	// beacon (see Charge); the node sets it to 0 when a beacon arrives.
	Pending int

	// ServiceMs is the recent mean service time per model at full clock, in
	// milliseconds; a missing or non-positive entry means DefaultServiceMs.
	// Place only reads it, so peers may share one map.
	ServiceMs map[string]float64

	// TempC is the current GPU temperature, SlowdownC the hardware slowdown
	// temperature and LimitC the owner's maximum (≤ SlowdownC). A peer that
	// reports neither limit (both ≤ 0) has no GPU telemetry: it is not
	// filtered on temperature and is ranked with UnknownHeadroomC.
	TempC, SlowdownC, LimitC float64

	// Throttled is set while clocks are reduced by heat; Speed is the clock
	// factor (1, or ≤ 0.5 while throttled; ≤ 0 is read as 1).
	Throttled bool
	Speed     float64

	// HeatPerTaskC is the peer's prediction of how much one more task would
	// raise its temperature over the task's run; ≤ 0 means not predicted and
	// DefaultHeatPerTaskC is used.
	HeatPerTaskC float64

	// RTTMs is the client's round-trip estimate to the peer; Updated is when
	// the beacon was issued.
	RTTMs   float64
	Updated time.Time
}

// View is a snapshot of the peers a client knows. Place does not modify it.
type View []PeerState

// Request is one task to place.
type Request struct {
	Model string
	MemMB uint64
	// Key is the task's identity (the TaskCID bytes); when set, the
	// rendezvous preference sends identical tasks to the same peer.
	Key []byte
	// Exclude lists peer IDs not to return, e.g. ones that already refused.
	Exclude map[string]bool
}

// Candidate is one feasible peer for a request.
type Candidate struct {
	ID string
	// Index is the peer's position in the View given to Place.
	Index int
	// PredictedMs is the predicted completion time: wait + service + RTT,
	// of which WaitMs is the wait before the task starts (a dispatcher can
	// hedge when a task has not started well after it).
	PredictedMs float64
	WaitMs      float64
	// HeadroomC is the peer's limit minus its predicted temperature after
	// this task (UnknownHeadroomC for a peer without telemetry).
	HeadroomC float64
	// Score is the ranking cost in milliseconds, PredictedMs inflated by the
	// thermal preference. Lower is better.
	Score float64
}

// Place returns every peer in v that can take r, best first.
//
// Feasibility filters, cheapest first: accepting, beacon age ≤ MaxStaleness,
// enough free memory, thermal headroom (TempC < limit − MinHeadroomC, so a
// peer at or over its limit is never returned), not excluded (a map lookup),
// serves the model (a scan of its model list).
//
// Ranking, for each feasible peer:
//
//	run      = service / speed
//	n        = Busy + QueueLen, drained by the beacon's age (AgeDrain), + Pending
//	wait     = max(0, n − Slots + 1) / Slots × run
//	Predicted = wait + run + RTT
//	Score    = (Predicted + QueuePenalty × wait) × (1 + HeadroomWeight × exp(−headroom / HeadroomScaleC))
//
// where service is the peer's ServiceMs for the model, speed its clock
// factor, halved again (SlowdownSpeed) when TempC + HeatPerTaskC would reach
// the slowdown temperature, and headroom = limit − (TempC + HeatPerTaskC).
// Ties go to the smaller ID, so the order does not depend on the order of v.
//
// Anti-herding: Choices candidates are drawn from the pool of the best TopK
// (cut to those within SampleSlack of the best score) and put first, best
// score first; everything else follows in score order. With a Key and
// Rendezvous on, the draw is the pool's Choices candidates with the highest
// RendezvousWeight, so identical tasks meet on one peer; otherwise it uses
// rng. No step adds a peer that failed a filter.
//
// rng may be nil, which disables the random draw; the same rng state gives
// the same answer. cfg should pass Validate; out-of-range values are clamped.
func Place(v View, r Request, now time.Time, rng *rand.Rand, cfg Config) []Candidate {
	return AppendPlace(nil, v, r, now, rng, cfg)
}

// AppendPlace is Place appending to dst, so a caller placing many tasks can
// reuse one buffer. The candidates are dst[len(dst):] of the result.
func AppendPlace(dst []Candidate, v View, r Request, now time.Time, rng *rand.Rand, cfg Config) []Candidate {
	base := len(dst)
	// time.Time.Sub checks for overflow through Add and cost a tenth of
	// Place; staleness is decided with Before, and ages of fresh beacons
	// (whose times are in UnixNano's range) by subtraction.
	at := clock{now: now.UnixNano(), oldest: now.Add(-cfg.MaxStaleness)}
	load := 0.0
	if cfg.AgeDrain {
		load = viewLoad(v, at)
	}
	for i := range v {
		if c, ok := assess(&v[i], &r, at, load, &cfg); ok {
			c.Index = i
			dst = append(dst, c)
		}
	}
	c := dst[base:]
	if len(c) == 0 {
		return dst
	}
	sortByScore(c)
	spread(c, r.Key, rng, &cfg)
	return dst
}

// sortByScore sorts c by (Score, ID). Sorting 48-byte candidates through a
// comparison function dominated Place's time, so it sorts packed uint64 keys
// instead: the top 44 bits of the score's IEEE bits (scores are ≥ 0, so the
// bits order like the numbers; 32 mantissa bits keep a relative precision
// of 2⁻³²) above a 20-bit index. An insertion pass with the exact order then
// fixes the rare neighbours the truncation left out of order. This made Place
// over 1,000 peers about 3× faster.
func sortByScore(c []Candidate) {
	const idxBits = 20
	if len(c) > 1<<idxBits {
		slices.SortFunc(c, byScore)
		return
	}
	keys := make([]uint64, 2*len(c))
	keys, tmp := keys[:len(c)], keys[len(c):]
	for i := range c {
		keys[i] = math.Float64bits(scoreKey(c[i].Score))>>idxBits<<idxBits | uint64(i)
	}
	radixSort(keys, tmp, idxBits)
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
		for j := i; j > 0 && byScore(c[j-1], c[j]) > 0; j-- {
			c[j-1], c[j] = c[j], c[j-1]
		}
	}
}

// radixSort sorts keys by their bits above skip: a least-significant-digit
// radix sort, 8 bits a pass, skipping passes where every key has the same
// digit (the sign and most of the exponent, usually). tmp is scratch of the
// same length. It is stable, so equal scores keep their index order.
func radixSort(keys, tmp []uint64, skip uint) {
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

func byScore(a, b Candidate) int {
	if c := cmp.Compare(scoreKey(a.Score), scoreKey(b.Score)); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// scoreKey orders a score that is not ≥ 0 (NaN, possible only with a bad
// Config) last.
func scoreKey(s float64) float64 {
	if !(s >= 0) {
		return math.Inf(1)
	}
	return s
}

// viewLoad is the mean number of tasks per slot over the fresh peers of v:
// what a peer is expected to hold once its beacon is too old to say.
func viewLoad(v View, at clock) float64 {
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

// room is how many more tasks p would take, counting this client's own
// placements since its beacon; -1 when p does not say how long its queue
// is.
func (p *PeerState) room() int {
	if p.QueueMax <= 0 {
		return -1
	}
	return max(0, max(p.Slots, 1)+p.QueueMax-p.Busy-p.QueueLen-p.Pending)
}

// full reports whether p has no room left for another task.
func (p *PeerState) full() bool { return p.room() == 0 }

// Available reports whether p, by its beacon and this client's placements
// since, would take another task now: it accepts work and is not full.
func (p *PeerState) Available() bool { return p.Accepting && !p.full() }

// clock is the time of one Place call: now in Unix nanoseconds, and the
// oldest beacon time that is not stale.
type clock struct {
	now    int64
	oldest time.Time
}

// assess applies the filters to p and, if it passes, scores it. load is
// the view's mean tasks per slot (see drained).
func assess(p *PeerState, r *Request, at clock, load float64, cfg *Config) (Candidate, bool) {
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
			speed *= clamp(cfg.SlowdownSpeed, 0.01, 1)
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
		n = drained(n, slots, age, run, load)
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
	return Candidate{
		ID:          p.ID,
		PredictedMs: pred,
		WaitMs:      wait,
		HeadroomC:   headroom,
		Score:       (pred + max(cfg.QueuePenalty, 0)*wait) * (1 + max(cfg.HeadroomWeight, 0)*penalty),
	}, true
}

// limit is the temperature the peer must stay under: the owner's limit, or
// the slowdown temperature when that is lower or the only one reported.
func (p *PeerState) limit() (float64, bool) {
	l, s := p.LimitC, p.SlowdownC
	switch {
	case l > 0 && s > 0:
		return min(l, s), true
	case l > 0:
		return l, true
	case s > 0:
		return s, true
	}
	// Both unset, or NaN: NaN compares false above, and a NaN limit must not
	// let a peer through as "no telemetry", so it is reported as a limit.
	if math.IsNaN(l) || math.IsNaN(s) {
		return math.NaN(), true
	}
	return 0, false
}

// drained is the expected number of tasks at a peer that had n when its
// beacon was issued, age ago. The peer finishes tasks (a slot's mean service
// time is run; a queue takes n/slots times longer) and, in a busy swarm,
// other clients send it new ones, so the estimate relaxes exponentially
// from n towards the swarm's mean, load tasks per slot: a long-silent peer
// is as busy as the average one, neither as busy as it was nor empty.
func drained(n float64, slots int, age time.Duration, run, load float64) float64 {
	if age <= 0 || !(run > 0) {
		return n
	}
	s := float64(slots)
	mean := load * s
	tau := run * max(1, n/s)
	return mean + (n-mean)*math.Exp(-float64(age.Milliseconds())/tau)
}

// Charge records on p that a task was just placed on it: a client
// calls it on its own copy of the view, so that the placements it made since
// the peer's last beacon count and it does not send the next task to the
// same peer believing it idle. The next beacon replaces p, and with it the
// charges.
func (p *PeerState) Charge() {
	p.Pending++
	if p.HeatPerTaskC > 0 {
		p.TempC += p.HeatPerTaskC
	}
}

// spread is the anti-herding sampler on c, which is sorted by score. The
// pool is the best TopK candidates, cut to those within SampleSlack of the
// best score; Choices of them are drawn and moved to the front, keeping
// score order within both parts. With a key (and Rendezvous on) the draw is
// the pool's Choices candidates with the highest rendezvous weight, so
// clients with similar views draw the same ones for one task; otherwise it
// is random from rng.
func spread(c []Candidate, key []byte, rng *rand.Rand, cfg *Config) {
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

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnv64(h uint64, b []byte) uint64 {
	for _, x := range b {
		h ^= uint64(x)
		h *= fnvPrime
	}
	return h
}

// KeyHash is the first half of the rendezvous weight: FNV-1a of the task key.
func KeyHash(key []byte) uint64 { return fnv64(fnvOffset, key) }

// RendezvousWeight is the highest-random-weight hash of a task key (hashed
// with KeyHash) and a peer ID. It is stable across processes and versions
// of Go, so every client ranks peers for one key the same way.
func RendezvousWeight(keyHash uint64, id string) uint64 {
	h := keyHash
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= fnvPrime
	}
	// splitmix64 finaliser: FNV alone leaves the high bits poorly mixed for
	// inputs that differ only in their last bytes.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

func clamp(x, lo, hi float64) float64 {
	if !(x >= lo) {
		return lo
	}
	return min(x, hi)
}
