package sim

import (
	"math"
	"testing"
)

// TestAnalytic pins the closed forms to values worked by hand: T_d =
// Σ_{i≥1} λ^((dⁱ−d)/(d−1)).
func TestAnalytic(t *testing.T) {
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"M/M/1 at 0.5", MeanTimeChoices(0.5, 1), 2},
		{"M/M/1 at 0.9", MeanTimeChoices(0.9, 1), 10},
		// d = 2: exponents 0, 2, 6, 14, 30: 1 + λ² + λ⁶ + λ¹⁴ + λ³⁰ + …
		{"d=2 at 0.5", MeanTimeChoices(0.5, 2), 1 + 0.25 + math.Pow(0.5, 6) + math.Pow(0.5, 14) + math.Pow(0.5, 30) + math.Pow(0.5, 62)},
		// d = 3: exponents 0, 3, 12, 39: 1 + λ³ + λ¹² + λ³⁹ + …
		{"d=3 at 0.9", MeanTimeChoices(0.9, 3), 1 + math.Pow(0.9, 3) + math.Pow(0.9, 12) + math.Pow(0.9, 39) + math.Pow(0.9, 120)},
		{"M/D/1 at 0.5", MeanTimeMD1(0.5), 1.5},
		{"M/D/1 at 0.9", MeanTimeMD1(0.9), 5.5},
		{"tail d=2 i=3", SteadyTail(0.9, 2, 3), math.Pow(0.9, 7)},
		{"tail d=1 i=3", SteadyTail(0.9, 1, 3), math.Pow(0.9, 3)},
	}
	for _, tt := range tests {
		if math.Abs(tt.got-tt.want) > 1e-12*tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if _, ok := Analytic(DefaultConfig()); ok {
		t.Error("an analytic value for the default swarm")
	}
	if _, ok := Analytic(TextbookConfig(Pod, 2, 0.9, ServiceFixed)); ok {
		t.Error("an analytic value for pod with fixed service")
	}
	if m, ok := Analytic(TextbookConfig(Pod, 2, 0.9, ServiceExp)); !ok || m != MeanTimeChoices(0.9, 2) {
		t.Errorf("Analytic(pod d=2, 0.9) = %v, %v", m, ok)
	}
}

// TestTextbook holds the simulator to the queueing literature (docs/
// scheduling.md, "The textbook case"): identical single-slot hosts,
// Poisson arrivals, unbounded queues and exact state; random choice is
// M/M/1 at each host, the shortest of d random queues gives Mitzenmacher's
// T_d as hosts → ∞, and fixed service halves the mean wait
// (Pollaczek–Khinchine). 400 hosts and 60,000 tasks a case put the sampling
// error near 1 % at load 0.5 and 2 % at 0.9 (over seeds 1–6 the worst case
// was 2.5 % off; the finite-N error of T_d is smaller); the seeds are
// fixed, so the test is deterministic. One run starts in the steady state
// (Config.Steady) instead of from empty queues.
func TestTextbook(t *testing.T) {
	const tol = 0.05
	type tc struct {
		name    string
		policy  Policy
		d       int
		load    float64
		service string
		steady  bool
	}
	cases := []tc{
		{"random, M/M/1", Random, 1, 0.5, ServiceExp, false},
		{"random, M/D/1", Random, 1, 0.5, ServiceFixed, false},
		{"power of two", Pod, 2, 0.9, ServiceExp, false},
		{"power of three", Pod, 3, 0.9, ServiceExp, false},
		{"power of two from the steady state", Pod, 2, 0.9, ServiceExp, true},
	}
	results := map[string]*Result{}
	for _, k := range cases {
		c := TextbookConfig(k.policy, k.d, k.load, k.service)
		c.Hosts, c.Tasks = 400, 60000
		if k.steady {
			c.Steady, c.Warmup = true, 0
		}
		r := run(t, c)
		want, ok := Analytic(c)
		if !ok {
			t.Fatalf("%s: no analytic value", k.name)
		}
		t.Logf("%s at load %.2f: mean time in system %.3f, analytic %.3f (%+.1f %%)", k.name, k.load, r.MeanS, want, 100*(r.MeanS/want-1))
		if math.Abs(r.MeanS/want-1) > tol {
			t.Errorf("%s at load %.2f: mean time in system %.3f, analytic %.3f: off by more than %.0f %%", k.name, k.load, r.MeanS, want, 100*tol)
		}
		if r.Refusals != 0 || r.Retries != 0 {
			t.Errorf("%s: %d refusals, %d retries with unbounded queues", k.name, r.Refusals, r.Retries)
		}
		results[k.name] = r
	}
	// Same arrivals (common random numbers), so the ratio is sharper than
	// either mean.
	mm1, md1 := results["random, M/M/1"], results["random, M/D/1"]
	if ratio := md1.MeanWaitS / mm1.MeanWaitS; math.Abs(ratio-0.5) > 0.08*0.5 {
		t.Errorf("M/D/1 mean wait %.3f over M/M/1's %.3f = %.3f, want 0.5 (Pollaczek–Khinchine)", md1.MeanWaitS, mm1.MeanWaitS, ratio)
	}
	if r := md1.MeanRunS; math.Abs(r-1) > 1e-9 {
		t.Errorf("fixed service ran %v on average, want exactly 1", r)
	}
}

// TestExactState: with --beacon-interval 0 every client sees every queue as
// it is, so gpunet's Place without its random draw (TopK 1) is join the
// shortest queue, which at load 0.8 on 50 servers seldom queues (0.035
// service times on average, against 0.97 for two random choices). Clients
// that saw hosts only as of their last beacon, with no periodic beacons in
// exact state, would see every host idle forever and pile tasks onto one.
func TestExactState(t *testing.T) {
	c := TextbookConfig(Gpunet, 1, 0.8, ServiceExp)
	c.Hosts, c.Tasks, c.Clients = 50, 10000, 3
	c.Place.TopK, c.Place.Choices = 1, 1
	r := run(t, c)
	t.Logf("gpunet, exact state, no draw: mean %.3f, wait %.4f", r.MeanS, r.MeanWaitS)
	if r.MeanWaitS > 0.1 || r.MeanS > 1.1 {
		t.Fatalf("mean wait %.4f, time in system %.3f service times: not join-the-shortest-queue", r.MeanWaitS, r.MeanS)
	}
	pod := TextbookConfig(Pod, 2, 0.8, ServiceExp)
	pod.Hosts, pod.Tasks = 50, 10000
	if p := run(t, pod); !(r.MeanS < p.MeanS) {
		t.Fatalf("join the shortest queue %.3f, not better than two choices %.3f", r.MeanS, p.MeanS)
	}
}

// TestExactStateHeat: exact state shows temperatures as they are too. A
// host's temperature changes between its events, so views refreshed only
// when a host changes would keep an idle host that was hot at its last
// change hot, and filtered out, for good; exact state must do at least as
// well as beacons every 100 ms (here 3.5 s against 3.7 s; views refreshed
// on change only came out at 8.3 s).
func TestExactStateHeat(t *testing.T) {
	c := small(Gpunet)
	c.Hosts, c.Tasks, c.Clients = 100, 5000, 2
	c.BeaconInterval = 0.1
	often := run(t, c)
	c.BeaconInterval = 0
	exact := run(t, c)
	t.Logf("mean time in system: beacons every 100 ms %.2f s, exact state %.2f s", often.MeanS, exact.MeanS)
	if exact.MeanS > 1.1*often.MeanS {
		t.Fatalf("exact state %.2f s, beacons every 100 ms %.2f s", exact.MeanS, often.MeanS)
	}
}
