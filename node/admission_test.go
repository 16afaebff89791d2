package node

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestFairQueueRoundRobin(t *testing.T) {
	var fq fairQueue[*flight]
	mk := func(name string) *flight { return &flight{task: taskNamed(name)} }
	a1, a2, a3, b1, c1 := mk("a1"), mk("a2"), mk("a3"), mk("b1"), mk("c1")
	fq.push(fairKey{outer: "A"}, a1)
	fq.push(fairKey{outer: "A"}, a2)
	fq.push(fairKey{outer: "A"}, a3)
	fq.push(fairKey{outer: "B"}, b1)
	fq.push(fairKey{outer: "C"}, c1)
	if p := fq.position(b1); p != 2 {
		t.Errorf("B's only task at position %d, want 2 (after A's first)", p)
	}
	if p := fq.position(a3); p != 5 {
		t.Errorf("A's third task at position %d, want 5", p)
	}
	var got []string
	for f, ok := fq.pop(); ok; f, ok = fq.pop() {
		got = append(got, f.task.Prompt)
	}
	want := []string{"a1", "b1", "c1", "a2", "a3"}
	if len(got) != len(want) {
		t.Fatalf("popped %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("popped %v, want %v", got, want)
		}
	}
	if fq.len() != 0 || fq.position(a1) != 0 {
		t.Error("queue not empty after popping everything")
	}
}

func TestRateLimiterTokenBucket(t *testing.T) {
	l := rateLimiter{rate: 2, burst: 3}
	now := time.Unix(1000, 0)
	var a peer.ID = "A"
	for i := 0; i < 3; i++ {
		if ok, _ := l.take(a, now); !ok {
			t.Fatalf("burst take %d refused", i)
		}
	}
	ok, retry := l.take(a, now)
	if ok || retry != 500*time.Millisecond {
		t.Fatalf("4th take: ok=%v retry=%s, want refused with 500ms", ok, retry)
	}
	if ok, _ := l.take("B", now); !ok {
		t.Error("another submitter is limited by A's bucket")
	}
	if ok, _ := l.take(a, now.Add(500*time.Millisecond)); !ok {
		t.Error("no token after refilling for 500ms at 2/s")
	}
}

func taskNamed(s string) protocol.Task { return protocol.Task{Prompt: s} }

func TestFairQueueRemove(t *testing.T) {
	var fq fairQueue[*flight]
	a1, a2, b1 := &flight{task: taskNamed("a1")}, &flight{task: taskNamed("a2")}, &flight{task: taskNamed("b1")}
	fq.push(fairKey{outer: "A"}, a1)
	fq.push(fairKey{outer: "A"}, a2)
	fq.push(fairKey{outer: "B"}, b1)
	if !fq.remove(b1) || fq.remove(b1) {
		t.Fatal("remove: want true once, then false")
	}
	if !fq.remove(a1) || fq.len() != 1 {
		t.Fatal("after removing b1 and a1 one task should remain")
	}
	if f, ok := fq.pop(); !ok || f != a2 {
		t.Fatal("after removing b1 and a1 only a2 should remain")
	}
	if _, ok := fq.pop(); ok {
		t.Fatal("popped from an empty queue")
	}
}

// TestFairQueueTwoLevels: a peer forwarding for several submitters gets one
// peer's share, split round robin between its submitters; a heavy
// submitter cannot starve a light one behind the same peer, nor gain its
// peer more than one peer's share by inventing names.
func TestFairQueueTwoLevels(t *testing.T) {
	var fq fairQueue[string]
	heavy, light, other := fairKey{"daemon", "heavy"}, fairKey{"daemon", "light"}, fairKey{"client", ""}
	for _, x := range []string{"h1", "h2", "h3", "h4"} {
		fq.push(heavy, x)
	}
	fq.push(light, "l1")
	fq.push(other, "o1")
	fq.push(other, "o2")
	fq.push(fairKey{"daemon", "made-up"}, "m1")
	want := []string{"h1", "o1", "l1", "o2", "m1", "h2", "h3", "h4"}
	if got := fq.serviceOrder(); !slices.Equal(got, want) {
		t.Fatalf("service order %v, want %v", got, want)
	}
	if p := fq.position("l1"); p != 3 {
		t.Errorf("light submitter's task at position %d, want 3", p)
	}
	if fq.len() != len(want) {
		t.Fatalf("serviceOrder changed the queue: len %d", fq.len())
	}
	got := fq.drain()
	if !slices.Equal(got, want) {
		t.Fatalf("popped %v, want %v", got, want)
	}
}

// TestFairQueuePushFront: a task that comes back keeps the head of its own
// line, and its key rejoins the rotation at the back.
func TestFairQueuePushFront(t *testing.T) {
	var fq fairQueue[string]
	a, b := fairKey{outer: "a"}, fairKey{outer: "b"}
	fq.push(a, "a2")
	fq.push(b, "b1")
	fq.pushFront(a, "a1")
	fq.pushFront(fairKey{outer: "c"}, "c1")
	want := []string{"a1", "b1", "c1", "a2"}
	if got := fq.drain(); !slices.Equal(got, want) {
		t.Fatalf("popped %v, want %v", got, want)
	}
}

// TestAdmitJoinsSentResult: a flight that has sent its result and is still
// storing it (compute delivers first) serves a request that takes a cached
// answer, and the fetch protocol (storing), but never a fresh request
// (no_cache, verify): that one gets a computation of its own.
func TestAdmitJoinsSentResult(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := noopHost(t)
	s := n.serve
	task, tc, err := protocol.Task{Model: kernel.NoopModel, Prompt: "sent, not stored", Width: 64, Height: 64, Steps: 1}.NormalizeCID()
	if err != nil {
		t.Fatal(err)
	}
	sent := &store.Result{CID: tc}
	f := &flight{task: task, taskCID: tc, done: make(chan struct{}), over: make(chan struct{}), listeners: map[chan *protocol.Event]struct{}{}, waiters: 1}
	f.ctx, f.cancel = context.WithCancel(ctx)
	defer f.cancel()
	s.mu.Lock()
	s.flights[tc] = f
	s.mu.Unlock()
	if _, ok := s.storing(tc); ok {
		t.Error("storing: a result before the flight sent one")
	}
	f.deliver(sent, nil)
	if r, ok := s.storing(tc); !ok || r != sent {
		t.Errorf("storing: %v, %v; want the result sent", r, ok)
	}
	if got, err := s.admitPreviews("peer", "", 0, false, task, tc); err != nil || got != f {
		t.Errorf("a request that takes a cached answer: %p, %v; want to join the flight %p", got, err, f)
	}
	fresh, err := s.admitPreviews("peer", "", 0, true, task, tc)
	if err != nil || fresh == f {
		t.Fatalf("a fresh request: %p, %v; want a flight of its own", fresh, err)
	}
	select {
	case <-fresh.done:
		if fresh.err != nil || fresh.res == nil || fresh.res == sent {
			t.Errorf("the fresh flight: %v, %v; want its own result", fresh.res, fresh.err)
		}
	case <-ctx.Done():
		t.Fatal("the fresh flight never finished")
	}
	<-fresh.over
	if n.KernelRuns() != 1 {
		t.Errorf("%d kernel runs, want 1 (the fresh request's)", n.KernelRuns())
	}
}

// loopbackConfig is a lone test node's config: no data directory, TCP on
// loopback, no mDNS, logs discarded.
func loopbackConfig() Config {
	cfg := DefaultConfig()
	cfg.DataDir, cfg.MDNS = "", false
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

// startLoopback starts a node with cfg; the test closes it.
func startLoopback(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("closing node: %v", err)
		}
	})
	return n
}

// noopHost starts a loopback host whose kernel does nothing.
func noopHost(t *testing.T) *Node {
	cfg := loopbackConfig()
	cfg.Kernel = kernel.Noop{}
	return startLoopback(t, cfg)
}

// A task that starts and ends between two beacons leaves the second one
// looking as idle as the first; the count of starts the beacon comes with
// still says a slot was taken, so that a probing host announces it anew
// (sampling.Changed).
func TestBeaconCountsStarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := noopHost(t)
	s := n.serve
	_, before := s.beacon(ctx, 1)
	task, tc, err := protocol.Task{Model: kernel.NoopModel, Prompt: "in and out between beacons", Width: 64, Height: 64, Steps: 1}.NormalizeCID()
	if err != nil {
		t.Fatal(err)
	}
	f, err := s.admitPreviews("peer", "", 0, false, task, tc)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.over:
	case <-ctx.Done():
		t.Fatal("the task never finished")
	}
	if b, after := s.beacon(ctx, 2); b.Busy != 0 || after != before+1 {
		t.Fatalf("after one task: busy %d, starts %d → %d; want 0 busy and one start", b.Busy, before, after)
	}
}
