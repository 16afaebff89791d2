package node

import (
	"testing"

	"github.com/gpunet/gpunet/protocol"
)

// The queue takes a TaskCID once while it waits, drops past its length
// (the reprovide round covers those), and takes it again once done.
func TestProvideQueue(t *testing.T) {
	q := newProvideQueue()
	a := protocol.RawCID([]byte("a"))
	if !q.add(a) || !q.add(a) || len(q.ch) != 1 {
		t.Fatalf("a repeat was queued twice: %d waiting", len(q.ch))
	}
	for i := 1; i < provideQueueLen; i++ {
		if !q.add(protocol.RawCID([]byte{byte(i), byte(i >> 8)})) {
			t.Fatalf("refused at %d of %d", i, provideQueueLen)
		}
	}
	if q.add(protocol.RawCID([]byte("one too many"))) || q.dropped != 1 {
		t.Errorf("a full queue took one more (dropped %d)", q.dropped)
	}
	<-q.ch
	q.done(a)
	if !q.add(a) {
		t.Error("a provided TaskCID cannot be queued again")
	}
}
