package scheduler

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestAppendPlaceTopMatchesAppendPlace: on random views, requests and
// settings, AppendPlaceTop(k) appends exactly the first k candidates of
// AppendPlace, field for field, leaves what dst held alone, and leaves the
// random stream where AppendPlace leaves it. The draws cover keyed and
// random sampling, pools cut by SampleSlack and by TopK, no draw, Exclude,
// nil rng, views of many equal scores and repeated IDs, and Configs that
// do not validate (NaN scores and limits).
func TestAppendPlaceTopMatchesAppendPlace(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 15))
	for iter := range 2500 {
		// Views of 600 or more: pools of up to maxTopK, and past it.
		v, r, cfg := randomCase(rng, t0, iter%10 == 0, iter%7 == 3, iter%6, iter%4 == 2)
		seed := rng.Uint64()
		var rs [2]*rand.Rand
		if iter%11 != 5 {
			rs = [2]*rand.Rand{rand.New(rand.NewPCG(seed, 1)), rand.New(rand.NewPCG(seed, 1))}
		}
		all := AppendPlace(nil, v, r, t0, rs[0], cfg)
		after := uint64(0)
		if rs[0] != nil {
			after = rs[0].Uint64()
		}
		for _, k := range []int{1, 1 + rng.IntN(3), cfg.Choices, cfg.Choices + 1, rng.IntN(len(all) + 2), len(all), 0} {
			if rs[1] != nil {
				rs[1] = rand.New(rand.NewPCG(seed, 1))
			}
			prefix := []Candidate{{ID: "kept", Score: -1}}
			got := AppendPlaceTop(slices.Clone(prefix), v, r, t0, rs[1], cfg, k)
			want := append(prefix, all[:max(0, min(k, len(all)))]...)
			if !slices.EqualFunc(got, want, sameBits) {
				t.Fatalf("iteration %d (n=%d, %d feasible, k=%d, key=%v, cfg %+v):\n got %v\nwant %v",
					iter, len(v), len(all), k, len(r.Key) > 0, cfg, ids(got), ids(want))
			}
			if rs[1] != nil && k > 0 && len(all) > 0 && rs[1].Uint64() != after {
				t.Fatalf("iteration %d, k=%d: the random stream is not where AppendPlace leaves it", iter, k)
			}
		}
	}
}

// TestHeaviest: heaviest returns the d members a full sort would put first,
// by weight and then by before, on weights drawn from a few values so that
// most compare equal and before decides (rendezvous weights hardly ever
// tie, so the draws of Place do not test it).
func TestHeaviest(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for iter := range 2000 {
		n := 1 + rng.IntN(40)
		w, rank := make([]uint64, n), rng.Perm(n)
		for i := range w {
			w[i] = uint64(rng.IntN(4))
		}
		before := func(i, j int) bool { return rank[i] < rank[j] }
		d := 1 + rng.IntN(min(n, maxChoices))
		want := make([]int, n)
		for i := range want {
			want[i] = i
		}
		slices.SortFunc(want, func(i, j int) int {
			if w[i] != w[j] {
				return -cmp.Compare(w[i], w[j])
			}
			return cmp.Compare(rank[i], rank[j])
		})
		if got := heaviest(w, d, before); !slices.Equal(got[:d], want[:d]) {
			t.Fatalf("iteration %d: w %v, rank %v, d %d: %v, want %v", iter, w, rank, d, got[:d], want[:d])
		}
	}
}

// TestAppendPlaceTopSomeScoresNaN: with a Config that does not validate
// (a NaN UnknownHeadroomC), the peers without telemetry score NaN and the
// others do not. AppendPlace's sampler keeps them in its pool (it cuts the
// pool only at a score above the limit, which NaN is not), so
// AppendPlaceTop must not take its shortcut, which assumes every score is
// a number (score's plain): it must still match AppendPlace.
func TestAppendPlaceTopSomeScoresNaN(t *testing.T) {
	var v View
	for i := range 12 {
		p := peer(fmt.Sprintf("p%02d", i))
		p.RTTMs = float64(5 * i)
		if i%4 == 1 {
			p.SlowdownC, p.LimitC = 0, 0 // no telemetry: UnknownHeadroomC
		}
		v = append(v, p)
	}
	cfg := DefaultConfig()
	cfg.UnknownHeadroomC = math.NaN()
	for key := range 50 {
		r := Request{Model: model, Key: []byte(fmt.Sprint(key))}
		all := AppendPlace(nil, v, r, t0, nil, cfg)
		for _, k := range []int{1, 2, cfg.Choices} {
			got := AppendPlaceTop(nil, v, r, t0, nil, cfg, k)
			if !slices.EqualFunc(got, all[:k], sameBits) {
				t.Fatalf("key %d, k=%d: %v, want %v", key, k, ids(got), ids(all[:k]))
			}
		}
	}
}

// TestAppendPlaceTopBenchView: the realistic view, many keys and clients,
// the node's k = 1 and a few more, against AppendPlace.
func TestAppendPlaceTopBenchView(t *testing.T) {
	v := BenchView(1000, 7)
	cfg := DefaultConfig()
	for key := range 200 {
		r := BenchRequest(uint64(key))
		if key%3 == 0 {
			r.Exclude = map[string]bool{}
			for _, c := range Place(v, r, BenchNow(), nil, cfg)[:key%7] {
				r.Exclude[c.ID] = true
			}
		}
		if key%5 == 0 {
			r.Key = nil // a random draw
		}
		all := AppendPlace(nil, v, r, BenchNow(), rand.New(rand.NewPCG(uint64(key), 3)), cfg)
		for _, k := range []int{1, 3, 4, 5, 300} {
			got := AppendPlaceTop(nil, v, r, BenchNow(), rand.New(rand.NewPCG(uint64(key), 3)), cfg, k)
			if !slices.EqualFunc(got, all[:k], sameBits) {
				t.Fatalf("key %d, k=%d: %v, want %v", key, k, ids(got[:min(k, 8)]), ids(all[:min(k, 8)]))
			}
		}
	}
}

// sameBits: the same candidate, computed the same way to the last bit.
func sameBits(a, b Candidate) bool {
	eq := func(x, y float64) bool { return math.Float64bits(x) == math.Float64bits(y) }
	return a.ID == b.ID && a.Index == b.Index && eq(a.PredictedMs, b.PredictedMs) &&
		eq(a.WaitMs, b.WaitMs) && eq(a.HeadroomC, b.HeadroomC) && eq(a.Score, b.Score)
}

// tiedView is n peers made from four templates, so most scores are exactly
// equal and ties are decided by ID, and from a few IDs, so some peers share
// an ID and ties are decided by their place in the view.
func tiedView(rng *rand.Rand, n int) View {
	v := make(View, n)
	for i := range v {
		p := peer(fmt.Sprintf("t%03d", rng.IntN(max(n, 1))))
		p.Models = []string{"m1", "m2", "m3"}
		switch rng.IntN(4) {
		case 1:
			p.Busy = 1
		case 2:
			p.ServiceMs = map[string]float64{"m1": 2000}
		case 3:
			p.TempC = 70
		}
		v[i] = p
	}
	return v
}

// badConfig is a Config that does not validate, in ways that make scores
// NaN or infinite, or the pool's limit NaN.
func badConfig(rng *rand.Rand) Config {
	cfg := randomConfig(rng)
	switch rng.IntN(4) {
	case 0:
		cfg.QueuePenalty = math.Inf(1) // ∞ × a wait of 0 is NaN
	case 1:
		cfg.SampleSlack = math.NaN()
	case 2:
		cfg.SampleSlack = math.Inf(1)
	case 3:
		cfg.HeadroomWeight = math.Inf(1)
	}
	return cfg
}

func BenchmarkAppendPlaceTop1000(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	buf := make([]Candidate, 0, len(v))
	cpuLoop(b, func() { buf = AppendPlaceTop(buf[:0], v, r, now, rng, cfg, 1) })
}

// BenchmarkAppendPlaceTopMonotonic1000 is BenchmarkAppendPlaceTop1000 with
// a now that carries a monotonic clock reading, as time.Now() does: the
// staleness test then goes through Time.Before.
func BenchmarkAppendPlaceTopMonotonic1000(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	m := time.Now()
	now := m.Add(BenchNow().Sub(m)) // BenchNow's wall clock, m's monotonic one
	buf := make([]Candidate, 0, len(v))
	cpuLoop(b, func() { buf = AppendPlaceTop(buf[:0], v, r, now, rng, cfg, 1) })
}

// BenchmarkAppendPlaceTopExclude1000 is the node's placement after two
// refusals: the two peers it tried are excluded.
func BenchmarkAppendPlaceTopExclude1000(b *testing.B) {
	v, r, cfg := afterTwoRefusals()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	buf := make([]Candidate, 0, len(v))
	cpuLoop(b, func() { buf = AppendPlaceTop(buf[:0], v, r, now, rng, cfg, 1) })
}

// afterTwoRefusals is the bench view and request with the two best peers
// excluded, as after two refusals.
func afterTwoRefusals() (View, Request, Config) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	tried := Place(v, r, BenchNow(), nil, cfg)
	r.Exclude = map[string]bool{tried[0].ID: true, tried[1].ID: true}
	return v, r, cfg
}

// BenchmarkPlaceReferenceExclude1000 is the reference on
// BenchmarkAppendPlaceTopExclude1000's request.
func BenchmarkPlaceReferenceExclude1000(b *testing.B) {
	v, r, cfg := afterTwoRefusals()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	cpuLoop(b, func() { placeReference(v, r, now, rng, cfg) })
}

// BenchmarkAppendPlaceTopRandom1000 is the draw without a key, which needs
// the pool in order.
func BenchmarkAppendPlaceTopRandom1000(b *testing.B) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	r.Key = nil
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	buf := make([]Candidate, 0, len(v))
	cpuLoop(b, func() { buf = AppendPlaceTop(buf[:0], v, r, now, rng, cfg, 1) })
}

// BenchmarkAppendPlaceTopUnprepared1000 is BenchmarkAppendPlaceTop1000 on
// a view that was not prepared, as the simulator's.
func BenchmarkAppendPlaceTopUnprepared1000(b *testing.B) {
	v := BenchView(1000, 1)
	prepare(v, false)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	buf := make([]Candidate, 0, len(v))
	cpuLoop(b, func() { buf = AppendPlaceTop(buf[:0], v, r, now, rng, cfg, 1) })
}

// randomCase draws a view, a request and a config as the placement property
// tests do: big for a view of 600 to 1,299 peers (else under 300), tied for
// one of identical peers; cfgCase 0 the defaults, 1 random TopK and Choices,
// 2 a bad config when bad, any other randomConfig's.
func randomCase(rng *rand.Rand, t0 time.Time, big, tied bool, cfgCase int, bad bool) (View, Request, Config) {
	n := rng.IntN(300)
	if big {
		n = 600 + rng.IntN(700)
	}
	var v View
	if tied {
		v = tiedView(rng, n)
	} else {
		v = randomView(rng, n, t0)
	}
	r := randomRequest(rng, v)
	cfg := randomConfig(rng)
	switch cfgCase {
	case 0:
		cfg = DefaultConfig()
	case 1:
		cfg.TopK = 1 + rng.IntN(maxTopK)
		cfg.Choices = 1 + rng.IntN(maxChoices)
	case 2:
		if bad {
			cfg = badConfig(rng)
		}
	}
	return v, r, cfg
}

// TestPrepareIDReplaced: a prepared peer given another ID of the same
// length keeps no rendezvous weight of the old one (the table is checked
// against the ID's bytes, not only its length), and one given its own ID
// in another string keeps its table: Place and AppendPlaceTop, keyed,
// give what they give for the view unprepared.
func TestPrepareIDReplaced(t *testing.T) {
	v := BenchView(1000, 9)
	for i := range v {
		switch i % 3 {
		case 0:
			b := []byte(v[i].ID)
			b[len(b)-1] ^= 1 // a base58 byte, still below 0x80
			v[i].ID = string(b)
		case 1:
			v[i].ID = strings.Clone(v[i].ID)
		}
	}
	plain := slices.Clone(v)
	prepare(plain, false)
	for key := range 50 {
		r := BenchRequest(uint64(key))
		got := AppendPlace(nil, v, r, BenchNow(), nil, DefaultConfig())
		want := AppendPlace(nil, plain, r, BenchNow(), nil, DefaultConfig())
		if !slices.EqualFunc(got, want, sameBits) {
			t.Fatalf("key %d: prepared %v, not %v", key, ids(got[:4]), ids(want[:4]))
		}
		top := AppendPlaceTop(nil, v, r, BenchNow(), nil, DefaultConfig(), 1)
		if !slices.EqualFunc(top, want[:1], sameBits) {
			t.Fatalf("key %d: top %v, want %v", key, ids(top), ids(want[:1]))
		}
	}
}
