package node

import (
	"testing"

	"github.com/gpunet/gpunet/node/store"
)

// TestServesResult is the reprovide rule: a node provides what it made
// (unless quiet), what its owner pinned and what it announced (served to someone), and
// nothing else it holds.
func TestServesResult(t *testing.T) {
	const self, other = "12D3KooWSelf", "12D3KooWOther"
	cases := []struct {
		name      string
		e         store.Entry
		announced bool
		want      bool
	}{
		{"made here", store.Entry{Host: self}, false, true},
		{"made here, quiet", store.Entry{Host: self, Quiet: true}, false, false},
		{"made here, quiet, pinned", store.Entry{Host: self, Quiet: true, Pinned: true}, false, true},
		{"made elsewhere, got from its host", store.Entry{Host: other}, false, false},
		{"made elsewhere, pinned", store.Entry{Host: other, Pinned: true}, false, true},
		{"made elsewhere, served since", store.Entry{Host: other}, true, true},
		{"manifest unreadable", store.Entry{}, false, false},
	}
	for _, c := range cases {
		if got := servesResult(c.e, self, func() bool { return c.announced }); got != c.want {
			t.Errorf("%s: provides %v, want %v", c.name, got, c.want)
		}
	}
}
