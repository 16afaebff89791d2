package scheduler

import (
	"cmp"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// PeerState is what a client knows about one peer, as of the peer's last
// beacon plus whatever the client itself placed there since (see Charge).
// The node fills it from gossip beacons, and prepares it (Prepare); the
// fields are plain so that the mapping stays obvious. Zero values mean
// "not reported" where noted.
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
	// Reach is the peer's reachability as its beacon says (public, private
	// or empty), for people; placement reads only RTTMs, into which the
	// node folds the cost of a relayed link.
	Reach string
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

	// Distrust is the client's doubt about the peer's results (node/trust):
	// 0 for a peer with a clean record, up to 1 for one whose results are
	// still being checked, 1 or more for one caught returning a wrong result,
	// which Place never returns. A doubted peer's score is raised by
	// TrustWeight × Distrust, so a peer with a record wins a close call.
	Distrust float64

	// prep is what Prepare made, if it was called.
	prep prepared
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
// Place is safe for concurrent use (its scratch space is pooled) and does
// not modify v. Peers prepared by Prepare give the same answer sooner.
func Place(v View, r Request, now time.Time, rng *rand.Rand, cfg Config) []Candidate {
	return AppendPlace(nil, v, r, now, rng, cfg)
}

// AppendPlace is Place appending to dst, so a caller placing many tasks can
// reuse one buffer. The candidates are dst[len(dst):] of the result.
func AppendPlace(dst []Candidate, v View, r Request, now time.Time, rng *rand.Rand, cfg Config) []Candidate {
	// score filters and scores the view; a sort of every feasible peer
	// then writes the result.
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	cand, _, _ := sc.score(v, &r, now, &cfg, true)
	n := len(cand)
	if n == 0 {
		return dst
	}
	base := len(dst)
	dst = slices.Grow(dst, n)[:base+n]
	c := dst[base:]
	sc.sort(cand, c)
	spread(v, c, r.Key, rng, &cfg)
	return dst
}

// score runs the filters over v and scores every peer that passes them,
// into sc's candidates, which it returns in view order, and, without
// keys, the smallest score and whether every score is a number ≥ 0 (it
// is, unless cfg does not validate): AppendPlace, which asks for keys,
// uses neither, and they were a seventh of the scores' loop. One pass
// over the view (scan) filters, works out the score's terms and
// exponents and sums the view's load: the view is the largest thing
// Place touches, and is read once. Short loops over the feasible peers
// then take the exponentials and the scores. With keys, the last loop
// also makes sort's keys (see makeKeys) while each score is in a
// register: a pass of their own over the candidates cost more.
func (sc *scratch) score(v View, r *Request, now time.Time, cfg *Config, keys bool) (cand []Candidate, best float64, plain bool) {
	s := newScorer(r, now, cfg)
	cand, terms, ex := sc.grow(len(v))
	// By candidate, the exponent of the drain; the second part of ex
	// gathers the thermal terms' exponents where Prepare did not make
	// them (see terms.unprepared).
	drain := ex[:len(v)]
	n := s.scan(v, cand, terms, drain)
	nm := s.unprepared
	if n == 0 {
		return nil, 0, false
	}
	cand, terms, drain = cand[:n], terms[:n], drain[:n]
	expAll(drain)
	if nm > 0 { // charged since their beacon, or never prepared
		miss, x := sc.miss[:0], ex[len(v):len(v)+nm]
		for i := range terms {
			if terms[i].unprepared {
				x[len(miss)] = thermalExponent(cand[i].HeadroomC, s.scale)
				miss = append(miss, int32(i))
			}
		}
		expAll(x)
		for j, i := range miss {
			terms[i].thermal = x[j]
		}
	}
	load := s.load()
	best, plain = math.Inf(1), true
	lo, hi := uint64(math.MaxUint64), uint64(0)
	// sc.keys in a variable: the stores to the candidates might change
	// sc for all the compiler knows, so it read sc.keys again for each.
	sortKeys := sc.keys[:len(cand)]
	for i := range cand {
		// The prediction and the score. Tasks ahead of ours: what the
		// beacon reported, aged (see drainExponent), plus what this client
		// placed there since.
		c, t := &cand[i], &terms[i]
		n := t.tasks
		if t.drain {
			mean := load * t.slots
			n = mean + (n-mean)*drain[i]
		}
		n += t.pending
		// Divided even by one slot, exactly: see drainExponent.
		ahead := max(n-t.slots+1, 0) / t.slots
		wait := ahead * t.run
		pred := wait + t.run + t.rtt
		score := (pred + s.queuePenalty*wait) * (1 + s.headroomWeight*t.thermal)
		if t.distrust > 0 {
			score *= 1 + s.trustWeight*t.distrust
		}
		c.PredictedMs, c.WaitMs, c.Score = pred, wait, score
		// The same for every candidate: a branch always predicted.
		if keys {
			k := math.Float64bits(scoreKey(score)) >> 32
			sortKeys[i] = k
			lo, hi = min(lo, k), max(hi, k)
		} else {
			// Unlike min, < skips a NaN score; it makes plain false anyway.
			if score < best {
				best = score
			}
			if !(score >= 0) {
				plain = false
			}
		}
	}
	sc.lo, sc.hi = lo, hi
	return cand, best, plain
}

// scratch is one Place call's working memory, kept in scratchPool between
// calls so that Place allocates only its result.
type scratch struct {
	cand      []Candidate
	terms     []terms
	ex        []float64 // exponents, then their exponentials (see score)
	miss      []int32
	keys, tmp []uint64
	// lo and hi are the smallest and largest of keys, as score or
	// makeKeys made them (see cut).
	lo, hi uint64
	// AppendPlaceTop's: its sampling pool, and its best candidates in
	// order before they are appended. They are grown when it needs them,
	// so that AppendPlace's scratch stays as small as it was.
	pool []int32
	out  []Candidate
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func (sc *scratch) grow(n int) ([]Candidate, []terms, []float64) {
	if cap(sc.cand) < n {
		sc.cand, sc.terms, sc.ex = make([]Candidate, n), make([]terms, n), make([]float64, 2*n)
		sc.miss, sc.keys, sc.tmp = make([]int32, n), make([]uint64, n), make([]uint64, n)
	}
	return sc.cand[:n], sc.terms[:n], sc.ex[:2*n]
}

// terms is what scan worked out for one feasible peer for the last loop of
// score, which completes its candidate once the view's load is known. It is
// kept apart from the candidates so that the sort moves only those.
type terms struct {
	// tasks is Busy + QueueLen, pending is Pending and slots is Slots (≥ 1),
	// as floats.
	tasks, pending, slots float64
	// run is the service time over the speed.
	run, rtt float64
	// distrust is the peer's Distrust (< 1), which only a positive one
	// raises the score by: a negative one is left as it is, not clamped.
	distrust float64
	// thermal is the thermal preference's exponential: Prepare's, or,
	// where unprepared, made by score after scan. It is here, not in a
	// slice of its own, because scan keeps each slice it writes in
	// registers, and one more made it save and reload others.
	thermal float64
	// drain: the beacon's tasks are aged (see drainExponent).
	drain bool
	// unprepared: Prepare did not make the thermal term. scan leaves it
	// to score, which takes those exponentials in one call of expAll;
	// deciding in scan, with the exponent and the index kept aside, cost
	// scan registers.
	unprepared bool
}

// sort writes w, the candidates score made, into c ordered by (Score,
// ID). Sorting 56-byte candidates through a comparison function dominated
// Place's time, so it sorts packed uint64 keys instead, then gathers: the
// top 32 bits of the score's IEEE bits (scores are ≥ 0, so the bits order
// like the numbers; a relative precision of 2⁻²⁰), less the smallest
// score's and cut to at most 24 significant bits (coarser only when the
// scores span more than 16 octaves), above a 32-bit index, by a radix sort
// of at most three passes. Candidates whose cut scores differ are then in
// their exact order; the rare runs of equal cut scores are put in theirs
// by byScore, stably, so that the order is (Score, ID, Index) whatever the
// run's length; the unsorted draw of AppendPlaceTop relies on that for
// peers that share an ID.
//
// The keys' top 32 bits are sc.keys, made by score (or makeKeys). The loop
// that cuts them also counts their digits, and the gather notes whether
// two neighbours have the same cut score, so that runs are looked for only
// then: the counts and the search for runs were each a pass of their own.
func (sc *scratch) sort(w, c []Candidate) {
	if uint64(len(w)) > math.MaxUint32 {
		copy(c, w)
		slices.SortFunc(c, byScore)
		return
	}
	keys, tmp := sc.keys[:len(w)], sc.tmp[:len(w)]
	lo, shift, _ := sc.cut()
	var count [3][256]int
	for i, k := range keys {
		k = (k - lo) >> shift
		keys[i] = k<<32 | uint64(i)
		count[0][byte(k)]++
		count[1][byte(k>>8)]++
		count[2][byte(k>>16)]++
	}
	keys = radixPasses(keys, tmp, &count)
	// A cut score is below 2²⁴, so no key's top half equals prev's.
	prev, ties := uint64(math.MaxUint64), 0
	for i, k := range keys {
		c[i] = w[uint32(k)]
		ties |= b2i(k>>32 == prev>>32)
		prev = k
	}
	if ties != 0 {
		orderRuns(c, keys)
	}
}

// makeKeys sets sc.keys[i] to the top 32 bits of w[i]'s score key, and
// sc.lo and sc.hi to the smallest and largest, for w, the candidates score
// made without them.
func (sc *scratch) makeKeys(w []Candidate) {
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for i := range w {
		k := math.Float64bits(scoreKey(w[i].Score)) >> 32
		sc.keys[i] = k
		lo, hi = min(lo, k), max(hi, k)
	}
	sc.lo, sc.hi = lo, hi
}

// cut returns the smallest key in sc.keys, the shift that cuts their span
// (hi − lo) to at most 24 significant bits, and that cut span: sort's and
// best's keys are (key − lo) >> shift.
func (sc *scratch) cut() (lo uint64, shift int, span uint64) {
	lo = sc.lo
	shift = max(0, 64-bits.LeadingZeros64(sc.hi-lo)-24)
	return lo, shift, (sc.hi - lo) >> shift
}

// b2i is 1 for true and 0 for false. The compiler makes it a flag test and
// a move, without a branch.
func b2i(b bool) int {
	var i int
	if b {
		i = 1
	}
	return i
}

// orderRuns puts in order the runs of c whose sort keys (cut scores, in
// keys' top bits) are equal.
func orderRuns(c []Candidate, keys []uint64) {
	for i := 0; i < len(c); {
		j := i + 1
		for j < len(c) && keys[j]>>32 == keys[i]>>32 {
			j++
		}
		if j-i > 1 {
			sortRun(c[i:j])
		}
		i = j
	}
}

// sortRun sorts c by byScore, stably: equal scores and IDs keep their
// order.
func sortRun(c []Candidate) {
	if len(c) <= 8 {
		insertionSort(c)
	} else {
		slices.SortStableFunc(c, byScore)
	}
}

func insertionSort(c []Candidate) {
	for i := 1; i < len(c); i++ {
		for j := i; j > 0 && byScore(c[j-1], c[j]) > 0; j-- {
			c[j-1], c[j] = c[j], c[j-1]
		}
	}
}

// radixSort24 sorts keys by bits 32 to 55: a least-significant-digit radix
// sort, 8 bits a pass, with the three digits' counts taken in one read and
// passes skipped where every key has the same digit. tmp is scratch of the
// same length. It is stable, so equal keys keep their index order.
func radixSort24(keys, tmp []uint64) {
	if len(keys) < 2 {
		return
	}
	var count [3][256]int
	for _, k := range keys {
		count[0][byte(k>>32)]++
		count[1][byte(k>>40)]++
		count[2][byte(k>>48)]++
	}
	if s := radixPasses(keys, tmp, &count); &s[0] != &keys[0] {
		copy(keys, s)
	}
}

// radixPasses is radixSort24 once the digits of keys are counted in
// count, but leaves the keys in order in keys or in tmp, and returns
// which: sort reads them where they are.
func radixPasses(keys, tmp []uint64, count *[3][256]int) []uint64 {
	if len(keys) < 2 {
		return keys
	}
	src, dst := keys, tmp[:len(keys)]
	if radixPass(dst, src, &count[0], 32) {
		src, dst = dst, src
	}
	if radixPass(dst, src, &count[1], 40) {
		src, dst = dst, src
	}
	if radixPass(dst, src, &count[2], 48) {
		src = dst
	}
	return src
}

// radixPass moves src into dst stably ordered by the digit at shift, whose
// counts are cnt, and reports whether it did: not when every key has the
// same digit. It is inlined with shift a constant, which leaves the
// register that a variable shift takes to the loop: without it the loop
// kept its key on the stack.
func radixPass(dst, src []uint64, cnt *[256]int, shift uint) bool {
	if cnt[byte(src[0]>>shift)] == len(src) {
		return false
	}
	sum := 0
	for i, n := range cnt {
		cnt[i] = sum
		sum += n
	}
	for _, k := range src {
		b := byte(k >> shift)
		dst[cnt[b]] = k
		cnt[b]++
	}
	return true
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

// Prepare makes, once per beacon, what placement would otherwise work
// out from p's beacon at every placement: the service time of each model
// (a map lookup per peer was a sixth of Place), a table that makes the
// ID's rendezvous weight for any key a few multiplications (hashing the
// pool's IDs was a tenth), and the thermal preference's exponential under
// cfg (nil: DefaultConfig), which changes only with a beacon or a Charge.
// Place returns the same for a prepared PeerState as for one that is not,
// to the bit, only sooner.
//
// Call it once the beacon's fields are set, and again after changing
// Models or ServiceMs. A copy of p keeps what Prepare made. Place reads
// the fields instead when p has another ID or Models slice than Prepare
// saw, and works the thermal term out when p's headroom or the Config's
// HeadroomScaleC is not the one Prepare saw (after a Charge, or under
// another Config); it cannot tell that ServiceMs was changed. prev, when
// not nil, is the peer's previous state, whose ID table is reused for the
// same ID: making one costs some 4 µs.
func (p *PeerState) Prepare(prev *PeerState, cfg *Config) {
	if cfg == nil {
		d := DefaultConfig()
		cfg = &d
	}
	var rdv *idHash
	if prev != nil && prev.prep.id == p.ID {
		rdv = prev.prep.rdv
	}
	if rdv == nil {
		rdv = newIDHash(p.ID)
	}
	q := prepared{rdv: rdv, id: p.ID}
	if len(p.Models) > 0 {
		q.svc, q.models = make([]modelService, len(p.Models)), &p.Models[0]
		for i, m := range p.Models {
			lo, hi := ends(m)
			q.svc[i] = modelService{model: m, lo: lo, hi: hi, ms: p.ServiceMs[m]}
		}
	}
	// The headroom and the scale as scan works them out.
	headroom, scale := cfg.UnknownHeadroomC, cfg.HeadroomScaleC
	if !(scale > 0) {
		scale = 1
	}
	if limit, telemetry := p.limit(); telemetry {
		headroom = limit - p.predictedTemp(cfg.DefaultHeatPerTaskC)
	}
	q.headroom, q.scale = math.Float64bits(headroom), math.Float64bits(scale)
	q.thermal = fastExp(thermalExponent(headroom, scale))
	p.prep = q
}

// prepared is what Prepare made for a PeerState. Copies of the PeerState
// share its slice and table, so they are not modified once made.
type prepared struct {
	// svc is Models with the ServiceMs of each, and models &Models[0] as
	// it was: a PeerState given another Models slice is read field by
	// field.
	svc    []modelService
	models *string
	// rdv is the rendezvous table of the ID id (nil when the ID has a byte
	// ≥ 0x80); Place checks that the PeerState still has that ID, which
	// for the same string is a pointer compare.
	rdv *idHash
	id  string
	// thermal is exp(thermalExponent(headroom, scale)), where headroom and
	// scale are these bits: checking them keeps it right whatever changed
	// since. No scale scan uses has the bits of +0, so a PeerState that
	// was not prepared never matches.
	headroom, scale uint64
	thermal         float64
}

// services returns what Prepare made of p's Models (never empty), or nil.
func (p *PeerState) services() []modelService {
	// SliceData is &Models[0] without its bounds check; Prepare set
	// models only for a Models that is not empty.
	if m := p.prep.models; m == nil || m != unsafe.SliceData(p.Models) || len(p.prep.svc) != len(p.Models) {
		return nil
	}
	return p.prep.svc
}

// rendezvous returns p's rendezvous table, or nil.
func (p *PeerState) rendezvous() *idHash {
	if p.prep.rdv == nil || !sameString(p.prep.id, p.ID) {
		return nil
	}
	return p.prep.rdv
}

// sameString is a == b, without a call when a and b are one string: the
// ID Prepare saw is, unless the ID was replaced, the very string the
// PeerState holds, and == compares the bytes in a function call, which was
// a third of weighing the pool. unsafe.StringData only reads the pointer.
func sameString(a, b string) bool {
	return len(a) == len(b) && (unsafe.StringData(a) == unsafe.StringData(b) || a == b)
}

// thermal returns exp(thermalExponent(headroom, scale)) when Prepare made
// it.
func (p *PeerState) thermal(headroom, scale float64) (float64, bool) {
	if p.prep.headroom != math.Float64bits(headroom) || p.prep.scale != math.Float64bits(scale) {
		return 0, false
	}
	return p.prep.thermal, true
}

// modelService is one of a peer's models, the ends of its name and its
// ServiceMs entry (0 when it has none).
type modelService struct {
	model  string
	lo, hi uint64 // see ends
	ms     float64
}

// is reports whether m is the model named name, whose ends are lo and hi.
// Comparing strings is a call, around which the scan saves and reloads its
// registers, and it was a tenth of the scan: names of the same length
// whose ends differ differ, and up to 16 bytes the ends are all the name.
// The three compares are one branch, not three.
func (m *modelService) is(name string, lo, hi uint64) bool {
	return uint64(len(m.model)^len(name))|(m.lo^lo)|(m.hi^hi) == 0 && (len(name) <= 16 || m.model == name)
}

// ends returns the first and the last 8 bytes of s as numbers, or s
// padded with zeros twice when it is shorter.
func ends(s string) (lo, hi uint64) {
	if len(s) < 8 {
		var b [8]byte
		copy(b[:], s)
		lo = uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
		return lo, lo
	}
	return tail(s[:8]), tail(s)
}

// scorer is one Place call's request and settings, read once so that the
// loop over the view does no per-peer work that does not depend on the
// peer, and the sums that make the view's load.
type scorer struct {
	now             int64 // Unix nanoseconds
	oldest          time.Time
	model           string
	modelLo         uint64 // the model's ends
	modelHi         uint64
	memMB           uint64
	exclude         map[string]bool
	ageDrain        bool
	minHeadroom     float64
	defaultService  float64
	defaultHeat     float64
	slowdownSpeed   float64
	unknownHeadroom float64
	queuePenalty    float64
	headroomWeight  float64
	trustWeight     float64
	scale           float64
	// tasks and slots sum Busy + QueueLen and Slots over the fresh peers,
	// and unprepared counts the feasible peers without a prepared thermal
	// term (see score). Summed here, not in variables of scan's: scan has
	// more of them than there are registers, and saved and reloaded
	// others.
	tasks, slots, unprepared int

	// wall is set when oldest has no monotonic clock reading, so that
	// Before(oldest) compares wall clocks, which scan does in line from
	// oldest's seconds since year 1 and nanoseconds.
	wall    bool
	oldSec  int64
	oldNsec int
	// tails holds the last 8 bytes of the IDs that exclude excludes, when
	// they are few and none is shorter (else ntails is -1): a peer whose
	// ID ends otherwise is not excluded, and needs no map lookup.
	tails  [maxTails]uint64
	ntails int
}

func newScorer(r *Request, now time.Time, cfg *Config) scorer {
	s := scorer{
		// time.Time.Sub checks for overflow through Add and cost a tenth
		// of Place; staleness is decided as Before decides it (see scan),
		// and ages of fresh beacons (whose times are in UnixNano's range)
		// by subtraction.
		now:             now.UnixNano(),
		oldest:          now.Add(-cfg.MaxStaleness),
		model:           r.Model,
		memMB:           r.MemMB,
		ageDrain:        cfg.AgeDrain,
		minHeadroom:     cfg.MinHeadroomC,
		defaultService:  cfg.DefaultServiceMs,
		defaultHeat:     cfg.DefaultHeatPerTaskC,
		slowdownSpeed:   clamp(cfg.SlowdownSpeed, 0.01, 1),
		unknownHeadroom: cfg.UnknownHeadroomC,
		queuePenalty:    max(cfg.QueuePenalty, 0),
		headroomWeight:  max(cfg.HeadroomWeight, 0),
		trustWeight:     max(cfg.TrustWeight, 0),
		scale:           cfg.HeadroomScaleC,
	}
	// Round(0) strips a monotonic reading and changes nothing else.
	if s.oldest == s.oldest.Round(0) {
		s.wall, s.oldSec, s.oldNsec = true, s.oldest.Unix()+unixToInternal, s.oldest.Nanosecond()
	}
	if len(r.Exclude) > 0 {
		s.exclude = r.Exclude
		s.ntails = -1 // no tails: every ID is looked up
		if len(r.Exclude) <= maxTails {
			s.ntails = 0
			for id, ex := range r.Exclude {
				if !ex { // an entry that is false excludes nothing
					continue
				}
				if len(id) < 8 {
					s.ntails = -1
					break
				}
				s.tails[s.ntails] = tail(id)
				s.ntails++
			}
		}
	}
	if !(s.scale > 0) {
		s.scale = 1
	}
	s.modelLo, s.modelHi = ends(s.model)
	return s
}

// maxTails is how many excluded IDs scorer checks by their tails: a
// client excludes the peers that refused one task, rarely more than a few.
const maxTails = 8

// endsLikeExcluded reports whether an ID whose last 8 bytes are t may be
// excluded. A map lookup hashes the whole ID, and with a few peers
// excluded (every placement after a refusal) the lookups were a fifth of
// Place; equal IDs end alike, so an ID whose last 8 bytes are none of the
// excluded ones' is not excluded, and needs no lookup.
func (s *scorer) endsLikeExcluded(t uint64) bool {
	hit := false
	for _, x := range s.tails[:s.ntails] {
		hit = hit || x == t
	}
	return hit
}

// tail is the last 8 bytes of id (len(id) ≥ 8) as a number.
func tail(id string) uint64 {
	b := id[len(id)-8:]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// unixToInternal is time's offset from Unix seconds to its own seconds
// since year 1: t.Unix() + unixToInternal is t's internal second count,
// exactly, wrapping where Unix wrapped.
const unixToInternal = (1969*365 + 1969/4 - 1969/100 + 1969/400) * 24 * 60 * 60

// load is the mean number of tasks per slot over the fresh peers of the
// view: what a peer is expected to hold once its beacon is too old to say.
// It is known once scan has seen every peer.
func (s *scorer) load() float64 {
	if !s.ageDrain || s.slots == 0 {
		return 0
	}
	return float64(s.tasks) / float64(s.slots)
}

// scan applies the filters to every peer of v and, for each that passes,
// fills the next candidate's ID, Index and HeadroomC, its terms (with
// the thermal term Prepare made, or unprepared set) and its drain's
// exponent; it returns how many passed, and sums the view's load and
// the unprepared in s. The exponentials are left to expAll, which takes
// them all at once in a third of math.Exp's time. The divisions are made
// here: without a map lookup in the loop (see Prepare), a loop of their
// own over the candidates cost a microsecond more at 1,000 peers. The
// loop is one function, not a call per peer, and it makes no call for a
// prepared peer: around one, it saves and reloads its registers.
func (s *scorer) scan(v View, cand []Candidate, ts []terms, drain []float64) (n int) {
	cand, ts = cand[:len(v)], ts[:len(v)]
	for i := range v {
		p := &v[i]
		// Filters, cheapest first: field compares, then the excluded IDs,
		// then a scan of the model list. Freshness comes first because
		// every fresh peer counts in the view's load.
		//
		// Stale is p.Updated.Before(s.oldest). Before is not inlined and
		// was a seventh of the scan; when oldest has no monotonic reading
		// (a simulated clock, or a caller that strips it), Before compares
		// seconds and nanoseconds, and so does this, in line.
		unix, nsec := p.Updated.Unix(), p.Updated.Nanosecond()
		if s.wall {
			sec := unix + unixToInternal
			if sec < s.oldSec || sec == s.oldSec && nsec < s.oldNsec {
				continue
			}
		} else if p.Updated.Before(s.oldest) {
			continue
		}
		tasks := max(p.Busy, 0) + max(p.QueueLen, 0)
		slots := max(p.Slots, 1)
		s.tasks += tasks
		s.slots += slots
		if !p.Accepting || p.full() || p.FreeMemMB < s.memMB {
			continue
		}
		limit, telemetry := p.limit()
		// Written so that a NaN temperature fails: a peer whose temperature
		// cannot be read cannot show that it is under its limit.
		if telemetry && !(p.TempC < limit-s.minHeadroom) {
			continue
		}
		// Written out so that most IDs cost no call (see endsLikeExcluded),
		// around which the scan saves and reloads its registers.
		if s.exclude != nil && (s.ntails < 0 || len(p.ID) < 8 || s.endsLikeExcluded(tail(p.ID))) && s.exclude[p.ID] {
			continue
		}
		// Written so that a NaN fails: a peer caught lying is never placed on.
		if !(p.Distrust < 1) {
			continue
		}
		var svc float64 // the model's entry in ServiceMs
		if ms := p.services(); ms != nil {
			// The first model, tested before the loop over the others (ms
			// is never empty), is the one asked for on most peers; tested
			// in the loop, it cost the scan half a microsecond at 1,000
			// peers, in code the compiler made for the loop.
			if ms[0].is(s.model, s.modelLo, s.modelHi) {
				svc = ms[0].ms
			} else {
				j := 1
				for j < len(ms) && !ms[j].is(s.model, s.modelLo, s.modelHi) {
					j++
				}
				if j == len(ms) {
					continue
				}
				svc = ms[j].ms
			}
		} else {
			if !slices.Contains(p.Models, s.model) {
				continue
			}
			svc = p.ServiceMs[s.model]
		}

		// Ranking. The terms are written field by field: a composite
		// literal is built on the stack and copied in 16-byte moves, which
		// cannot be forwarded from its 8-byte stores and stalled the loop.
		t, c := &ts[n], &cand[n]
		if !(svc > 0) || math.IsInf(svc, 1) {
			svc = s.defaultService
		}
		speed := p.Speed
		if !(speed > 0) || speed > 1 {
			speed = 1
		}
		headroom := s.unknownHeadroom
		if telemetry {
			predicted := p.predictedTemp(s.defaultHeat)
			if p.SlowdownC > 0 && predicted >= p.SlowdownC && !p.Throttled {
				speed *= s.slowdownSpeed
			}
			headroom = limit - predicted
		}
		rtt := p.RTTMs
		if !(rtt > 0) || math.IsInf(rtt, 1) {
			rtt = 0
		}
		run := svc
		if speed != 1 { // x/1 is x, and a division is dear
			run /= speed
		}
		c.ID, c.Index, c.HeadroomC = p.ID, i, headroom
		e, ok := p.thermal(headroom, s.scale)
		t.thermal, t.unprepared = e, !ok
		s.unprepared += b2i(!ok)
		// x is 0 where the beacon's tasks are not aged: exp(0) is 1, and a
		// stale value may be out of expAll's range.
		x, aged := 0.0, false
		if s.ageDrain {
			// The age is in whole milliseconds, as it has always been ranked.
			// unix·10⁹ + nsec is UnixNano, without decoding Updated again.
			if age := time.Duration(s.now - (unix*1e9 + int64(nsec))); age > 0 {
				x, aged = drainExponent(tasks, slots, float64(age.Milliseconds()), run)
			}
		}
		drain[n] = x
		t.tasks = float64(tasks)
		t.pending = float64(max(p.Pending, 0))
		t.slots = float64(slots)
		t.run, t.rtt = run, rtt
		t.distrust = p.Distrust
		t.drain = aged
		n++
	}
	return n
}

// thermalExponent is the exponent of the thermal preference. It is capped
// so a peer far past its predicted limit gets a huge but finite score and
// the order stays total.
func thermalExponent(headroom, scale float64) float64 {
	return min(-headroom/scale, 60)
}

// predictedTemp is the temperature p is predicted to reach with one more
// task, defaultHeat being DefaultHeatPerTaskC.
func (p *PeerState) predictedTemp(defaultHeat float64) float64 {
	heat := p.HeatPerTaskC
	if !(heat > 0) || math.IsInf(heat, 1) {
		heat = defaultHeat
	}
	return p.TempC + heat
}

// limit is the temperature the peer must stay under: the owner's limit, or
// the slowdown temperature when that is lower or the only one reported.
func (p *PeerState) limit() (float64, bool) {
	l, s := p.LimitC, p.SlowdownC
	switch {
	case l > 0 && s > 0:
		// Not min: neither is NaN, and min's NaN and −0 handling
		// cost more than the rest of this.
		if s < l {
			return s, true
		}
		return l, true
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

// drainExponent says how a beacon's n tasks age: a peer that had n when
// its beacon was issued, age ago, is expected to hold
//
//	mean + (n − mean) × exp(x)
//
// now, where mean is the view's load (tasks per slot) times its slots. The
// peer finishes tasks (a slot's mean service time is run; a queue takes
// n/slots times longer) and, in a busy swarm, other clients send it new
// ones, so the estimate relaxes exponentially from n towards the swarm's
// mean: a long-silent peer is as busy as the average one, neither as busy
// as it was nor empty. ageMs is the age of a beacon older than now, in
// whole milliseconds (so possibly 0); ok is false when n stands as it is
// (no service time). n and slots (≥ 1) are ints here.
func drainExponent(n, slots int, ageMs, run float64) (x float64, ok bool) {
	if !(run > 0) {
		return 0, false
	}
	// The time constant is run × max(1, n/slots), with the max taken on
	// the ints: max(n, slots)/slots is that quotient to the bit (x/x is 1,
	// and a quotient of a double by a larger one is at most 1), and an
	// int's max is a conditional move where a float's handles NaN and −0.
	// The division is made even for one slot, where it is exact: whether a
	// peer has one slot is a branch the processor cannot predict.
	perSlot := float64(max(n, slots)) / float64(slots)
	tau := run * perSlot
	return -ageMs / tau, true
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
func spread(v View, c []Candidate, key []byte, rng *rand.Rand, cfg *Config) {
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
		var at [maxTopK]int
		for i := range k {
			at[i] = c[i].Index
		}
		var w [maxTopK]uint64
		weigh(w[:k], at[:k], v, KeyHash(key))
		// The d heaviest (heaviest): highest weight, then smaller ID,
		// then earlier in c (a later member with the same weight and ID
		// stays behind).
		before := func(i, j int) bool { return c[i].ID < c[j].ID }
		drawn := heaviest(w[:k], d, before)
		for _, i := range drawn[:d] {
			chosen[i] = true
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
	// Stable partition of c[:k]: chosen first. The others keep their
	// order and move towards the end by as many places as there are
	// chosen after them, so each run of them between two chosen is one
	// copy: moving them one at a time was a call per candidate and a fifth
	// of spread. The last run moves first, so no run is overwritten before
	// its turn; those after the last chosen stay where they are.
	var pos [maxChoices]int // the chosen's places, in order
	n := 0
	for i := range k {
		if chosen[i] {
			pos[n] = i
			n++
		}
	}
	var picked [maxChoices]Candidate
	for j, i := range pos[:n] {
		picked[j] = c[i]
	}
	for j := n - 1; j >= 0; j-- {
		from := 0 // the run before the j-th chosen
		if j > 0 {
			from = pos[j-1] + 1
		}
		copy(c[from+n-j:], c[from:pos[j]])
	}
	copy(c, picked[:n])
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// KeyHash is the first half of the rendezvous weight: FNV-1a of the task key.
func KeyHash(key []byte) uint64 {
	h := uint64(fnvOffset)
	for _, b := range key {
		h ^= uint64(b)
		h *= fnvPrime
	}
	return h
}

// RendezvousWeight is the highest-random-weight hash of a task key (hashed
// with KeyHash) and a peer ID. It is stable across processes and versions
// of Go, so every client ranks peers for one key the same way.
func RendezvousWeight(keyHash uint64, id string) uint64 {
	return mix(fnvString(keyHash, id))
}

// idHash is one ID's RendezvousWeight for every key at the price of three
// multiplications, not one a byte. FNV-1a's step is h ← (h ⊕ b)·P. For a
// byte b < 0x80, h ⊕ b = h + δ with δ = (h mod 128 ⊕ b) − h mod 128, and
// the low 7 bits of a sum or a product depend on those of its terms only;
// so every δ along the ID depends on the ID and the start's low 7 bits,
// and, all modulo 2⁶⁴,
//
//	fnvString(h, id) = h·P^len(id) + Σ δᵢ·P^(len(id)−i) = h·P^len(id) + d[h mod 128]
//
// with d[l] = fnvString(l, id) − l·P^len(id): exactly RendezvousWeight's
// hash. Peer IDs are base58, so every byte is below 0x80.
type idHash struct {
	pn uint64 // P^len(id)
	d  [128]uint64
}

// newIDHash returns id's table, or nil when a byte of id is ≥ 0x80.
func newIDHash(id string) *idHash {
	t := &idHash{pn: 1}
	for i := 0; i < len(id); i++ {
		if id[i] >= 0x80 {
			return nil
		}
		t.pn *= fnvPrime
	}
	for l := range t.d {
		t.d[l] = uint64(l)
	}
	// Byte by byte over all 128 starts: independent chains, so the
	// multiplier is never waiting on the previous product.
	for i := 0; i < len(id); i++ {
		b := uint64(id[i])
		for l := range t.d {
			t.d[l] = (t.d[l] ^ b) * fnvPrime
		}
	}
	for l := range t.d {
		t.d[l] -= uint64(l) * t.pn
	}
	return t
}

// weight is RendezvousWeight(kh, id) for the table's id.
func (t *idHash) weight(kh uint64) uint64 {
	return mix(kh*t.pn + t.d[kh%128])
}

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// fnv4 is fnvString(h, s) for four strings of the same length at once. It
// is a function of its own so that the four chains stay in registers.
func fnv4(h uint64, a, b, c, d string) (ha, hb, hc, hd uint64) {
	ha, hb, hc, hd = h, h, h, h
	b, c, d = b[:len(a)], c[:len(a)], d[:len(a)]
	for i := 0; i < len(a); i++ {
		ha = (ha ^ uint64(a[i])) * fnvPrime
		hb = (hb ^ uint64(b[i])) * fnvPrime
		hc = (hc ^ uint64(c[i])) * fnvPrime
		hd = (hd ^ uint64(d[i])) * fnvPrime
	}
	return ha, hb, hc, hd
}

// mix is the splitmix64 finaliser: FNV alone leaves the high bits poorly
// mixed for inputs that differ only in their last bytes.
func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// weigh sets w[i] to RendezvousWeight(kh, v[at[i]].ID): from the peer's
// table (see Prepare) when it has one.
func weigh(w []uint64, at []int, v View, kh uint64) {
	miss := false
	for i, j := range at {
		if t := v[j].rendezvous(); t != nil {
			w[i] = t.weight(kh)
		} else {
			miss = true
		}
	}
	if miss {
		weighUnprepared(w, at, v, kh)
	}
}

// weighUnprepared sets w[i] for the peers weigh found no table for.
func weighUnprepared(w []uint64, at []int, v View, kh uint64) {
	var idx [maxTopK]int
	var rest [maxTopK]string
	n := 0
	for i, j := range at {
		if v[j].rendezvous() == nil {
			idx[n], rest[n] = i, v[j].ID
			n++
		}
	}
	var rw [maxTopK]uint64
	poolWeights(rw[:n], rest[:n], kh)
	for i, j := range idx[:n] {
		w[j] = rw[i]
	}
}

// poolWeights sets w[i] to RendezvousWeight(kh, ids[i]), for a pool of up
// to TopK candidates: hashing 52-byte peer IDs one at a time was a sixth of
// Place's time. The prefix every ID shares ("12D3KooW" for Ed25519 peer
// IDs) is hashed once, and the rest four IDs at a time: each FNV step
// waits for the previous multiply, and four independent chains keep the
// multiplier busy.
func poolWeights(w []uint64, ids []string, kh uint64) {
	w = w[:len(ids)]
	pre := ids[0]
	for i := 1; i < len(ids) && pre != ""; i++ {
		id := ids[i]
		if strings.HasPrefix(id, pre) {
			continue // most do: comparing byte by byte was a quarter of this
		}
		j, m := 0, min(len(pre), len(id))
		for j < m && pre[j] == id[j] {
			j++
		}
		pre = pre[:j]
	}
	h0, np := fnvString(kh, pre), len(pre)
	i := 0
	for ; i+4 <= len(ids); i += 4 {
		a, b, x, y := ids[i][np:], ids[i+1][np:], ids[i+2][np:], ids[i+3][np:]
		if len(b) != len(a) || len(x) != len(a) || len(y) != len(a) {
			for j := i; j < i+4; j++ {
				w[j] = mix(fnvString(h0, ids[j][np:]))
			}
			continue
		}
		ha, hb, hx, hy := fnv4(h0, a, b, x, y)
		w[i], w[i+1], w[i+2], w[i+3] = mix(ha), mix(hb), mix(hx), mix(hy)
	}
	for ; i < len(ids); i++ {
		w[i] = mix(fnvString(h0, ids[i][np:]))
	}
}

func clamp(x, lo, hi float64) float64 {
	if !(x >= lo) {
		return lo
	}
	return min(x, hi)
}

// heaviest returns the indices of the d heaviest of members 0..len(w)-1,
// heaviest first: member i is heavier than j when w[i] > w[j], or, for
// equal weights, when before(i, j) (a strict order). One pass that keeps
// them by insertion: most members are lighter than the d-th and cost one
// comparison, where d passes that each took the heaviest not yet chosen
// were a twentieth of Place. The weights are compared here, and before
// called only for equal ones (64-bit hashes, so almost never): a call per
// comparison was half of the draw.
func heaviest(w []uint64, d int, before func(i, j int) bool) (drawn [maxChoices]int) {
	heavier := func(i, j int) bool { return w[i] > w[j] || w[i] == w[j] && before(i, j) }
	nd := 0
	for i := range w {
		if nd == d && !heavier(i, drawn[d-1]) {
			continue
		}
		j := min(nd, d-1)
		for j > 0 && heavier(i, drawn[j-1]) {
			drawn[j] = drawn[j-1]
			j--
		}
		drawn[j] = i
		nd = min(nd+1, d)
	}
	return drawn
}
