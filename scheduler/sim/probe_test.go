package sim

import (
	"testing"
)

// probeConfig is the gpunet policy with load information by probing, on a
// small swarm.
func probeConfig(hosts, tasks int) Config {
	c := DefaultConfig()
	c.LoadInfo = LoadProbe
	c.Hosts, c.Tasks = hosts, tasks
	return c
}

// TestProbeBytesFlat: a node's load-information bytes do not grow with the
// swarm. From 1,000 to 10,000 hosts, at the same load and so ten times the
// tasks per second, they stay within ±20 % with probes, where the gossip
// model's grow tenfold. The runs are short (a few simulated seconds at
// 10,000 hosts) and measure rates after the warm-up; heat and the size of
// the clients' memories are beside the point and cost time.
func TestProbeBytesFlat(t *testing.T) {
	small, large := probeConfig(1000, 6000), probeConfig(10000, 30000)
	for _, c := range []*Config{&small, &large} {
		c.Thermal, c.Probe.Memory = false, 32
	}
	a, b := run(t, small), run(t, large)
	t.Logf("per node: %.0f B/s at 1,000 hosts, %.0f B/s at 10,000 (gossip: %.0f and %.0f)",
		a.LoadInfoBytesPerNodeS, b.LoadInfoBytesPerNodeS, a.GossipBytesPerNodeS, b.GossipBytesPerNodeS)
	if a.LoadInfoBytesPerNodeS <= 0 || a.ProbeBytesPerHostS <= 0 || a.Probes == 0 || a.Shuffles == 0 {
		t.Fatalf("nothing counted: %+v", a)
	}
	for _, x := range []struct {
		name string
		a, b float64
	}{
		{"per node", a.LoadInfoBytesPerNodeS, b.LoadInfoBytesPerNodeS},
		{"per host", a.ProbeBytesPerHostS, b.ProbeBytesPerHostS},
		{"per task", a.ProbeBytesPerTask, b.ProbeBytesPerTask},
		{"probes per task", a.ProbesPerTask, b.ProbesPerTask},
	} {
		if r := x.b / x.a; r < 0.8 || r > 1.2 {
			t.Errorf("%s: %.1f at 1,000 hosts, %.1f at 10,000 (×%.2f); want within ±20 %%", x.name, x.a, x.b, r)
		}
	}
	// Each placement probes D hosts; hedges and second rounds add some.
	if d := float64(small.Probe.D); a.ProbesPerTask < d || a.ProbesPerTask > 1.5*d {
		t.Errorf("%.2f probes per task with D = %v", a.ProbesPerTask, d)
	}
	// The same measure grows with gossip: the test can tell.
	if r := b.GossipBytesPerNodeS / a.GossipBytesPerNodeS; r < 5 {
		t.Errorf("gossip grew only ×%.1f from 1,000 to 10,000 hosts", r)
	}
	if b.LoadInfoBytesPerNodeS > b.GossipBytesPerNodeS/1000 {
		t.Errorf("probing costs %.0f B/s per node at 10,000 hosts, gossip %.0f", b.LoadInfoBytesPerNodeS, b.GossipBytesPerNodeS)
	}
}

// TestProbeNearOracle: with probes, the gpunet policy stays within 1.12×
// of the oracle's mean and p99 and under 0.3× random's mean, with evenly
// and unevenly spread submitters (one client with half the tasks). Without
// idle notices it does not: they are what finds the few free slots of a
// busy swarm.
func TestProbeNearOracle(t *testing.T) {
	base := probeConfig(300, 8000)
	or := run(t, func() Config { c := base; c.Policy = Oracle; return c }())
	rnd := run(t, func() Config { c := base; c.Policy = Random; return c }())
	for _, heavy := range []float64{0, 0.5} {
		c := base
		c.HeavyClient = heavy
		r := run(t, c)
		Compare([]*Result{r, or, rnd})
		t.Logf("heavy client %.1f: mean %.2f s (%.2f× oracle, %.2f× random), p99 %.2f s (%.2f× oracle)",
			heavy, r.MeanS, r.MeanVsOracle, r.MeanVsRandom, r.P99S, r.P99VsOracle)
		if r.LoadInfo != LoadProbe || r.Probes == 0 || r.IdleNotices == 0 {
			t.Fatalf("not probing: %+v", r)
		}
		if r.MeanVsOracle > 1.12 || r.P99VsOracle > 1.12 || r.MeanVsRandom > 0.3 {
			t.Errorf("heavy client %.1f: mean %.2f× and p99 %.2f× the oracle's, mean %.2f× random's; want ≤ 1.12, 1.12, 0.3",
				heavy, r.MeanVsOracle, r.P99VsOracle, r.MeanVsRandom)
		}
	}
	c := base
	c.Probe.Notify = 0
	off := run(t, c)
	Compare([]*Result{off, or})
	t.Logf("without idle notices: mean %.2f× and p99 %.2f× the oracle's", off.MeanVsOracle, off.P99VsOracle)
	if off.MeanVsOracle < 1.15 {
		t.Errorf("without idle notices the mean is %.2f× the oracle's: the test no longer tells what they do", off.MeanVsOracle)
	}
}

// TestProbeChurn: with hosts leaving every minute or so and coming back as
// new peers, every task completes exactly once, probes to hosts that left
// fail (and the entries are forgotten), and the new peers, made known by
// Cyclon's join, get work.
func TestProbeChurn(t *testing.T) {
	c := probeConfig(200, 6000)
	c.Churn, c.Repeat = 2, 0.2
	s := newSim(c)
	s.loop()
	s.summarise()
	r := &s.res
	if r.Completed != r.Tasks || r.DoubleFinish != 0 || r.WrongHits != 0 {
		t.Fatalf("tasks %d completed %d double %d wrong %d", r.Tasks, r.Completed, r.DoubleFinish, r.WrongHits)
	}
	if r.HostsLeft < 50 || r.ProbesFailed == 0 || r.Requeued == 0 {
		t.Fatalf("churn not exercised: %d left, %d probes failed, %d requeued", r.HostsLeft, r.ProbesFailed, r.Requeued)
	}
	onNew := 0
	for i := range s.tasks {
		if s.tasks[i].epoch > 0 {
			onNew++
		}
	}
	t.Logf("%d hosts left; %.0f %% of probes went to hosts that had left; %d tasks ran on rejoined peers",
		r.HostsLeft, 100*float64(r.ProbesFailed)/float64(r.Probes), onNew)
	if onNew < r.Tasks/20 {
		t.Errorf("only %d of %d tasks ran on peers that rejoined", onNew, r.Tasks)
	}
	// Without idle notices a client's view is fed only by replies, and
	// one that forgets dead hosts faster than it learns live ones must
	// fetch a fresh sample rather than wait for ever.
	c.Probe.Notify = 0
	defer func(d float64) { drainLimit = d }(drainLimit)
	drainLimit = 500 // 2,000 s: a lost task fails the run in seconds, not minutes
	r = run(t, c)
	if r.Completed != r.Tasks {
		t.Fatalf("without notices: tasks %d completed %d", r.Tasks, r.Completed)
	}
}

// TestProbeJoin: a host that comes back as a new peer is at once in about
// ViewSize other hosts' views (Cyclon's join), so clients hear of it
// through replies within a few probes, not one shuffle period at a time.
func TestProbeJoin(t *testing.T) {
	c := probeConfig(300, 10)
	c.Churn = 0.01 // the leave/join machinery is on; the test drives it
	s := newSim(c)
	h := &s.hosts[7]
	h.leave(s, 0)
	s.join(7)
	known := 0
	for i, v := range s.pr.views {
		for _, e := range v {
			if e.ID == h.id && i != 7 {
				known++
			}
		}
	}
	if want := c.Probe.ViewSize / 2; known < want {
		t.Fatalf("the new peer %s is in %d views just after joining, want ≥ %d", h.id, known, want)
	}
}

func TestProbeDeterministic(t *testing.T) {
	c := probeConfig(200, 2000)
	c.Churn, c.Clients, c.HeavyClient = 2, 3, 0.5
	assertDeterministic(t, func() any {
		r := run(t, c)
		r.WallS = 0
		return r
	}, func() { c.Seed++ })
}

// TestHeavyClient: client 0 submits its share of the tasks, the others
// split the rest.
func TestHeavyClient(t *testing.T) {
	c := probeConfig(100, 1)
	c.Clients, c.HeavyClient = 5, 0.5
	s := newSim(c)
	counts := make([]int, c.Clients)
	const n = 40000
	for range n {
		counts[s.submitter()]++
	}
	if f := float64(counts[0]) / n; f < 0.48 || f > 0.52 {
		t.Fatalf("client 0 submitted %.3f of the tasks, want 0.5", f)
	}
	for i := 1; i < c.Clients; i++ {
		if f := float64(counts[i]) / n; f < 0.11 || f > 0.14 {
			t.Fatalf("client %d submitted %.3f, want 0.125", i, f)
		}
	}
}

func TestProbeValidate(t *testing.T) {
	for i, m := range []func(c *Config){
		func(c *Config) { c.LoadInfo = "telepathy" },
		func(c *Config) { c.HeavyClient = 1 },
		func(c *Config) { c.HeavyClient = -0.1 },
		func(c *Config) { c.HeavyClient, c.Clients = 0.5, 1 },
		func(c *Config) { c.LoadInfo, c.Probe.D = LoadProbe, 0 },
	} {
		c := DefaultConfig()
		m(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("case %d: accepted", i)
		}
	}
	c := DefaultConfig()
	c.Probe.D = 0 // ignored unless probing
	if err := c.Validate(); err != nil {
		t.Errorf("gossip with an unused bad probe config: %v", err)
	}
}
