package sim

import (
	"encoding/json"
	"testing"
)

// smallTrust is a quick lying-host run: 40 hosts, 2 clients, 8,000 tasks
// (200 a host), 20 % liars.
func smallTrust(lie Lie) TrustConfig {
	c := DefaultTrustConfig()
	c.Hosts, c.Clients, c.Tasks = 40, 2, 8000
	c.Load = 0.3
	c.Lie = lie
	return c
}

func runTrust(t *testing.T, c TrustConfig) *TrustResult {
	t.Helper()
	r, err := RunTrust(c)
	if err != nil {
		t.Fatalf("%s: %v", c.Lie, err)
	}
	return r
}

// TestTrustCatchesAlwaysLiar: every always-liar is caught, none of its
// results is accepted (probation holds them until a re-run agrees), and
// once its verdict has reached every client no work is placed on it.
func TestTrustCatchesAlwaysLiar(t *testing.T) {
	c := smallTrust(LieAlways)
	s := newTrust(c)
	s.run()
	r := &s.res
	if r.LiarIdentities != 8 {
		t.Fatalf("%d liar identities, want 8 (20%% of 40)", r.LiarIdentities)
	}
	if r.Caught != r.LiarIdentities {
		t.Errorf("caught %d of %d always-liars", r.Caught, r.LiarIdentities)
	}
	if r.WrongAccepted != 0 {
		t.Errorf("%d wrong results accepted from always-liars on probation, want 0", r.WrongAccepted)
	}
	if r.HonestFramed != 0 {
		t.Errorf("%d honest hosts marked without collusion", r.HonestFramed)
	}
	lastCatch := 0.0
	for _, it := range s.idents {
		if s.hosts[it.host].liar {
			if !it.caught {
				t.Fatalf("liar host %d not caught", it.host)
			}
			lastCatch = max(lastCatch, it.caughtAt)
		}
	}
	late := 0
	for _, run := range s.runs {
		it := &s.idents[run.ident]
		if it.caught && run.at > it.caughtAt+c.VerdictDelayS {
			late++
		}
	}
	if late > 0 {
		t.Errorf("%d runs placed on caught liars after their verdict reached every client", late)
	}
	if lastCatch > s.now/4 {
		t.Errorf("the last always-liar was caught at %.0f s of %.0f: want within the first quarter", lastCatch, s.now)
	}
}

// TestTrustVerificationNeeded: with verification off the liars' wrong
// results are accepted; with it on, at most 0.1 % of accepted results are
// wrong, for every strategy. Switching verification off in RunTrust fails
// the second half.
func TestTrustVerificationNeeded(t *testing.T) {
	for _, lie := range Lies() {
		t.Run(string(lie), func(t *testing.T) {
			c := smallTrust(lie)
			c.Verify = false
			off := runTrust(t, c)
			if off.WrongAccepted == 0 {
				t.Fatalf("verification off: no wrong result accepted from %s liars", lie)
			}
			if off.Compute != 1 {
				t.Errorf("verification off: compute %v, want exactly 1", off.Compute)
			}
			c.Verify = true
			on := runTrust(t, c)
			if on.WrongFrac > 0.001 {
				t.Errorf("verification on: %.3f%% wrong accepted (%d of %d), want ≤ 0.1%%; %.2f%% with it off",
					100*on.WrongFrac, on.WrongAccepted, on.Tasks, 100*off.WrongFrac)
			}
			if on.Caught == 0 {
				t.Errorf("verification on: no liar caught")
			}
		})
	}
}

// TestTrustComputeConsistent: the compute reported is the runs counted,
// which are the runs the simulator made, split into first runs, re-runs
// and arbitrations; with no liar there is no arbitration and the overhead
// is the checks.
func TestTrustComputeConsistent(t *testing.T) {
	for _, lie := range []Lie{"", LieCollude, LieRejoin} {
		c := smallTrust(lie)
		if lie == "" {
			c.Liars = 0
		}
		s := newTrust(c)
		s.run()
		r := s.res
		if r.Runs != len(s.runs) || r.Runs != r.FirstRuns+r.ReRuns+r.Arbitration {
			t.Errorf("%q: runs %d, simulated %d, first %d + re-runs %d + arbitration %d",
				lie, r.Runs, len(s.runs), r.FirstRuns, r.ReRuns, r.Arbitration)
		}
		if r.Compute != float64(r.Runs)/float64(r.Tasks) || r.Tasks != c.Tasks {
			t.Errorf("%q: compute %v for %d runs of %d tasks", lie, r.Compute, r.Runs, r.Tasks)
		}
		if r.FirstRuns != r.Tasks+countFirstRefused(s) {
			t.Errorf("%q: %d first runs for %d tasks and %d refused first results", lie, r.FirstRuns, r.Tasks, countFirstRefused(s))
		}
		if lie == "" && (r.Arbitration != 0 || r.Runs != r.Tasks+r.Checks || r.Refused != 0) {
			t.Errorf("no liars: %d runs, %d tasks, %d checks, %d arbitrations, %d refused", r.Runs, r.Tasks, r.Checks, r.Arbitration, r.Refused)
		}
		if r.Compute <= 1 || r.Compute > 1.5 {
			t.Errorf("%q: compute %.3f, want in (1, 1.5]", lie, r.Compute)
		}
	}
}

// countFirstRefused counts first runs placed after an earlier first run of
// the same task.
func countFirstRefused(s *trustSim) int {
	seen := make([]bool, len(s.tasks))
	n := 0
	for _, r := range s.runs {
		if r.kind != runFirst {
			continue
		}
		if seen[r.task] {
			n++
		}
		seen[r.task] = true
	}
	return n
}

// TestTrustCollusionRare: verifiers are drawn at random, so a colluder's
// partner is drawn for few of its checks, and honest hosts are rarely
// outvoted.
func TestTrustCollusionRare(t *testing.T) {
	c := smallTrust(LieCollude)
	c.Hosts, c.Tasks = 100, 20000
	r := runTrust(t, c)
	// Two candidates per draw out of 100 hosts: about 2 % of the checks of
	// a colluder's results could land on its partner; most checks are of
	// honest hosts, which have no partner.
	if r.Checks == 0 || float64(r.PartnerDraws) > 0.02*float64(r.Checks) {
		t.Errorf("%d of %d checks drawn on the partner", r.PartnerDraws, r.Checks)
	}
	if r.HonestFramed > 2 {
		t.Errorf("%d honest hosts outvoted by colluding pairs", r.HonestFramed)
	}
}

func TestTrustDeterministic(t *testing.T) {
	c := smallTrust(Lie10)
	assertDeterministic(t, func() any {
		r := runTrust(t, c)
		r.WallS = 0
		return r
	}, func() { c.Seed++ })
}

// assertDeterministic checks that two runs of result give the same JSON,
// and that a run after reseed gives another.
func assertDeterministic(t *testing.T, result func() any, reseed func()) {
	t.Helper()
	enc := func() string {
		b, err := json.Marshal(result())
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	a := enc()
	if b := enc(); a != b {
		t.Fatalf("same seed, different results:\n%s\n%s", a, b)
	}
	reseed()
	if enc() == a {
		t.Fatal("a different seed gave the same result")
	}
}

func TestTrustValidate(t *testing.T) {
	for name, f := range map[string]func(*TrustConfig){
		"majority of liars": func(c *TrustConfig) { c.Liars = 0.5 },
		"unknown lie":       func(c *TrustConfig) { c.Lie = "sometimes" },
		"two hosts":         func(c *TrustConfig) { c.Hosts = 2 },
		"overload":          func(c *TrustConfig) { c.Load = 1 },
	} {
		c := DefaultTrustConfig()
		f(&c)
		if _, err := RunTrust(c); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
