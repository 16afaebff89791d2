package scheduler

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

func BenchmarkZZSortedView(b *testing.B) {
	v := BenchView(1000, 1)
	// Group peers: by class-ish features so the scan's branches are predictable.
	slices.SortStableFunc(v, func(a, b PeerState) int {
		fa := feasibleRef(a, BenchRequest(1), BenchNow(), DefaultConfig())
		fb := feasibleRef(b, BenchRequest(1), BenchNow(), DefaultConfig())
		if fa != fb {
			if fa {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(a.Slots, b.Slots); c != 0 {
			return c
		}
		if c := cmp.Compare(a.LimitC, b.LimitC); c != 0 {
			return c
		}
		return cmp.Compare(a.Models[0], b.Models[0])
	})
	r := BenchRequest(1)
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(1, 1))
	now := BenchNow()
	buf := make([]Candidate, 0, len(v))
	cpuLoop(b, func() { buf = AppendPlace(buf[:0], v, r, now, rng, cfg) })
}

func TestZZCount(t *testing.T) {
	v := BenchView(1000, 1)
	r := BenchRequest(1)
	cfg := DefaultConfig()
	now := BenchNow()
	got := Place(v, r, now, nil, cfg)
	var stale, acc, therm, model, multi, slots2, tele int
	s := newScorer(&r, now, &cfg)
	for i := range v {
		p := &v[i]
		if p.Updated.Before(s.oldest) {
			stale++
			continue
		}
		if !p.Accepting {
			acc++
			continue
		}
		l, te := p.limit()
		if te {
			tele++
		}
		if te && !(p.TempC < l-5) {
			therm++
			continue
		}
		if !slices.Contains(p.Models, r.Model) {
			model++
			continue
		}
		if p.Models[0] != r.Model {
			multi++
		}
		if p.Slots != 1 {
			slots2++
		}
	}
	t.Logf("feasible %d stale %d acc %d therm %d model %d notfirst %d slots2 %d tele %d", len(got), stale, acc, therm, model, multi, slots2, tele)
}
