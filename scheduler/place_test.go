package scheduler

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

const model = "m1"

// peer is a feasible, idle, cool default-speed peer; tests change one thing.
func peer(id string) PeerState {
	return PeerState{
		ID: id, Models: []string{"other", model}, FreeMemMB: 8192, Accepting: true,
		Slots: 1, ServiceMs: map[string]float64{model: 4000},
		TempC: 50, SlowdownC: 88, LimitC: 83, Speed: 1, HeatPerTaskC: 2,
		RTTMs: 20, Updated: t0.Add(-time.Second),
	}
}

func ids(c []Candidate) []string {
	out := make([]string, len(c))
	for i := range c {
		out[i] = c[i].ID
	}
	return out
}

// noSample is the default config without the sampler, so the result is
// exactly the score order.
func noSample() Config {
	c := DefaultConfig()
	c.TopK, c.Choices = 1, 1
	return c
}

func TestFilters(t *testing.T) {
	req := Request{Model: model, MemMB: 4096}
	tests := []struct {
		name   string
		mutate func(p *PeerState, r *Request)
		want   bool
	}{
		{"feasible", func(*PeerState, *Request) {}, true},
		{"not accepting", func(p *PeerState, _ *Request) { p.Accepting = false }, false},
		{"stale beacon", func(p *PeerState, _ *Request) { p.Updated = t0.Add(-11 * time.Second) }, false},
		{"beacon exactly MaxStaleness old", func(p *PeerState, _ *Request) { p.Updated = t0.Add(-10 * time.Second) }, true},
		{"never beaconed", func(p *PeerState, _ *Request) { p.Updated = time.Time{} }, false},
		{"short of memory", func(p *PeerState, _ *Request) { p.FreeMemMB = 4095 }, false},
		{"exactly enough memory", func(p *PeerState, _ *Request) { p.FreeMemMB = 4096 }, true},
		{"over limit", func(p *PeerState, _ *Request) { p.TempC = 84 }, false},
		{"at limit", func(p *PeerState, _ *Request) { p.TempC = 83 }, false},
		{"inside the headroom margin", func(p *PeerState, _ *Request) { p.TempC = 78 }, false},
		{"just outside the margin", func(p *PeerState, _ *Request) { p.TempC = 77.9 }, true},
		{"limit above slowdown uses slowdown", func(p *PeerState, _ *Request) { p.LimitC, p.TempC = 95, 86 }, false},
		{"only slowdown reported", func(p *PeerState, _ *Request) { p.LimitC, p.TempC = 0, 86 }, false},
		{"NaN temperature", func(p *PeerState, _ *Request) { p.TempC = math.NaN() }, false},
		{"NaN limit", func(p *PeerState, _ *Request) { p.LimitC, p.SlowdownC = math.NaN(), 0 }, false},
		{"no telemetry", func(p *PeerState, _ *Request) { p.LimitC, p.SlowdownC, p.TempC = 0, 0, 0 }, true},
		{"excluded", func(p *PeerState, r *Request) { r.Exclude = map[string]bool{p.ID: true} }, false},
		{"other peer excluded", func(p *PeerState, r *Request) { r.Exclude = map[string]bool{"x": true} }, true},
		{"wrong model", func(p *PeerState, _ *Request) { p.Models = []string{"other"} }, false},
		{"no models", func(p *PeerState, _ *Request) { p.Models = nil }, false},
		{"queue length not said", func(p *PeerState, _ *Request) { p.Busy, p.QueueLen, p.Pending = 1, 9, 9 }, true},
		{"room in the queue", func(p *PeerState, _ *Request) { p.QueueMax, p.Busy, p.QueueLen, p.Pending = 3, 1, 1, 1 }, true},
		{"queue full by our placements", func(p *PeerState, _ *Request) { p.QueueMax, p.Busy, p.QueueLen, p.Pending = 3, 1, 1, 2 }, false},
		{"queue full by its beacon", func(p *PeerState, _ *Request) { p.QueueMax, p.Busy, p.QueueLen = 2, 1, 2 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, r := peer("a"), req
			tt.mutate(&p, &r)
			got := Place(View{p}, r, t0, rand.New(rand.NewPCG(1, 2)), DefaultConfig())
			if (len(got) == 1) != tt.want {
				t.Fatalf("returned %v, want feasible=%v", ids(got), tt.want)
			}
		})
	}
}

func TestRanking(t *testing.T) {
	tests := []struct {
		name   string
		a, b   func(p *PeerState) // a must rank before b
		reason string
	}{
		{"cool idle beats hot busy",
			func(p *PeerState) { p.TempC = 45 },
			func(p *PeerState) { p.TempC, p.Busy, p.QueueLen = 76, 1, 2 },
			"a hot busy peer has both a queue and little headroom"},
		{"cool idle beats hot idle of the same speed",
			func(p *PeerState) { p.TempC = 50 },
			func(p *PeerState) { p.TempC = 77 },
			"headroom preference"},
		{"faster idle beats slower idle",
			func(p *PeerState) { p.ServiceMs = map[string]float64{model: 2000} },
			func(p *PeerState) { p.ServiceMs = map[string]float64{model: 4000} },
			"service time"},
		{"slow idle beats fast with a long queue",
			func(p *PeerState) { p.ServiceMs = map[string]float64{model: 6000} },
			func(p *PeerState) { p.ServiceMs, p.Busy, p.QueueLen = map[string]float64{model: 2000}, 1, 4 },
			"(4/1+1)×2000 > 6000"},
		{"fast busy beats slow idle when the wait is short",
			func(p *PeerState) { p.ServiceMs, p.Busy = map[string]float64{model: 1000}, 1 },
			func(p *PeerState) { p.ServiceMs = map[string]float64{model: 5000} },
			"(1/1+1)×1000 < 5000"},
		{"a free slot on a two-slot peer is as good as an idle peer, and it is faster",
			func(p *PeerState) { p.Slots, p.Busy, p.ServiceMs = 2, 1, map[string]float64{model: 3000} },
			func(p *PeerState) { p.ServiceMs = map[string]float64{model: 4000} },
			"ahead = max(0, 1+0-2+1) = 0"},
		{"unthrottled beats throttled",
			func(p *PeerState) {},
			func(p *PeerState) { p.Throttled, p.Speed = true, 0.5 },
			"half clock doubles the service time"},
		{"a peer predicted to cross slowdown is slowed",
			func(p *PeerState) { p.TempC, p.LimitC, p.SlowdownC = 30, 88, 88 },
			func(p *PeerState) { p.LimitC, p.SlowdownC, p.TempC, p.HeatPerTaskC = 88, 88, 82, 7 },
			"82+7 ≥ 88 halves the speed"},
		{"a cooler peer a little slower wins",
			func(p *PeerState) { p.TempC, p.ServiceMs = 40, map[string]float64{model: 4400} },
			func(p *PeerState) { p.TempC = 77 },
			"10 % slower but 37 °C more headroom"},
		{"a warm peer with fair headroom beats a much slower cool one",
			func(p *PeerState) { p.TempC = 68 },
			func(p *PeerState) { p.TempC, p.ServiceMs = 40, map[string]float64{model: 8000} },
			"twice the service time outweighs the preference at 13 °C headroom"},
		{"lower RTT breaks a tie",
			func(p *PeerState) { p.RTTMs = 5 },
			func(p *PeerState) { p.RTTMs = 80 },
			"link"},
		{"an unreported model service time uses the default",
			func(p *PeerState) { p.ServiceMs = map[string]float64{model: 3000} },
			func(p *PeerState) { p.ServiceMs = nil },
			"3000 < DefaultServiceMs 4000"},
		{"a GPU with headroom beats a peer without telemetry at equal speed",
			func(p *PeerState) { p.TempC = 40 },
			func(p *PeerState) { p.TempC, p.LimitC, p.SlowdownC = 0, 0, 0 },
			"43 °C − 2 of headroom against UnknownHeadroomC 15"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := peer("a"), peer("b")
			tt.a(&a)
			tt.b(&b)
			// Both orders of the view: the answer must not depend on it.
			for _, v := range []View{{a, b}, {b, a}} {
				got := Place(v, Request{Model: model}, t0, nil, noSample())
				if len(got) != 2 || got[0].ID != "a" {
					t.Fatalf("order %v (%+v), want a first: %s", ids(got), got, tt.reason)
				}
				if got[0].Score > got[1].Score {
					t.Fatalf("scores not ascending: %+v", got)
				}
			}
		})
	}
}

func TestPredictedMs(t *testing.T) {
	// The peer under test has 2 slots, 2 busy and 3 queued; three idle
	// one-slot peers make the view's load 5 tasks / 5 slots = 1 per slot, so
	// an old beacon relaxes towards 2 tasks with time constant
	// 4000 ms × 5/2.
	aged := func(age float64) float64 { return 2 + 3*math.Exp(-age/10000) }
	tests := []struct {
		name    string
		age     time.Duration
		pending int
		n       float64 // tasks expected at the peer before ours
	}{
		{"fresh beacon", 0, 0, 5},
		{"beacon 1 s old", time.Second, 0, aged(1000)},
		{"beacon 14 s old", 14 * time.Second, 0, aged(14000)},
		{"fresh, 2 of our own since", 0, 2, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := peer("a")
			p.Slots, p.Busy, p.QueueLen, p.Pending = 2, 2, 3, tt.pending
			p.RTTMs = 30
			p.Updated = t0.Add(-tt.age)
			v := View{p, peer("x1"), peer("x2"), peer("x3")}
			cfg := noSample()
			cfg.MaxStaleness = time.Minute
			got := Place(v, Request{Model: model}, t0, nil, cfg)
			i := slices.IndexFunc(got, func(c Candidate) bool { return c.ID == "a" })
			wait := (tt.n - 2 + 1) / 2 * 4000 // (n − slots + 1) / slots service times
			want := wait + 4000 + 30
			if math.Abs(got[i].PredictedMs-want) > 1e-6 || math.Abs(got[i].WaitMs-wait) > 1e-6 {
				t.Fatalf("PredictedMs, WaitMs = %v, %v, want %v, %v", got[i].PredictedMs, got[i].WaitMs, want, wait)
			}
			wantScore := (want + cfg.QueuePenalty*wait) * (1 + cfg.HeadroomWeight*math.Exp(-31/cfg.HeadroomScaleC))
			if math.Abs(got[i].Score-wantScore) > 1e-6 {
				t.Fatalf("Score = %v, want %v", got[i].Score, wantScore)
			}
			if want := 83 - (50 + 2.0); got[i].HeadroomC != want {
				t.Fatalf("HeadroomC = %v, want %v", got[i].HeadroomC, want)
			}
		})
	}
}

func TestCharge(t *testing.T) {
	p := peer("a")
	p.Slots = 2
	r := Request{Model: model}
	p.Charge()
	p.Charge()
	p.Charge()
	if p.Pending != 3 || p.Busy != 0 || p.TempC != 56 {
		t.Fatalf("after 3 charges: pending %d busy %d temp %v, want 3, 0, 56", p.Pending, p.Busy, p.TempC)
	}
	// A client that charged its own placements ranks the peer below a fresh one.
	got := Place(View{p, peer("b")}, r, t0, nil, noSample())
	if got[0].ID != "b" {
		t.Fatalf("charged peer still first: %v", ids(got))
	}
}

// TestAntiHerding: many clients with the same view and different random
// streams must not all pick the same peer, and sampling disabled must.
func TestAntiHerding(t *testing.T) {
	var v View
	for i := range 20 {
		p := peer(fmt.Sprintf("p%02d", i))
		p.ServiceMs = map[string]float64{model: 4000 + float64(i)} // p00 strictly best
		v = append(v, p)
	}
	first := func(cfg Config, key bool) map[string]int {
		counts := map[string]int{}
		for c := range 200 {
			r := Request{Model: model}
			if key {
				r.Key = []byte(fmt.Sprintf("task-%d", c))
			}
			got := Place(v, r, t0, rand.New(rand.NewPCG(uint64(c), 7)), cfg)
			counts[got[0].ID]++
		}
		return counts
	}
	if got := first(noSample(), false); len(got) != 1 || got["p00"] != 200 {
		t.Fatalf("without sampling every client should pick p00: %v", got)
	}
	cfg := DefaultConfig()
	for _, key := range []bool{false, true} {
		got := first(cfg, key)
		// The best of 4 drawn from 20: p00 with probability 4/20, and
		// never one of the 3 worst.
		if len(got) < 10 || got["p00"] > 70 {
			t.Fatalf("key=%v: the first choice should spread over many peers, got %v", key, got)
		}
		for id := range got {
			if id > "p16" {
				t.Fatalf("key=%v: first choice %s cannot be the best of 4 draws", key, id)
			}
		}
	}
}

// TestSampleSlack: the sampler never trades the best peer for one that is
// clearly worse, even when TopK would allow it.
func TestSampleSlack(t *testing.T) {
	a, b, c := peer("a"), peer("b"), peer("c")
	// Three tasks ahead: cost (4+3)·4000, more than 1+SampleSlack times a's.
	b.Busy, b.QueueLen, c.Busy, c.QueueLen = 1, 2, 1, 2
	b.Updated, c.Updated = t0, t0
	for s := range 50 {
		got := Place(View{a, b, c}, Request{Model: model}, t0, rand.New(rand.NewPCG(uint64(s), 1)), DefaultConfig())
		if got[0].ID != "a" {
			t.Fatalf("seed %d: %v, want the only idle peer first", s, ids(got))
		}
	}
}

// TestRendezvous: the same key meets on the same peer from clients whose
// views differ a little; different keys spread over the near-best peers.
func TestRendezvous(t *testing.T) {
	var v View
	for i := range 10 {
		p := peer(fmt.Sprintf("p%d", i))
		p.ServiceMs = map[string]float64{model: 4000 + 100*float64(i)}
		v = append(v, p)
	}
	slow := peer("slow")
	slow.ServiceMs = map[string]float64{model: 20000} // outside SampleSlack
	v = append(v, slow)
	cfg := DefaultConfig()
	spreadOver := map[string]int{}
	for k := range 200 {
		key := []byte(fmt.Sprintf("task-%d", k))
		var firsts []string
		for client := range 5 {
			view := slices.Clone(v)
			// Each client's view is a little different (its own RTTs), and
			// each has its own random stream, which a keyed draw ignores.
			for i := range view {
				view[i].RTTMs = 20 + float64((client*7+i*3)%11)
			}
			rng := rand.New(rand.NewPCG(uint64(client), uint64(k)))
			got := Place(view, Request{Model: model, Key: key}, t0, rng, cfg)
			firsts = append(firsts, got[0].ID)
		}
		for _, f := range firsts[1:] {
			if f != firsts[0] {
				t.Fatalf("key %q: clients chose %v, want one peer", key, firsts)
			}
		}
		if firsts[0] == "slow" {
			t.Fatalf("key %q: chose a peer outside the pool", key)
		}
		spreadOver[firsts[0]]++
	}
	if len(spreadOver) < 6 || spreadOver["p0"] > 100 {
		t.Fatalf("200 keys should spread over the near-best peers: %v", spreadOver)
	}
}

// --- property tests ---

// feasibleRef is an independent, plain statement of the filters.
func feasibleRef(p PeerState, r Request, now time.Time, cfg Config) bool {
	if !p.Accepting || now.Sub(p.Updated) > cfg.MaxStaleness || p.FreeMemMB < r.MemMB || r.Exclude[p.ID] || !(p.Distrust < 1) {
		return false
	}
	if !slices.Contains(p.Models, r.Model) {
		return false
	}
	lim, tele := math.Inf(1), false
	if p.LimitC > 0 {
		lim, tele = p.LimitC, true
	}
	if p.SlowdownC > 0 {
		lim, tele = min(lim, p.SlowdownC), true
	}
	if math.IsNaN(p.LimitC) || math.IsNaN(p.SlowdownC) {
		return false
	}
	if tele && !(p.TempC < lim-cfg.MinHeadroomC) {
		return false
	}
	return true
}

func randomView(rng *rand.Rand, n int, now time.Time) View {
	models := []string{"m1", "m2", "m3"}
	v := make(View, n)
	for i := range v {
		p := PeerState{
			ID:        fmt.Sprintf("peer-%03d", i),
			FreeMemMB: uint64(rng.IntN(16384)),
			Accepting: rng.Float64() < 0.85,
			Slots:     rng.IntN(5) - 1, // includes 0 and -1: read as 1
			Busy:      rng.IntN(4),
			QueueLen:  rng.IntN(4),
			SlowdownC: 83 + 10*rng.Float64(),
			Speed:     []float64{1, 1, 0.5, 0, -1}[rng.IntN(5)],
			RTTMs:     100 * rng.Float64(),
			Updated:   now.Add(-time.Duration(rng.Int64N(int64(15 * time.Second)))),
		}
		for _, m := range models {
			if rng.Float64() < 0.6 {
				p.Models = append(p.Models, m)
			}
		}
		p.LimitC = p.SlowdownC - 8*rng.Float64()
		p.TempC = 30 + 65*rng.Float64()
		p.HeatPerTaskC = []float64{0, 1, 3, 8}[rng.IntN(4)]
		if rng.Float64() < 0.7 {
			p.ServiceMs = map[string]float64{"m1": 500 + 9000*rng.Float64(), "m2": -1}
		}
		switch rng.IntN(20) {
		case 0:
			p.LimitC, p.SlowdownC = 0, 0 // no telemetry
		case 1:
			p.TempC = math.NaN()
		case 2:
			p.LimitC = p.TempC // exactly at the limit
		case 3:
			p.RTTMs = math.Inf(1)
		case 4, 5:
			p.Distrust = []float64{0.2, 0.05, 1, math.NaN()}[rng.IntN(4)]
		}
		v[i] = p
	}
	return v
}

func randomRequest(rng *rand.Rand, v View) Request {
	r := Request{Model: []string{"m1", "m2", "m3", "none"}[rng.IntN(4)], MemMB: uint64(rng.IntN(12000))}
	if rng.Float64() < 0.5 {
		r.Key = []byte(fmt.Sprintf("key-%d", rng.Uint64()))
	}
	if len(v) > 0 && rng.Float64() < 0.5 {
		r.Exclude = map[string]bool{}
		for range rng.IntN(5) {
			r.Exclude[v[rng.IntN(len(v))].ID] = true
		}
	}
	return r
}

func randomConfig(rng *rand.Rand) Config {
	cfg := DefaultConfig()
	cfg.Choices = 1 + rng.IntN(4)
	cfg.TopK = 1 + rng.IntN(16)
	cfg.SampleSlack = []float64{0, 0.25, 1, 100}[rng.IntN(4)]
	cfg.Rendezvous = rng.IntN(2) == 0
	cfg.AgeDrain = rng.IntN(2) == 0
	cfg.QueuePenalty = []float64{0, 1, 3}[rng.IntN(3)]
	return cfg
}

func TestPlaceProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 42))
	for iter := range 3000 {
		n := rng.IntN(60)
		v := randomView(rng, n, t0)
		r := randomRequest(rng, v)
		cfg := randomConfig(rng)
		seed := rng.Uint64()
		got := Place(v, r, t0, rand.New(rand.NewPCG(seed, 1)), cfg)
		fail := func(format string, a ...any) {
			t.Helper()
			t.Fatalf("iteration %d (n=%d req=%+v cfg=%+v): %s", iter, n, r, cfg, fmt.Sprintf(format, a...))
		}

		// Every returned peer is feasible, returned once, and Index is right;
		// no feasible peer is missing.
		seen := map[string]bool{}
		for _, c := range got {
			if seen[c.ID] {
				fail("%s returned twice", c.ID)
			}
			seen[c.ID] = true
			if c.Index < 0 || c.Index >= n || v[c.Index].ID != c.ID {
				fail("candidate %s has Index %d", c.ID, c.Index)
			}
			p := v[c.Index]
			if !feasibleRef(p, r, t0, cfg) {
				fail("infeasible peer returned: %+v", p)
			}
			if !slices.Contains(p.Models, r.Model) || p.FreeMemMB < r.MemMB || !p.Accepting ||
				t0.Sub(p.Updated) > cfg.MaxStaleness || r.Exclude[p.ID] {
				fail("peer that cannot serve returned: %+v", p)
			}
			if lim, ok := p.limit(); ok && !(p.TempC < lim) {
				fail("peer at or over its limit returned: %+v", p)
			}
			if math.IsNaN(c.Score) || c.Score <= 0 || math.IsNaN(c.PredictedMs) || c.PredictedMs <= 0 {
				fail("bad score for %s: %+v", c.ID, c)
			}
		}
		for _, p := range v {
			if feasibleRef(p, r, t0, cfg) && !seen[p.ID] {
				fail("feasible peer missing: %+v", p)
			}
		}

		// Order: [drawn, by score] [rest, by score], the drawn from the pool
		// (the best TopK within SampleSlack of the best) and, for a keyed
		// request, exactly the pool's highest rendezvous weights.
		sorted := slices.Clone(got)
		slices.SortFunc(sorted, byScore)
		k := min(cfg.TopK, len(sorted))
		for k > 1 && sorted[k-1].Score > sorted[0].Score*(1+cfg.SampleSlack) {
			k--
		}
		d := min(cfg.Choices, k)
		if d >= k {
			d = 0 // no draw: plain score order
		}
		head, tail := got[:d], got[d:]
		if !slices.IsSortedFunc(head, byScore) || !slices.IsSortedFunc(tail, byScore) {
			fail("order is not [drawn by score][rest by score]: %+v", got)
		}
		pool := sorted[:k]
		for _, c := range head {
			if !slices.ContainsFunc(pool, func(p Candidate) bool { return p.ID == c.ID }) {
				fail("drawn %s is not in the pool of %d", c.ID, k)
			}
		}
		if d > 0 && len(r.Key) > 0 && cfg.Rendezvous {
			kh := KeyHash(r.Key)
			byWeight := slices.Clone(pool)
			slices.SortFunc(byWeight, func(a, b Candidate) int {
				return cmp.Compare(RendezvousWeight(kh, b.ID), RendezvousWeight(kh, a.ID))
			})
			for _, c := range byWeight[:d] {
				if !slices.ContainsFunc(head, func(h Candidate) bool { return h.ID == c.ID }) {
					fail("keyed draw %v misses %s, one of the pool's %d highest weights", ids(head), c.ID, d)
				}
			}
		}

		// Deterministic: same seed, same answer, whatever the view's order.
		again := Place(v, r, t0, rand.New(rand.NewPCG(seed, 1)), cfg)
		if !slices.Equal(got, again) {
			fail("same seed gave %v then %v", ids(got), ids(again))
		}
		shuffled := slices.Clone(v)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		third := Place(shuffled, r, t0, rand.New(rand.NewPCG(seed, 1)), cfg)
		if !slices.EqualFunc(got, third, func(a, b Candidate) bool {
			return a.ID == b.ID && a.Score == b.Score
		}) {
			fail("shuffled view gave %v, want %v", ids(third), ids(got))
		}
	}
}

// TestStaleness: the staleness filter is Updated.Before(now −
// MaxStaleness), as in the reference, for a now with and without a
// monotonic clock reading (scan compares seconds and nanoseconds itself for
// the one without), around the boundary and at the ends of time.Time.
func TestStaleness(t *testing.T) {
	cfg := DefaultConfig()
	mono := time.Now()
	for _, now := range []time.Time{t0, mono, mono.Round(0), time.Unix(1<<40, 5), time.Unix(-1<<40, 5), {}} {
		oldest := now.Add(-cfg.MaxStaleness)
		for _, u := range []time.Time{
			oldest, oldest.Add(1), oldest.Add(-1), oldest.Round(0), oldest.Round(0).Add(1), oldest.Round(0).Add(-1),
			oldest.Add(-time.Second), oldest.Add(time.Second), oldest.Add(-time.Hour), now, now.Add(time.Hour), {},
			time.Unix(math.MaxInt64, 999_999_999), time.Unix(math.MinInt64, 0), time.Unix(1<<40, 0), time.Unix(-1<<40, 0),
		} {
			p := peer("a")
			p.Updated = u
			got := len(Place(View{p}, Request{Model: model}, now, nil, cfg)) == 1
			ref := len(placeReference(View{p}, Request{Model: model}, now, nil, cfg)) == 1
			if want := !u.Before(oldest); got != want || ref != want {
				t.Errorf("now %v, beacon %v: returned %v, reference %v, want %v", now, u, got, ref, want)
			}
		}
	}
}

// TestExclude: Exclude leaves out exactly the peers whose ID maps to true,
// as in the reference, whatever the IDs: short ones, one that is empty,
// and IDs that end in the same 8 bytes (scan compares the ends of IDs
// before it looks one up), with few and many entries, some false.
func TestExclude(t *testing.T) {
	idSet := []string{"", "x", "1234567", "12345678", "a12345678", "b12345678", "ab12345678",
		"12D3KooWaaaaaaaaaa", "12D3KooWbaaaaaaaaa", "12D3KooWaaaaaaaaab", "peer-000", "peer-001"}
	rng := rand.New(rand.NewPCG(8, 8))
	for iter := range 500 {
		v := make(View, 1+rng.IntN(2*len(idSet)))
		for i := range v {
			v[i] = peer(idSet[rng.IntN(len(idSet))])
			v[i].RTTMs = float64(rng.IntN(4)) // some ties, some not
		}
		r := Request{Model: model, Exclude: map[string]bool{}}
		for range rng.IntN(2 * maxTails) {
			r.Exclude[idSet[rng.IntN(len(idSet))]] = rng.IntN(4) > 0
		}
		got := Place(v, r, t0, nil, noSample())
		want := placeReference(v, r, t0, nil, noSample())
		if !slices.EqualFunc(got, want, sameCandidate) {
			t.Fatalf("iteration %d, exclude %v: %v, reference %v", iter, r.Exclude, ids(got), ids(want))
		}
		for _, c := range got {
			if r.Exclude[c.ID] {
				t.Fatalf("iteration %d: excluded %q returned", iter, c.ID)
			}
		}
	}
}

func TestAppendPlaceReusesBuffer(t *testing.T) {
	v := BenchView(200, 1)
	r := BenchRequest(1)
	want := Place(v, r, BenchNow(), rand.New(rand.NewPCG(3, 3)), DefaultConfig())
	buf := make([]Candidate, 0, 256)
	got := AppendPlace(buf, v, r, BenchNow(), rand.New(rand.NewPCG(3, 3)), DefaultConfig())
	if !slices.Equal(got, want) || &got[0] != &buf[:1][0] {
		t.Fatalf("AppendPlace differs from Place or did not use the buffer")
	}
	if len(want) < 100 || len(want) > 190 {
		t.Fatalf("BenchView(200) gave %d candidates, want most but not all feasible", len(want))
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(c *Config){
		func(c *Config) { c.MaxStaleness = 0 },
		func(c *Config) { c.MinHeadroomC = -1 },
		func(c *Config) { c.DefaultServiceMs = math.NaN() },
		func(c *Config) { c.SlowdownSpeed = 0 },
		func(c *Config) { c.SlowdownSpeed = 1.5 },
		func(c *Config) { c.HeadroomScaleC = 0 },
		func(c *Config) { c.Choices = 0 },
		func(c *Config) { c.TopK = maxTopK + 1 },
		func(c *Config) { c.Choices = maxChoices + 1 },
		func(c *Config) { c.QueuePenalty = math.Inf(1) },
		func(c *Config) { c.SampleSlack = -1 },
	}
	for i, m := range bad {
		c := DefaultConfig()
		m(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("case %d: %+v validated", i, c)
		}
	}
}

func TestRendezvousWeightStable(t *testing.T) {
	// Pinned values: every client in the network must compute the same
	// weights, so a change here is a protocol change.
	got := RendezvousWeight(KeyHash([]byte("task")), "12D3KooWpeer")
	if got != RendezvousWeight(KeyHash([]byte("task")), "12D3KooWpeer") {
		t.Fatal("not deterministic")
	}
	if want := uint64(0x281348fad16ed1cf); got != want {
		t.Fatalf("RendezvousWeight = %#x, want %#x", got, want)
	}
}

func BenchmarkPlace1000(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	cpuLoop(b, func() { Place(v, r, now, rng, cfg) })
}

func BenchmarkAppendPlace1000(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	buf := make([]Candidate, 0, len(v))
	cpuLoop(b, func() { buf = AppendPlace(buf[:0], v, r, now, rng, cfg) })
}

// TestSlowdownPrediction: a peer whose next task would take it to its
// hardware slowdown temperature is predicted at half speed; one already
// throttled is not halved twice.
func TestSlowdownPrediction(t *testing.T) {
	tests := []struct {
		temp      float64
		throttled bool
		want      float64
	}{
		{70, false, 4000 + 20},   // 70 + 7 < 88
		{82, false, 2*4000 + 20}, // 82 + 7 ≥ 88
		{82, true, 2*4000 + 20},  // Speed 0.5 already says so
	}
	for _, tt := range tests {
		p := peer("a")
		p.LimitC, p.SlowdownC, p.TempC, p.HeatPerTaskC = 88, 88, tt.temp, 7
		if tt.throttled {
			p.Throttled, p.Speed = true, 0.5
		}
		got := Place(View{p}, Request{Model: model}, t0, nil, noSample())
		if len(got) != 1 || got[0].PredictedMs != tt.want {
			t.Errorf("temp %v throttled %v: %+v, want PredictedMs %v", tt.temp, tt.throttled, got, tt.want)
		}
	}
}

// TestDistrust: a peer caught lying (Distrust ≥ 1, or NaN) is never
// returned, whatever its load; a doubted one loses a close call to a peer
// with a clean record, and wins a clear one.
func TestDistrust(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	cfg := DefaultConfig()
	cfg.Choices = 1 // no sampling: plain score order
	mk := func(id string, distrust float64, queue int) PeerState {
		return PeerState{ID: id, Models: []string{"m"}, Accepting: true, Slots: 1, QueueLen: queue,
			ServiceMs: map[string]float64{"m": 1000}, Updated: now, Distrust: distrust}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, d := range []float64{1, 7, math.NaN()} {
		got := Place(View{mk("liar", d, 0), mk("busy", 0, 3)}, Request{Model: "m"}, now, rng, cfg)
		if len(got) != 1 || got[0].ID != "busy" {
			t.Fatalf("distrust %v: Place returned %v, want only the busy honest peer", d, got)
		}
	}
	close := View{mk("new", ProbationTestDistrust, 0), mk("known", 0, 0)}
	close[1].ServiceMs = map[string]float64{"m": 1050} // 5 % slower
	if got := Place(close, Request{Model: "m"}, now, rng, cfg); got[0].ID != "known" {
		t.Fatalf("a close call went to the doubted peer: %v", got)
	}
	clear := View{mk("new", ProbationTestDistrust, 0), mk("known", 0, 2)}
	if got := Place(clear, Request{Model: "m"}, now, rng, cfg); got[0].ID != "new" {
		t.Fatalf("a doubted idle peer lost to a busy known one: %v", got)
	}
}

// ProbationTestDistrust is node/trust's ProbationDistrust (scheduler may
// not import it).
const ProbationTestDistrust = 0.2

// TestNegativeDistrust: a Distrust below 0 (node/trust never gives one)
// ranks a peer as 0 does, to the bit: only a positive Distrust raises the
// score, and scan passes a negative one on as it is.
func TestNegativeDistrust(t *testing.T) {
	v := BenchView(300, 5)
	zero := slices.Clone(v)
	for i := range v {
		if i%3 == 0 {
			v[i].Distrust = []float64{-0.5, math.Copysign(0, -1), -1e300, math.Inf(-1)}[i%4]
			zero[i].Distrust = 0
		}
	}
	for key := range 20 {
		r := BenchRequest(uint64(key))
		got := Place(v, r, BenchNow(), nil, DefaultConfig())
		want := Place(zero, r, BenchNow(), nil, DefaultConfig())
		if !slices.EqualFunc(got, want, sameBits) {
			t.Fatalf("key %d: negative Distrust gave %v, Distrust 0 %v", key, ids(got[:5]), ids(want[:5]))
		}
	}
}

// placeGolden is placeDigest as Place gave it before it read Prepare's
// caches (issue 14), recorded on amd64 without fused multiply-adds. A
// faster Place must return the same candidates in the same order with the
// same bits, not just close ones (TestPlaceMatchesReference allows 1e-12):
// if this changes, a result changed. placeDigest's inputs come from
// randomView, tiedView, randomRequest, randomConfig, badConfig, roughen
// and BenchView, so a change to those changes it too; record it again
// only from the code as it was before the change (git archive of the
// last commit, with placeDigest less its prepare call).
const placeGolden uint64 = 0x3dacdd1a97c8e208

// TestPlaceGolden: Place and AppendPlaceTop, on views prepared and not,
// give placeGolden bit for bit. Go may fuse x*y + z (arm64 does, amd64
// from GOAMD64=v3), which rounds once where the recording rounded twice:
// such a build checks prepared views against unprepared ones only.
func TestPlaceGolden(t *testing.T) {
	unprepared, prepared := placeDigest(false), placeDigest(true)
	if prepared != unprepared {
		t.Errorf("prepared views: digest %#x, unprepared %#x", prepared, unprepared)
	}
	if fusesMulAdd(1+0x1p-30, 1-0x1p-30, -1) == 0 && unprepared != placeGolden {
		t.Errorf("digest %#x, want %#x", unprepared, placeGolden)
	}
}

//go:noinline
func fusesMulAdd(x, y, z float64) float64 { return x*y + z }

// placeDigest hashes every candidate, field by field to the bit, that
// Place and AppendPlaceTop return over random views, requests and settings
// (keyed and random draws, Exclude, ties, repeated IDs, bad Configs) and
// over BenchView, with its views prepared when prep is set.
func placeDigest(prep bool) uint64 {
	h := fnv.New64a()
	var b [8]byte
	put := func(x uint64) {
		binary.LittleEndian.PutUint64(b[:], x)
		h.Write(b[:])
	}
	putF := func(x float64) {
		if math.IsNaN(x) {
			x = math.NaN() // one NaN: their payloads are not the point
		}
		put(math.Float64bits(x))
	}
	add := func(cs []Candidate) {
		put(uint64(len(cs)))
		for _, c := range cs {
			h.Write([]byte(c.ID))
			put(uint64(c.Index))
			putF(c.PredictedMs)
			putF(c.WaitMs)
			putF(c.HeadroomC)
			putF(c.Score)
		}
	}
	run := func(v View, r Request, cfg Config, seed uint64, now time.Time) {
		prepare(v, prep)
		add(Place(v, r, now, rand.New(rand.NewPCG(seed, 1)), cfg))
		add(Place(v, r, now, nil, cfg))
		for _, k := range []int{1, 2, cfg.Choices, 10} {
			add(AppendPlaceTop(nil, v, r, now, rand.New(rand.NewPCG(seed, 1)), cfg, k))
		}
	}
	rng := rand.New(rand.NewPCG(14, 16))
	for iter := range 600 {
		v, r, cfg := randomCase(rng, t0, iter%15 == 0, iter%7 == 3, iter%5, iter%4 == 2)
		if iter%2 == 1 {
			roughen(rng, v, &cfg)
		}
		run(v, r, cfg, rng.Uint64(), t0)
	}
	v := BenchView(1000, 7)
	for key := range 60 {
		r := BenchRequest(uint64(key))
		if key%3 == 0 {
			r.Exclude = map[string]bool{v[key].ID: true, v[3*key+1].ID: true}
		}
		if key%5 == 0 {
			r.Key = nil
		}
		run(v, r, DefaultConfig(), uint64(key), BenchNow())
	}
	return h.Sum64()
}

// roughen gives some peers of v and some settings of cfg values that are
// not round (randomView's speeds are powers of two, which divide and
// multiply alike), so that a change in how Place rounds shows.
func roughen(rng *rand.Rand, v View, cfg *Config) {
	for i := range v {
		p := &v[i]
		switch rng.IntN(4) {
		case 0:
			p.Speed = rng.Float64()
		case 1:
			p.Slots, p.Pending, p.QueueMax = 1+rng.IntN(7), rng.IntN(3), rng.IntN(9)
		case 2:
			p.HeatPerTaskC, p.Distrust = 10*rng.Float64(), rng.Float64()
		}
	}
	if rng.IntN(2) == 0 {
		cfg.HeadroomScaleC, cfg.UnknownHeadroomC = 1+5*rng.Float64(), 30*rng.Float64()
		cfg.QueuePenalty, cfg.TrustWeight = 3*rng.Float64(), rng.Float64()
		cfg.HeadroomWeight, cfg.SlowdownSpeed = 3*rng.Float64(), rng.Float64()
	}
}

// prepare prepares every peer of v, or undoes it.
func prepare(v View, on bool) {
	for i := range v {
		if on {
			v[i].Prepare(nil, nil)
		} else {
			v[i].prep = prepared{}
		}
	}
}

// TestPrepare: Place and AppendPlaceTop return the same, to the bit, for
// a view whose peers were prepared as for the same view unprepared,
// whatever happened to a peer since Prepare: charged, given a new
// temperature, another ID (or the same one in another string), another
// Models slice; and for peers prepared under other headroom settings than
// Place's, peers not prepared, and IDs that have no table.
func TestPrepare(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 12))
	headroomCfg := func() *Config {
		c := DefaultConfig()
		c.HeadroomScaleC = []float64{3, 2, 0, math.Inf(1)}[rng.IntN(4)]
		c.DefaultHeatPerTaskC = []float64{5, 1}[rng.IntN(2)]
		c.UnknownHeadroomC = []float64{15, -3}[rng.IntN(2)]
		return &c
	}
	for iter := range 800 {
		n := rng.IntN(300)
		var v View
		switch iter % 4 {
		case 0:
			v = BenchView(n, rng.Uint64())
		case 1:
			v = tiedView(rng, n)
		default:
			v = randomView(rng, n, t0)
		}
		r := randomRequest(rng, v)
		if iter%4 == 0 {
			r.Model = protocol.DefaultModel
		}
		cfg := randomConfig(rng)
		switch iter % 3 {
		case 0:
			cfg = DefaultConfig()
		case 1:
			h := headroomCfg()
			cfg.HeadroomScaleC, cfg.DefaultHeatPerTaskC, cfg.UnknownHeadroomC = h.HeadroomScaleC, h.DefaultHeatPerTaskC, h.UnknownHeadroomC
		}
		now := t0
		if iter%4 == 0 {
			now = BenchNow()
		}
		if iter%2 == 1 {
			roughen(rng, v, &cfg)
		}
		for i := range v {
			if rng.IntN(10) == 0 {
				v[i].ID += "é" // no table
			}
			switch rng.IntN(8) {
			case 0: // not prepared
			case 1:
				v[i].Prepare(nil, headroomCfg())
			default:
				v[i].Prepare(nil, nil)
			}
			p := &v[i]
			switch rng.IntN(12) {
			case 0:
				p.Charge()
			case 1:
				p.TempC += 1
			case 2:
				p.ID += "x"
			case 3:
				p.ID = strings.Clone(p.ID) // the same ID: its table holds
			case 4:
				p.Models = slices.Clone(p.Models)
			case 5:
				p.Models = append(slices.Clone(p.Models), "m3")
			case 6:
				p.Models = slices.Clone(p.Models) // as long, other names
				for j := range p.Models {
					p.Models[j] = []string{"m1", "m2", "m3", protocol.DefaultModel}[rng.IntN(4)]
				}
			case 7:
				q := *p
				p.Prepare(&q, nil) // again, with the table of the last one
			}
		}
		plain := slices.Clone(v)
		prepare(plain, false)
		seed := rng.Uint64()
		got := AppendPlace(nil, v, r, now, rand.New(rand.NewPCG(seed, 1)), cfg)
		want := AppendPlace(nil, plain, r, now, rand.New(rand.NewPCG(seed, 1)), cfg)
		if !slices.EqualFunc(got, want, sameBits) {
			t.Fatalf("iteration %d (n=%d): prepared %v, not %v", iter, n, ids(got), ids(want))
		}
		for _, k := range []int{1, cfg.Choices} {
			got := AppendPlaceTop(nil, v, r, now, rand.New(rand.NewPCG(seed, 1)), cfg, k)
			if !slices.EqualFunc(got, want[:min(k, len(want))], sameBits) {
				t.Fatalf("iteration %d (n=%d), top %d: prepared %v, not %v", iter, n, k, ids(got), ids(want[:min(k, len(want))]))
			}
		}
	}
}
