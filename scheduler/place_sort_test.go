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
