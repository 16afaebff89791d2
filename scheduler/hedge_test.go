package scheduler

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestQueuedETAMs(t *testing.T) {
	cases := []struct {
		pos, slots int
		runMs      float64
		want       float64
	}{
		{1, 1, 1000, 2000},  // behind the running task, then its own run
		{3, 1, 1000, 4000},  // three ahead on one slot
		{4, 2, 1000, 3000},  // four ahead spread over two slots
		{0, 1, 1000, 1000},  // not queued: just its run
		{2, 0, 500, 1500},   // a host reporting no slots counts as one
		{-1, 1, 1000, 1000}, // a nonsense position is no queue
	}
	for _, c := range cases {
		if got := QueuedETAMs(c.pos, c.slots, c.runMs); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("QueuedETAMs(%d, %d, %v) = %v, want %v", c.pos, c.slots, c.runMs, got, c.want)
		}
	}
}

func TestQueuedWaitMsInvertsETA(t *testing.T) {
	for _, c := range []struct{ pos, slots int }{{1, 1}, {3, 1}, {4, 2}, {1, 4}, {0, 1}} {
		const runMs = 1500
		eta := QueuedETAMs(c.pos, c.slots, runMs)
		if got, want := QueuedWaitMs(eta, c.pos, c.slots), eta-runMs; math.Abs(got-want) > 1e-9 {
			t.Errorf("position %d of %d slots: wait %v of ETA %v, want %v", c.pos, c.slots, got, eta, want)
		}
	}
}

func TestHedgeDelay(t *testing.T) {
	c := DefaultConfig()
	cases := []struct {
		waitMs float64
		want   time.Duration
	}{
		{3000, 6 * time.Second}, // HedgeFactor × the predicted wait
		{100, time.Second},      // never sooner than HedgeMin
		{0, time.Second},        // no wait predicted: HedgeMin
		{-5, time.Second},       // unknown
		{math.NaN(), time.Second},
	}
	for _, tc := range cases {
		if got := c.HedgeDelay(tc.waitMs); got != tc.want {
			t.Errorf("HedgeDelay(%v) = %v, want %v", tc.waitMs, got, tc.want)
		}
	}
	c.HedgeFactor, c.HedgeMin = 0.5, 0
	if got := c.HedgeDelay(3000); got != 1500*time.Millisecond {
		t.Errorf("factor 0.5: HedgeDelay(3000) = %v, want 1.5s", got)
	}
}

func TestShouldMove(t *testing.T) {
	c := DefaultConfig()
	if !c.ShouldMove(8000, Candidate{PredictedMs: 4000}) {
		t.Error("did not move to a host predicted twice as fast")
	}
	if c.ShouldMove(4000, Candidate{PredictedMs: 4000}) {
		t.Error("moved for no predicted gain")
	}
	if c.ShouldMove(4000, Candidate{PredictedMs: 6000}) {
		t.Error("moved to a slower host")
	}
	c.HedgeGain = 0.5
	if c.ShouldMove(7000, Candidate{PredictedMs: 4000}) {
		t.Error("gain 0.5: moved for a 43 % gain")
	}
	if !c.ShouldMove(9000, Candidate{PredictedMs: 4000}) {
		t.Error("gain 0.5: did not move for a 56 % gain")
	}
}

func TestHedgeConfigValidation(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"zero factor":  func(c *Config) { c.HedgeFactor = 0 },
		"NaN factor":   func(c *Config) { c.HedgeFactor = math.NaN() },
		"negative min": func(c *Config) { c.HedgeMin = -time.Second },
		"zero gain":    func(c *Config) { c.HedgeGain = 0 },
		"gain above 1": func(c *Config) { c.HedgeGain = 1.5 },
	} {
		c := DefaultConfig()
		mutate(&c)
		if err := c.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: Validate() = %v, want ErrBadConfig", name, err)
		}
	}
}

func TestFreeCapacity(t *testing.T) {
	v := View{
		{ID: "idle", Models: []string{"m"}, Accepting: true, Slots: 4, Busy: 1},
		{ID: "full-slots", Models: []string{"m"}, Accepting: true, Slots: 2, Busy: 2}, // a queue place
		{ID: "charged", Models: []string{"m"}, Accepting: true, Slots: 2, Pending: 2}, // our own placements fill it
		{ID: "refusing", Models: []string{"m"}, Accepting: false, Slots: 8},           // queue full, paused or hot
		{ID: "other-model", Models: []string{"x"}, Accepting: true, Slots: 8},
		// Saying its queue length: 2 slots + 3 places, 1 busy, 1 queued, 1 ours.
		{ID: "queue-max", Models: []string{"m"}, Accepting: true, Slots: 2, Busy: 1, QueueLen: 1, QueueMax: 3, Pending: 1},
		{ID: "queue-max-full", Models: []string{"m"}, Accepting: true, Slots: 1, Busy: 1, QueueLen: 1, QueueMax: 2, Pending: 1},
	}
	if got := FreeCapacity(v, "m"); got != 3+1+1+2 {
		t.Errorf("FreeCapacity(m) = %d, want 7", got)
	}
	if got := FreeCapacity(v, ""); got != 7+8 {
		t.Errorf("FreeCapacity(any) = %d, want 15", got)
	}
	if got := FreeCapacity(nil, "m"); got != 0 {
		t.Errorf("FreeCapacity of an empty view = %d", got)
	}
}

func TestSwarmETAMs(t *testing.T) {
	v := View{
		{ID: "a", Models: []string{"m"}, Slots: 1, Busy: 1, QueueLen: 3, ServiceMs: map[string]float64{"m": 1000}},
		{ID: "b", Models: []string{"m"}, Slots: 1, Busy: 1, QueueLen: 1, ServiceMs: map[string]float64{"m": 3000}},
		{ID: "c", Models: []string{"x"}, Slots: 8},
	}
	// 6 tasks on the hosts plus 2 ahead over 2 slots at a mean of 2 s:
	// (8/2 + 1) × 2000.
	eta, ok := SwarmETAMs(v, "m", 2, 500)
	if !ok || eta != 10000 {
		t.Errorf("SwarmETAMs = %v, %v; want 10000, true", eta, ok)
	}
	if more, _ := SwarmETAMs(v, "m", 3, 500); more <= eta {
		t.Errorf("one more task ahead did not lengthen the ETA: %v ≤ %v", more, eta)
	}
	if _, ok := SwarmETAMs(v, "nobody-serves", 0, 500); ok {
		t.Error("ETA for a model no peer serves")
	}
}
