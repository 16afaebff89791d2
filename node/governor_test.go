package node

import "testing"

func TestGovernor(t *testing.T) {
	type step struct {
		tempC float64
		want  int
		hot   bool
	}
	cases := []struct {
		name  string
		slots int
		steps []step
	}{
		{"cool runs every slot", 4, []step{{40, 4, false}, {70, 4, false}}},
		{"warm sheds concurrency linearly", 4, []step{{70, 4, false}, {74, 3, false}, {79, 2, false}, {83.9, 1, false}}},
		{"stops one degree short of the limit", 4, []step{{84, 0, true}, {90, 0, true}}},
		{"hysteresis: stays stopped until 5 below", 2, []step{{84.5, 0, true}, {82, 0, true}, {80.1, 0, true}, {80, 1, false}, {70, 2, false}}},
		{"unknown reading keeps state", 2, []step{{84, 0, true}, {0, 0, true}, {79, 1, false}, {0, 2, false}}},
		{"one slot never drops to zero below the guard", 1, []step{{83.9, 1, false}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := NewGovernor(85, c.slots)
			for i, s := range c.steps {
				got := g.Observe(s.tempC)
				if got != s.want || g.Hot() != s.hot {
					t.Fatalf("step %d (%.1f °C): %d slots hot=%v, want %d hot=%v", i, s.tempC, got, g.Hot(), s.want, s.hot)
				}
			}
		})
	}
}

func TestGovernorPause(t *testing.T) {
	g := NewGovernor(85, 2)
	g.SetPaused(true)
	if got := g.Observe(40); got != 0 {
		t.Fatalf("paused: %d slots, want 0", got)
	}
	g.SetPaused(false)
	if got := g.Observe(40); got != 2 {
		t.Fatalf("resumed: %d slots, want 2", got)
	}
}

func TestGovernorWithoutLimitRunsAllSlots(t *testing.T) {
	g := NewGovernor(0, 3)
	if got := g.Observe(95); got != 3 {
		t.Fatalf("no limit known: %d slots, want 3", got)
	}
}
