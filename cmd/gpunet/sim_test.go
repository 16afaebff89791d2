package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/gpunet/gpunet/scheduler/sim"
)

// runSim runs `gpunet sim` with args and returns what it printed.
func runSim(t *testing.T, args ...string) string {
	t.Helper()
	cmd := newSimCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("gpunet sim %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// TestSimLoadInfoProbe: the probe flags reach the simulator, a policy list
// runs each policy, and the gpunet result carries the load-information
// bytes and its ratios to the oracle and random.
func TestSimLoadInfoProbe(t *testing.T) {
	small := []string{"--hosts", "200", "--tasks", "2000", "--load-info", "probe", "--policy", "gpunet,oracle,random"}
	var rs []sim.Result
	if err := json.Unmarshal([]byte(runSim(t, append(small, "--json", "--probe-d", "2", "--heavy-client", "0.5")...)), &rs); err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || rs[0].Policy != sim.Gpunet || rs[1].Policy != sim.Oracle || rs[2].Policy != sim.Random {
		t.Fatalf("policies %v", rs)
	}
	g := rs[0]
	if g.LoadInfo != sim.LoadProbe || g.LoadInfoBytesPerNodeS <= 0 || g.GossipBytesPerNodeS <= g.LoadInfoBytesPerNodeS {
		t.Fatalf("load info %q: %v B/s per node, gossip %v", g.LoadInfo, g.LoadInfoBytesPerNodeS, g.GossipBytesPerNodeS)
	}
	if g.MeanVsOracle <= 0 || g.P99VsOracle <= 0 || g.MeanVsRandom <= 0 {
		t.Fatalf("ratios not set: %v %v %v", g.MeanVsOracle, g.P99VsOracle, g.MeanVsRandom)
	}
	// --probe-d 2: two probes a placement, a few more for hedges.
	if g.ProbesPerTask < 2 || g.ProbesPerTask > 3 {
		t.Fatalf("%.2f probes per task with --probe-d 2", g.ProbesPerTask)
	}
	// --heavy-client 0.5: one client pays for half the probes.
	if g.ProbeBytesPerClientSMax < 1.5*g.ProbeBytesPerClientS {
		t.Fatalf("busiest client %.0f B/s, mean %.0f: submitters look even", g.ProbeBytesPerClientSMax, g.ProbeBytesPerClientS)
	}

	text := runSim(t, small...)
	for _, want := range []string{"load info: probe, d=3", "per node", "gossip would be", "the oracle's", "random's"} {
		if !strings.Contains(text, want) {
			t.Errorf("text output lacks %q:\n%s", want, text)
		}
	}
	// Gossip runs print as before.
	if text := runSim(t, "--hosts", "100", "--tasks", "500"); strings.Contains(text, "load info") {
		t.Errorf("a gossip run printed the probe summary:\n%s", text)
	}
}
