package node

import (
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/gpunet/gpunet/protocol"
)

// resetStream is a session stream the host reset at once, as a host that
// does not serve the protocol does, seen first by a write.
type resetStream struct{ network.Stream }

func (resetStream) Write([]byte) (int, error)        { return 0, network.ErrReset }
func (resetStream) SetWriteDeadline(time.Time) error { return nil }
func (resetStream) Reset() error                     { return nil }

// A session that breaks before the host's first frame sends its tasks to
// streams of their own whichever side sees it first: here the writer, as
// the first task goes out (TestSessionRefusedFallsBack, where the reader
// usually sees it first, flaked on this).
func TestSessionBrokenOnWriteFallsBack(t *testing.T) {
	n := startLoopback(t, loopbackConfig())
	p := startLoopback(t, loopbackConfig()).host.ID()
	cs := &clientSession{n: n, p: p, name: p.String(), ready: make(chan struct{}), tasks: map[uint64]*sessionTask{}}
	close(cs.ready)
	cs.attach(resetStream{})
	defer cs.end(errSessionIdle)
	_, _, err := cs.start(protocol.TaskRequest{Task: protocol.Task{Prompt: "never sent"}})
	if !errors.Is(err, errNoSession) {
		t.Fatalf("a session reset before its first frame: %v; want errNoSession, for a stream of its own", err)
	}
	if _, ok := n.noSession.Load(p); !ok {
		t.Error("the host is not remembered as serving no sessions")
	}
}
