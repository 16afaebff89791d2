package node

import (
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestFairQueueRoundRobin(t *testing.T) {
	var fq fairQueue
	mk := func(name string) *flight { return &flight{task: taskNamed(name)} }
	a1, a2, a3, b1, c1 := mk("a1"), mk("a2"), mk("a3"), mk("b1"), mk("c1")
	fq.push("A", a1)
	fq.push("A", a2)
	fq.push("A", a3)
	fq.push("B", b1)
	fq.push("C", c1)
	if p := fq.position(b1); p != 2 {
		t.Errorf("B's only task at position %d, want 2 (after A's first)", p)
	}
	if p := fq.position(a3); p != 5 {
		t.Errorf("A's third task at position %d, want 5", p)
	}
	var got []string
	for f := fq.pop(); f != nil; f = fq.pop() {
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
	var fq fairQueue
	a1, a2, b1 := &flight{task: taskNamed("a1")}, &flight{task: taskNamed("a2")}, &flight{task: taskNamed("b1")}
	fq.push("A", a1)
	fq.push("A", a2)
	fq.push("B", b1)
	if !fq.remove(b1) || fq.remove(b1) {
		t.Fatal("remove: want true once, then false")
	}
	if !fq.remove(a1) || fq.len() != 1 || fq.pop() != a2 || fq.pop() != nil {
		t.Fatal("after removing b1 and a1 only a2 should remain")
	}
}
