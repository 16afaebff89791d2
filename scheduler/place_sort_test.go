package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestPlaceTies: peers that differ only in ID score exactly alike, and Place
// orders them by ID whatever the order of the view, in runs short and long
// (the sort puts equal scores in order by a second pass).
func TestPlaceTies(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{2, 5, 9, 300} {
		var v View
		for i := range n {
			v = append(v, peer(fmt.Sprintf("p%04d", i)))
			// A second group with a longer queue: two runs of ties.
			q := peer(fmt.Sprintf("q%04d", i))
			q.Busy = 1
			v = append(v, q)
		}
		rng.Shuffle(len(v), func(i, j int) { v[i], v[j] = v[j], v[i] })
		got := ids(Place(v, Request{Model: model}, t0, nil, noSample()))
		want := slices.Clone(got)
		slices.SortFunc(want, func(a, b string) int {
			if a[0] != b[0] {
				return int(a[0]) - int(b[0]) // every p is idle, every q busy
			}
			return strings.Compare(a, b)
		})
		if !slices.Equal(got, want) || len(got) != 2*n {
			t.Fatalf("n=%d: %v, want %v", n, got, want)
		}
	}
}

// TestPoolWeights: the batched rendezvous weights are RendezvousWeight's,
// for IDs of mixed lengths, a shared prefix, an empty ID and an ID that is
// another's prefix.
func TestPoolWeights(t *testing.T) {
	idSets := [][]string{
		{"12D3KooWa", "12D3KooWb", "12D3KooWcc", "12D3KooWd", "12D3KooWe", "12D3KooWf", "12D3KooWgg", "12D3KooWhh", "12D3KooWii"},
		{"abc", "ab", "abcd", "", "abc", "x"},
		{"same", "same", "same", "same", "same"},
		{"only"},
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for range 50 {
		var ids []string
		for range 1 + rng.IntN(40) {
			id := "12D3KooW"
			for range rng.IntN(4) + 40 {
				id += string(rune('A' + rng.IntN(26)))
			}
			ids = append(ids, id)
		}
		idSets = append(idSets, ids)
	}
	for _, set := range idSets {
		for _, key := range []string{"", "task", "another task"} {
			kh := KeyHash([]byte(key))
			w := make([]uint64, len(set))
			poolWeights(w, set, kh)
			for i, id := range set {
				if want := RendezvousWeight(kh, id); w[i] != want {
					t.Fatalf("ids %q key %q: weight of %q = %#x, want %#x", set, key, id, w[i], want)
				}
			}
		}
	}
}

// TestIDHash: an ID's table gives RendezvousWeight for every key, for IDs
// of every length up to 60 and every byte below 0x80, and keys that
// cover every start of the table; an ID with a byte ≥ 0x80 has none.
func TestIDHash(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 10))
	for n := range 61 {
		for range 20 {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(rng.IntN(0x80))
			}
			id := string(b)
			h := newIDHash(id)
			if h == nil {
				t.Fatalf("no table for %q", id)
			}
			for l := range uint64(300) {
				kh := rng.Uint64()
				if l < 128 {
					kh = kh&^127 | l
				}
				if got, want := h.weight(kh), RendezvousWeight(kh, id); got != want {
					t.Fatalf("id %q key hash %#x: %#x, want %#x", id, kh, got, want)
				}
			}
		}
	}
	for _, id := range []string{"\x80", "12D3KooW\xff", "é"} {
		if newIDHash(id) != nil {
			t.Errorf("a table for %q", id)
		}
	}
}

// TestModelIs: a prepared model name matches exactly the names equal to
// it: names of every length to 40, ones that differ only in the middle
// (past the ends is compares) or at one end, by a zero byte at the end,
// or in length only.
func TestModelIs(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	for range 20000 {
		n := rng.IntN(41)
		a := make([]byte, n)
		for i := range a {
			a[i] = "ab\x00"[rng.IntN(3)]
		}
		b := slices.Clone(a)
		switch rng.IntN(5) {
		case 0: // equal
		case 1:
			if n > 0 {
				b[rng.IntN(n)] ^= 1
			}
		case 2:
			b = append(b, 0)
		case 3:
			if n > 0 {
				b = b[:n-1]
			}
		case 4:
			if n > 16 {
				b[8+rng.IntN(n-16)] ^= 1 // not in either end
			}
		}
		lo, hi := ends(string(a))
		m := modelService{model: string(b)}
		m.lo, m.hi = ends(m.model)
		if got, want := m.is(string(a), lo, hi), string(a) == string(b); got != want {
			t.Fatalf("%q is %q: %v, want %v", b, a, got, want)
		}
	}
}
