package node

import (
	"errors"
	"testing"

	"github.com/gpunet/gpunet/protocol"
)

// The queue takes a TaskCID once until its first record goes out, hands
// what waits over once, reports each provide once (done when sent, failed
// when the node closes first), ignores records of keys it does not hold,
// and takes the TaskCID again once provided.
func TestProvideQueue(t *testing.T) {
	var done, failed int
	q := newProvideQueue(func(n int, err error) {
		switch {
		case err == nil:
			done += n
		case errors.Is(err, errNotProvided):
			failed += n
		default:
			t.Errorf("reported %v", err)
		}
	})
	a, b, other := protocol.RawCID([]byte("a")), protocol.RawCID([]byte("b")), protocol.RawCID([]byte("not queued"))
	if !q.add(a) || !q.add(a) || !q.add(b) {
		t.Fatal("the queue refused a TaskCID")
	}
	keys := q.take()
	if len(keys) != 2 || string(keys[0]) != string(a.Hash()) || string(keys[1]) != string(b.Hash()) {
		t.Fatalf("handed over %v, want a and b once each", keys)
	}
	if again := q.take(); len(again) != 0 || q.hasWaiting() {
		t.Fatalf("handed over %d keys twice", len(again))
	}
	if !q.add(a) || q.hasWaiting() {
		t.Error("a TaskCID handed over but not sent was queued again")
	}

	q.sent(other.Hash())
	q.sent(a.Hash())
	q.sent(a.Hash()) // the same record to a second peer
	if done != 1 {
		t.Errorf("%d provides reported done, want 1 (a; other is not the queue's)", done)
	}
	if !q.add(a) || !q.hasWaiting() {
		t.Error("a provided TaskCID cannot be queued again")
	}

	q.close()
	if done != 1 || failed != 2 {
		t.Errorf("after close: %d done, %d failed; want 1, 2 (b handed over, a waiting)", done, failed)
	}
	if q.add(other) {
		t.Error("a closed queue took a TaskCID")
	}
}
