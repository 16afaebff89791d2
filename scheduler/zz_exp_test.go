package scheduler

import (
	"math/bits"
	"math"
	"time"

	"unsafe"
	"math/rand/v2"
	"slices"
	"testing"
)

func zzBench(b *testing.B, key func(p *PeerState) int) {
	v := BenchView(1000, 1)
	slices.SortStableFunc(v, func(a, b PeerState) int { return key(&a) - key(&b) })
	r := BenchRequest(1)
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	buf := make([]Candidate, 0, len(v))
	cpuLoop(b, func() { buf = AppendPlace(buf[:0], v, r, now, rng, cfg) })
}

func BenchmarkZZHot(b *testing.B) {
	zzBench(b, func(p *PeerState) int {
		l, te := p.limit()
		return b2i(te && !(p.TempC < l-5))
	})
}
func BenchmarkZZFeasible(b *testing.B) {
	zzBench(b, func(p *PeerState) int { return b2i(!feasibleRef(*p, BenchRequest(1), BenchNow(), DefaultConfig())) })
}
func BenchmarkZZSlots(b *testing.B) {
	zzBench(b, func(p *PeerState) int { return p.Slots })
}
func BenchmarkZZTele(b *testing.B) {
	zzBench(b, func(p *PeerState) int { _, te := p.limit(); return b2i(te) })
}
func BenchmarkZZModel(b *testing.B) {
	zzBench(b, func(p *PeerState) int { return len(p.Models[0]) })
}
func BenchmarkZZNone(b *testing.B) {
	zzBench(b, func(p *PeerState) int { return 0 })
}


func TestZZSpan(t *testing.T) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	sc := new(scratch)
	cand, best, _ := sc.score(v, &r, BenchNow(), &cfg, true)
	lo, shift, span := sc.cut()
	var hist [256]int
	for _, k := range sc.keys[:len(cand)] {
		hist[((k-lo)>>shift)>>16]++
	}
	t.Logf("n %d best %v lo %x hi %x shift %d span %x", len(cand), best, lo, sc.hi, shift, span)
	t.Logf("top digit hist %v", hist[:64])
	mx := 0.0
	for _, c := range cand { mx = max(mx, c.Score) }
	t.Logf("max score %v", mx)
}

func TestZZLayout(t *testing.T) {
	var p PeerState
	t.Logf("size %d ID %d Models %d Free %d Acc %d Slots %d GPU %d QueueMax %d Svc %d TempC %d Thr %d Speed %d Heat %d RTT %d Upd %d Dis %d prep %d",
		unsafe.Sizeof(p), unsafe.Offsetof(p.ID), unsafe.Offsetof(p.Models), unsafe.Offsetof(p.FreeMemMB), unsafe.Offsetof(p.Accepting), unsafe.Offsetof(p.Slots), unsafe.Offsetof(p.GPU), unsafe.Offsetof(p.QueueMax), unsafe.Offsetof(p.ServiceMs), unsafe.Offsetof(p.TempC), unsafe.Offsetof(p.Throttled), unsafe.Offsetof(p.Speed), unsafe.Offsetof(p.HeatPerTaskC), unsafe.Offsetof(p.RTTMs), unsafe.Offsetof(p.Updated), unsafe.Offsetof(p.Distrust), unsafe.Offsetof(p.prep))
}

func BenchmarkZZScan(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	now := BenchNow()
	sc := new(scratch)
	cand, terms, ex := sc.grow(len(v))
	cpuLoop(b, func() {
		s := newScorer(&r, now, &cfg)
		s.scan(v, cand, terms, ex[:len(v)], ex[len(v):2*len(v)], sc.miss)
	})
}

func BenchmarkZZScore(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	now := BenchNow()
	sc := new(scratch)
	cpuLoop(b, func() {
		sc.score(v, &r, now, &cfg, true)
	})
}

func (s *scorer) scanX(v View, cand []Candidate, ts []terms, drain, thermal []float64, miss []int32) (n, nm int) {
	sumTasks, sumSlots := 0, 0
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
		sumTasks += tasks
		sumSlots += slots
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
			j := 0
			for j < len(ms) && !ms[j].is(s.model, s.modelLo, s.modelHi) {
				j++
			}
			if j == len(ms) {
				continue
			}
			svc = ms[j].ms
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
		if e, ok := p.thermal(headroom, s.scale); ok {
			thermal[n] = e
		} else {
			thermal[n], miss[nm] = thermalExponent(headroom, s.scale), int32(n)
			nm++
		}
		drain[n] = 0 // exp(0) is 1, and a stale value may be out of expAll's range
		t.tasks = float64(tasks)
		t.pending = float64(max(p.Pending, 0))
		t.slots = float64(slots)
		t.run, t.rtt = run, rtt
		t.distrust = p.Distrust
		t.drain = false
		if s.ageDrain {
			// The age is in whole milliseconds, as it has always been ranked.
			// unix·10⁹ + nsec is UnixNano, without decoding Updated again.
			if age := time.Duration(s.now - (unix*1e9 + int64(nsec))); age > 0 {
				drain[n], t.drain = drainExponent(tasks, slots, float64(age.Milliseconds()), run)
			}
		}
		n++
	}
	s.tasks, s.slots = sumTasks, sumSlots
	return n, nm
}

func BenchmarkZZScanX(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	now := BenchNow()
	sc := new(scratch)
	cand, terms, ex := sc.grow(len(v))
	cpuLoop(b, func() {
		s := newScorer(&r, now, &cfg)
		s.scanX(v, cand, terms, ex[:len(v)], ex[len(v):2*len(v)], sc.miss)
	})
}


var sinkC []Candidate

func BenchmarkZZAlloc(b *testing.B) {
	cpuLoop(b, func() { sinkC = make([]Candidate, 680) })
}
func BenchmarkZZAllocGrow(b *testing.B) {
	cpuLoop(b, func() { sinkC = slices.Grow([]Candidate(nil), 680)[:680] })
}


func BenchmarkZZSort(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	sc := new(scratch)
	cand, _, _ := sc.score(v, &r, BenchNow(), &cfg, true)
	keys0 := slices.Clone(sc.keys[:len(cand)])
	c := make([]Candidate, len(cand))
	cpuLoop(b, func() {
		copy(sc.keys, keys0)
		sc.sort(cand, c)
	})
}

func BenchmarkZZSpread(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	sc := new(scratch)
	cand, _, _ := sc.score(v, &r, BenchNow(), &cfg, true)
	c := make([]Candidate, len(cand))
	sc.sort(cand, c)
	c0 := slices.Clone(c)
	cpuLoop(b, func() {
		copy(c, c0)
		spread(v, c, r.Key, nil, &cfg)
	})
}

func BenchmarkZZCopy(b *testing.B) {
	c := make([]Candidate, 680)
	c0 := slices.Clone(c)
	cpuLoop(b, func() {
		copy(c, c0)
	})
}

func TestZZTies(t *testing.T) {
	for seed := uint64(1); seed < 6; seed++ {
		v := BenchView(1000, seed)
		r := BenchRequest(seed)
		cfg := DefaultConfig()
		sc := new(scratch)
		cand, _, _ := sc.score(v, &r, BenchNow(), &cfg, true)
		lo, _, _ := sc.cut()
		span := sc.hi - lo
		for _, b := range []int{24, 20, 16} {
			shift := max(0, 64-bits.LeadingZeros64(span)-b)
			ks := make([]uint64, len(cand))
			for i, k := range sc.keys[:len(cand)] {
				ks[i] = (k - lo) >> shift
			}
			slices.Sort(ks)
			ties, runs := 0, 0
			for i := 1; i < len(ks); i++ {
				if ks[i] == ks[i-1] {
					ties++
					if i == 1 || ks[i-1] != ks[i-2] {
						runs++
					}
				}
			}
			t.Logf("seed %d bits %d: n %d ties %d runs %d", seed, b, len(ks), ties, runs)
		}
	}
}
