package node

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func released(t *ticket) bool {
	select {
	case <-t.ready:
		return true
	default:
		return false
	}
}

// TestWaitRoomReleasesInFairOrder: tasks leave round robin between
// submitters, a returning task keeps the head of its submitter's line, and
// positions follow the order tasks will leave in.
func TestWaitRoomReleasesInFairOrder(t *testing.T) {
	w := newWaitRoom(func() int { return 0 })
	defer w.close()
	a1 := w.enter("a", "m", time.Hour, false)
	a2 := w.enter("a", "m", 0, false)
	a3 := w.enter("a", "m", 0, false)
	b1 := w.enter("b", "m", 0, false)
	if got := []int{w.position(a1), w.position(b1), w.position(a2), w.position(a3)}; !slices.Equal(got, []int{1, 2, 3, 4}) {
		t.Fatalf("positions a1 b1 a2 a3 = %v, want 1 2 3 4", got)
	}
	if n := w.waiting("m"); n != 4 {
		t.Fatalf("waiting(m) = %d, want 4", n)
	}
	w.release(2)
	if !released(a1) || !released(b1) || released(a2) || released(a3) {
		t.Fatal("release(2) did not let go of a's first and b's only task")
	}
	// a1 was refused again: it comes back ahead of a2.
	a1 = w.enter("a", "m", 0, true)
	if p := w.position(a1); p != 1 {
		t.Errorf("a returning task at position %d, want 1", p)
	}
	w.leave(a2)
	if w.position(a2) != 0 || w.position(a3) != 2 || w.waiting("m") != 2 {
		t.Errorf("after a2 left: a2 at %d, a3 at %d, %d waiting; want 0, 2, 2", w.position(a2), w.position(a3), w.waiting("m"))
	}
	w.release(1)
	if !released(a1) || released(a3) {
		t.Error("release(1) did not let go of the returning task first")
	}
}

// TestWaitRoomTimerProbesAndFollowsCapacity: the timer lets go of as many
// tasks as the view says the swarm would take, and of one as a probe when
// it says none; nobody waits forever for a wake-up.
func TestWaitRoomTimerProbesAndFollowsCapacity(t *testing.T) {
	var capacity atomic.Int64
	w := newWaitRoom(func() int { return int(capacity.Load()) })
	defer w.close()
	var ts []*ticket
	for range 5 {
		ts = append(ts, w.enter("a", "m", minRetry, false))
	}
	deadline := time.After(time.Minute)
	wait := func(t *ticket) bool {
		select {
		case <-t.ready:
			return true
		case <-deadline:
			return false
		}
	}
	// No room in the view: one probe goes.
	if !wait(ts[0]) {
		t.Fatal("no probe within a minute while the view showed no room")
	}
	// Room for three: the rest go (the probe may have taken one more first).
	capacity.Store(3)
	if !wait(ts[4]) {
		t.Fatal("tasks still waiting a minute after the view showed room")
	}
	if w.waiting("m") != 0 {
		t.Errorf("%d still waiting", w.waiting("m"))
	}
}

// TestWaitRoomCloseLetsEveryoneGo: closing the node never strands a task.
func TestWaitRoomCloseLetsEveryoneGo(t *testing.T) {
	w := newWaitRoom(func() int { return 0 })
	a := w.enter("a", "m", time.Hour, false)
	w.close()
	if !released(a) {
		t.Error("close left a task waiting")
	}
	if late := w.enter("b", "m", 0, false); !released(late) {
		t.Error("a task entering a closed room waits")
	}
}
