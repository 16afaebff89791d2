package node_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
)

func testLogger(t testing.TB) *slog.Logger { return nodetest.Logger(t) }

// startSwarm starts hosts behind a bootstrap daemon: clients know only the
// daemon's address, so they can reach hosts only through the DHT.
func startSwarm(t *testing.T, profiles ...string) *swarm.Swarm {
	t.Helper()
	return startSwarmWith(t, swarm.Options{Profiles: profiles})
}

// startSwarmWith starts a swarm from o behind a bootstrap daemon, logging
// through t, and closes it when the test ends.
func startSwarmWith(t *testing.T, o swarm.Options) *swarm.Swarm {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o.BootstrapDaemon = true
	o.Logger = testLogger(t)
	sw, err := swarm.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sw.Close(); err != nil {
			t.Errorf("closing swarm: %v", err)
		}
	})
	return sw
}

func addClient(t *testing.T, sw *swarm.Swarm) *node.Node {
	t.Helper()
	c, err := sw.AddClient(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func kernelRuns(sw *swarm.Swarm) (total uint64, byHost map[string]uint64) {
	byHost = map[string]uint64{}
	for _, h := range sw.Hosts {
		byHost[h.ID().String()] = h.KernelRuns()
		total += h.KernelRuns()
	}
	return total, byHost
}

var smallTask = protocol.Task{Prompt: "a quiet harbour at dusk", Width: 64, Height: 64, Steps: 2}

func TestSubmitFindsHostsThroughDHTAndCaches(t *testing.T) {
	sw := startSwarm(t, "rtx4090", "a100", "rtx3060")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := addClient(t, sw)

	// The client was given only the daemon's address: it learns of hosts
	// from the DHT (provider records, peer routing) and their beacons.
	res, err := a.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Cache != node.CacheMiss {
		t.Errorf("first submit: cache %q, want %q", res.Cache, node.CacheMiss)
	}
	want, _ := mustNormalize(t, smallTask).CID()
	if !res.TaskCID.Equals(want) || !res.Manifest.TaskCID.Equals(want) {
		t.Errorf("task CID %s, manifest says %s, want %s", res.TaskCID, res.Manifest.TaskCID, want)
	}
	for i, o := range res.Manifest.Outputs {
		if err := protocol.VerifyBlock(o.CID.Cid, res.Blocks[i]); err != nil {
			t.Errorf("output %d: %v", i, err)
		}
	}
	total, before := kernelRuns(sw)
	if total != 1 || before[res.Host.String()] != 1 {
		t.Fatalf("kernel runs %v after one task by %s, want exactly one there", before, res.Host)
	}

	// Again from the same client: its own store answers.
	again, err := a.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Cache != node.CacheLocal || !again.ResultCID.Equals(res.ResultCID) {
		t.Errorf("repeat: cache %q result %s, want local %s", again.Cache, again.ResultCID, res.ResultCID)
	}

	// From a second client: answered by a host's store, no kernel run.
	b := addClient(t, sw)
	other, err := b.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if other.Cache != node.CacheNetwork {
		t.Errorf("second client: cache %q, want %q", other.Cache, node.CacheNetwork)
	}
	if !bytes.Equal(other.Blocks[0], res.Blocks[0]) || !other.ResultCID.Equals(res.ResultCID) {
		t.Error("second client got different bytes for the same task")
	}
	if total, _ := kernelRuns(sw); total != 1 {
		t.Errorf("kernel runs %d after a cached repeat, want 1", total)
	}

	// --no-cache computes again.
	fresh, err := b.Submit(ctx, smallTask, node.SubmitOptions{NoCache: true})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Cache != node.CacheMiss {
		t.Errorf("no-cache: cache %q, want miss", fresh.Cache)
	}
	if total, _ := kernelRuns(sw); total != 2 {
		t.Errorf("kernel runs %d after --no-cache, want 2", total)
	}
	if !bytes.Equal(fresh.Blocks[0], res.Blocks[0]) {
		t.Error("recomputed image differs: the kernel is not deterministic")
	}
}

func TestClosedHostIsAvoided(t *testing.T) {
	sw := startSwarm(t, "rtx4090", "a100", "rtx3060")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := addClient(t, sw)
	first, err := a.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Close the host that served it: for this TaskCID it is every client's
	// first choice, and the DHT still names it as a provider.
	for _, h := range sw.Hosts {
		if h.ID() == first.Host {
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := addClient(t, sw)
	res, err := b.Submit(ctx, smallTask, node.SubmitOptions{NoCache: true})
	if err != nil {
		t.Fatalf("submit after the host closed: %v", err)
	}
	if res.Host == first.Host {
		t.Fatalf("served by the closed host %s", res.Host)
	}
	if !bytes.Equal(res.Blocks[0], first.Blocks[0]) {
		t.Error("another host computed different bytes for the same task")
	}
}

func TestBadTaskIsRefusedBeforeWork(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := addClient(t, sw)
	_, err := a.Submit(ctx, protocol.Task{Prompt: "   "}, node.SubmitOptions{})
	if !errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("empty prompt: %v, want ErrBadTask", err)
	}
	if err := sw.WaitViews(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = a.Submit(ctx, protocol.Task{Prompt: "x", Model: "no/such-model"}, node.SubmitOptions{})
	if err == nil || !strings.Contains(err.Error(), protocol.DefaultModel) {
		t.Errorf("unknown model: %v; want an error naming the model the swarm serves (%s)", err, protocol.DefaultModel)
	}
	if total, _ := kernelRuns(sw); total != 0 {
		t.Errorf("kernel ran %d times for invalid tasks", total)
	}
}

func mustNormalize(t *testing.T, task protocol.Task) protocol.Task {
	t.Helper()
	n, err := task.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestHostServesItsOwnSubmissions: a host alone on the network runs what
// is submitted on it on its own GPU, through the same admission as any
// submitter's.
func TestHostServesItsOwnSubmissions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx3060"}})
	h := sw.Hosts[0]
	task := protocol.Task{Prompt: "a lighthouse, by itself", Width: 128, Height: 128, Steps: 3}
	var stages []string
	res, err := h.Submit(ctx, task, node.SubmitOptions{Progress: func(p node.Progress) { stages = append(stages, p.Stage) }})
	if err != nil {
		t.Fatalf("a lone host submitting to itself: %v", err)
	}
	if res.Host != h.ID() || res.Cache != node.CacheMiss || h.KernelRuns() != 1 {
		t.Errorf("result from %s, cache %q, %d kernel runs; want this host, a miss, 1 run (stages %v)", res.Host, res.Cache, h.KernelRuns(), stages)
	}
	if err := protocol.VerifyBlock(res.Manifest.Outputs[0].CID.Cid, res.Blocks[0]); err != nil {
		t.Error(err)
	}
	again, err := h.Submit(ctx, task, node.SubmitOptions{})
	if err != nil || again.Cache != node.CacheLocal || h.KernelRuns() != 1 {
		t.Errorf("the repeat: %v, cache %q, %d kernel runs; want a local hit", err, again.Cache, h.KernelRuns())
	}
	if _, err := h.Submit(ctx, task, node.SubmitOptions{NoCache: true}); err != nil || h.KernelRuns() != 2 {
		t.Errorf("--no-cache on itself: %v, %d kernel runs; want 2", err, h.KernelRuns())
	}
	h.Pause()
	// Refused as paused, it would retry for half a minute: a short wait is
	// enough to see it refused.
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	defer pcancel()
	var refused bool
	_, err = h.Submit(pctx, protocol.Task{Prompt: "while paused", Width: 64, Height: 64, Steps: 1}, node.SubmitOptions{Progress: func(p node.Progress) {
		refused = refused || (p.Stage == "refused" && strings.Contains(p.Message, "paused"))
	}})
	if err == nil || !refused || h.KernelRuns() != 2 {
		t.Errorf("a paused lone host: %v, refused %v, %d kernel runs; want a refusal as paused and no run", err, refused, h.KernelRuns())
	}
}
