package node_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
)

// TestHostRefusesMalformedRequests plays a hostile peer on the raw task
// protocol: every bad request gets a bad_request error event, the host
// runs nothing, and it still serves a good task afterwards.
func TestHostRefusesMalformedRequests(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	h := sw.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw := rawHostTo(t, ctx, h)
	huge := binary.AppendUvarint(nil, 1<<60)
	goodTask := mustNormalize(t, smallTask)
	okReq, err := protocol.Marshal(protocol.TaskRequest{Task: goodTask})
	if err != nil {
		t.Fatal(err)
	}
	unnormal := goodTask
	unnormal.Prompt = "  a quiet   harbour at dusk "
	unReq, _ := protocol.Marshal(protocol.TaskRequest{Task: unnormal})
	cases := map[string][]byte{
		"huge length prefix":     huge,
		"over the request cap":   frame(make([]byte, protocol.MaxRequestBytes+1)),
		"not CBOR":               frame([]byte("hello, host")),
		"truncated frame":        append(binary.AppendUvarint(nil, 100), 1, 2, 3),
		"task not in normalform": frame(unReq),
		"trailing bytes":         frame(append(append([]byte(nil), okReq...), 0)),
	}
	for name, payload := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := raw.NewStream(ctx, h.ID(), lp2pproto.ID(protocol.TaskProtocol))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_ = s.SetDeadline(time.Now().Add(15 * time.Second))
			if _, err := s.Write(payload); err != nil {
				t.Fatal(err)
			}
			_ = s.CloseWrite()
			body, err := protocol.ReadFrame(bufio.NewReader(s), protocol.MaxEventBytes)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			e, err := protocol.DecodeEvent(body)
			if err != nil {
				t.Fatal(err)
			}
			if e.Type != protocol.EventError || e.Code != protocol.CodeBadRequest {
				t.Errorf("got %s/%s (%s), want error/bad_request", e.Type, e.Code, e.Message)
			}
		})
	}
	if runs := h.KernelRuns(); runs != 0 {
		t.Errorf("kernel ran %d times for bad requests", runs)
	}
	c := addClient(t, sw)
	if _, err := c.SubmitTo(ctx, h.ID(), smallTask, node.SubmitOptions{}); err != nil {
		t.Fatalf("host no longer serves after bad requests: %v", err)
	}
}

func frame(b []byte) []byte { return append(binary.AppendUvarint(nil, uint64(len(b))), b...) }

// TestSilentHostIsAbandoned: a peer that takes the task stream and then
// says nothing is given up after EventIdleTimeout, not TaskTimeout.
func TestSilentHostIsAbandoned(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090"},
		Tune: func(c *node.Config) { c.EventIdleTimeout = 300 * time.Millisecond }})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	silent, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	release := make(chan struct{})
	defer close(release)
	silent.SetStreamHandler(lp2pproto.ID(protocol.TaskProtocol), func(s network.Stream) {
		<-release // read nothing, answer nothing
		s.Reset()
	})
	c := addClient(t, sw)
	c.Host().Peerstore().AddAddrs(silent.ID(), silent.Addrs(), time.Minute)
	start := time.Now()
	_, err = c.SubmitTo(ctx, silent.ID(), smallTask, node.SubmitOptions{})
	if err == nil {
		t.Fatal("a silent host produced a result")
	}
	if ctx.Err() != nil {
		t.Fatalf("gave up only when the test's own deadline passed (%s): %v", time.Since(start), err)
	}
}

// answer is one task's events as a raw client reads them, each with when
// it arrived.
type answer struct {
	events []protocol.Event
	at     []time.Time
}

// rawTask sends req on a fresh task stream from raw to host and reads
// every event until the host closes the stream.
func rawTask(t *testing.T, ctx context.Context, raw interface {
	NewStream(context.Context, peer.ID, ...lp2pproto.ID) (network.Stream, error)
}, host peer.ID, req protocol.TaskRequest) answer {
	t.Helper()
	s, err := raw.NewStream(ctx, host, lp2pproto.ID(protocol.TaskProtocol))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	if err := protocol.WriteMsg(s, req); err != nil {
		t.Fatal(err)
	}
	var a answer
	r := bufio.NewReader(s)
	for {
		body, err := protocol.ReadFrame(r, protocol.MaxEventBytes)
		if errors.Is(err, io.EOF) {
			return a
		}
		if err != nil {
			t.Fatalf("after %d events: %v", len(a.events), err)
		}
		e, err := protocol.DecodeEvent(body)
		if err != nil {
			t.Fatal(err)
		}
		a.events, a.at = append(a.events, *e), append(a.at, time.Now())
	}
}

// TestHostAnswerOrder: however a host batches its writes (events that are
// ready together go out in one write; a task expected to take less than a
// millisecond is answered whole), a client reads what docs/protocol.md
// orders: where the task stands first (step 0: it started at once), no
// step twice, the last step, one block per output, the result, the end of
// the stream.
func TestHostAnswerOrder(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"h100"}, Kernel: func(int) kernel.Kernel { return kernel.Noop{} }})
	h := sw.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw := rawHostTo(t, ctx, h)
	// The first task teaches the host the model's run time; the later ones
	// take the quick answer.
	for i := range 4 {
		task := mustNormalize(t, protocol.Task{Model: kernel.NoopModel, Prompt: "in order", Seed: uint64(i + 1), Width: 64, Height: 64, Steps: 1})
		a := rawTask(t, ctx, raw, h.ID(), protocol.TaskRequest{Task: task, NoCache: true})
		var types []string
		steps := map[uint32]bool{}
		for _, e := range a.events {
			types = append(types, e.Type)
			if e.Type == protocol.EventProgress {
				if steps[e.Step] {
					t.Errorf("task %d: step %d sent twice: %v", i, e.Step, types)
				}
				steps[e.Step] = true
			}
		}
		n := len(a.events)
		switch {
		case n < 4:
			t.Fatalf("task %d: events %v, want progress 0, progress 1, block, result", i, types)
		case a.events[0].Type != protocol.EventProgress || a.events[0].Step != 0:
			t.Errorf("task %d: first event %s step %d, want progress step 0", i, a.events[0].Type, a.events[0].Step)
		case !steps[1]:
			t.Errorf("task %d: no progress event for the last step: %v", i, types)
		case a.events[n-2].Type != protocol.EventBlock || a.events[n-1].Type != protocol.EventResult || a.events[n-1].Cached:
			t.Errorf("task %d: events %v, want a block then a fresh result last", i, types)
		}
	}
}

// TestHostAnswersLongTaskAtOnce: a task that takes a while hears where it
// stands as soon as it is admitted, long before the result: only a task
// expected within the quick answer's millisecond is answered whole.
func TestHostAnswersLongTaskAtOnce(t *testing.T) {
	sw := startSwarm(t, "rtx3060") // a simulated GPU's speed: tens of milliseconds a task
	h := sw.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A raw peer connected to the host: a fresh client may not have the
	// host's addresses yet.
	raw := rawHostTo(t, ctx, h)
	for i := range 2 { // the second after the host has learnt the run time
		task := mustNormalize(t, protocol.Task{Prompt: "a long answer", Seed: uint64(i + 1), Width: 256, Height: 256, Steps: 8})
		a := rawTask(t, ctx, raw, h.ID(), protocol.TaskRequest{Task: task, NoCache: true})
		n := len(a.events)
		if n < 3 || a.events[n-1].Type != protocol.EventResult {
			t.Fatalf("task %d: %d events, the last %v; want progress, block, result", i, n, a.events)
		}
		if wait := a.at[n-1].Sub(a.at[0]); wait < 5*time.Millisecond {
			t.Errorf("task %d: first event %s before the result; want it at admission, well before", i, wait)
		}
	}
}

// rawHostTo is a bare libp2p host on loopback, connected to h, for a test
// that speaks the task protocol by hand; it closes when the test ends.
func rawHostTo(t *testing.T, ctx context.Context, h *node.Node) host.Host {
	t.Helper()
	raw, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if err := raw.Connect(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	return raw
}
