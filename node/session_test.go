package node_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
)

// hostSwarm is one host running k, with room for many tasks at once.
func hostSwarm(t *testing.T, k kernel.Kernel, tune func(*node.Config)) *swarm.Swarm {
	return startSwarmWith(t, swarm.Options{Profiles: []string{"h100"}, Slots: 4,
		Kernel: func(int) kernel.Kernel { return k },
		Tune: func(c *node.Config) {
			c.RateLimit = 0
			c.QueueLen = 64
			if tune != nil {
				tune(c)
			}
		}})
}

// sessionClient starts one host running k (hostSwarm) and a client that
// identify has told the host serves sessions.
func sessionClient(t *testing.T, k kernel.Kernel) (ctx context.Context, sw *swarm.Swarm, h, c *node.Node) {
	t.Helper()
	sw = hostSwarm(t, k, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	h, c = sw.Hosts[0], addClient(t, sw)
	waitServes(t, ctx, c, h.ID(), protocol.SessionProtocol, true)
	return ctx, sw, h, c
}

// serves reports whether n's peerstore lists protocol proto for p, as
// identify told it.
func serves(n *node.Node, p peer.ID, proto string) bool {
	ok, _ := n.Host().Peerstore().SupportsProtocols(p, lp2pproto.ID(proto))
	return len(ok) > 0
}

// waitServes waits until n's peerstore says whether p serves proto.
func waitServes(t *testing.T, ctx context.Context, n *node.Node, p peer.ID, proto string, want bool) {
	t.Helper()
	for serves(n, p, proto) != want {
		if ctx.Err() != nil {
			t.Fatalf("identify never said %s serves %s: %v", p, proto, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// submitMany sends k distinct no-op tasks to h at once from c and returns
// the first error.
func submitMany(ctx context.Context, c *node.Node, h peer.ID, k int, prompt string) error {
	var wg sync.WaitGroup
	errs := make([]error, k)
	for i := range k {
		wg.Go(func() {
			task := protocol.Task{Model: kernel.NoopModel, Prompt: prompt, Seed: uint64(i + 1), Width: 64, Height: 64, Steps: 1}
			res, err := c.SubmitTo(ctx, h, task, node.SubmitOptions{NoCache: true})
			if err == nil && res.Manifest.Task.Seed != task.Seed {
				err = fmt.Errorf("task %d got the result of seed %d", i, res.Manifest.Task.Seed)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// TestTasksShareOneSession: once identify says a host serves sessions, a
// client sends its tasks for that host on one session, many at once, each
// answered with its own result. The host's task-stream protocol is
// switched off to show it: every task still succeeds, where a client
// without sessions fails them all.
func TestTasksShareOneSession(t *testing.T) {
	ctx, sw, h, c := sessionClient(t, kernel.Noop{})
	h.Host().RemoveStreamHandler(lp2pproto.ID(protocol.TaskProtocol))
	waitServes(t, ctx, c, h.ID(), protocol.TaskProtocol, false)

	if err := submitMany(ctx, c, h.ID(), 48, "on one session"); err != nil {
		t.Fatalf("tasks on a session: %v", err)
	}
	streams := 0
	for _, conn := range c.Host().Network().ConnsToPeer(h.ID()) {
		for _, st := range conn.GetStreams() {
			if st.Protocol() == lp2pproto.ID(protocol.SessionProtocol) {
				streams++
			}
		}
	}
	if streams != 1 {
		t.Errorf("%d session streams open to the host after 48 tasks; want 1", streams)
	}

	noSessions, err := sw.AddClientTuned(ctx, func(c *node.Config) { c.NoSessions = true })
	if err != nil {
		t.Fatal(err)
	}
	waitServes(t, ctx, noSessions, h.ID(), protocol.TaskProtocol, false)
	if err := submitMany(ctx, noSessions, h.ID(), 1, "on a stream"); err == nil {
		t.Fatal("a client without sessions got a result from a host that serves no task streams")
	}
}

// TestSessionRefusedFallsBack: a host that stopped serving sessions after
// identify said it did (or a peerstore that is stale) costs a task nothing:
// the client sends it on a task stream, and the next ones too.
func TestSessionRefusedFallsBack(t *testing.T) {
	ctx, _, h, c := sessionClient(t, kernel.Noop{})
	h.Host().RemoveStreamHandler(lp2pproto.ID(protocol.SessionProtocol))
	// The client still believes the host serves sessions.
	c.Host().Peerstore().AddProtocols(h.ID(), lp2pproto.ID(protocol.SessionProtocol))
	if err := submitMany(ctx, c, h.ID(), 8, "fallen back"); err != nil {
		t.Fatalf("tasks for a host that refuses sessions: %v", err)
	}
}

// sessionPeer is a raw peer speaking the session protocol by hand.
type sessionPeer struct {
	t  *testing.T
	st network.Stream
	r  *bufio.Reader
}

func openSession(t *testing.T, ctx context.Context, h *node.Node) *sessionPeer {
	t.Helper()
	raw := rawHostTo(t, ctx, h)
	st, err := raw.NewStream(ctx, h.ID(), lp2pproto.ID(protocol.SessionProtocol))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Reset() })
	_ = st.SetDeadline(time.Now().Add(20 * time.Second))
	return &sessionPeer{t: t, st: st, r: bufio.NewReader(st)}
}

func (p *sessionPeer) send(m protocol.SessionRequest) {
	p.t.Helper()
	if err := protocol.WriteMsg(p.st, m); err != nil {
		p.t.Fatal(err)
	}
}

func (p *sessionPeer) request(id uint64, req protocol.TaskRequest) {
	p.t.Helper()
	body, err := protocol.Marshal(req)
	if err != nil {
		p.t.Fatal(err)
	}
	p.send(protocol.SessionRequest{ID: id, Request: body})
}

// answers reads host frames until every ID in want has its last event, and
// returns each ID's events.
func (p *sessionPeer) answers(want ...uint64) map[uint64][]*protocol.Event {
	p.t.Helper()
	got := map[uint64][]*protocol.Event{}
	open := map[uint64]bool{}
	for _, id := range want {
		open[id] = true
	}
	for len(open) > 0 {
		body, err := protocol.ReadFrame(p.r, protocol.MaxSessionEventBytes)
		if err != nil {
			p.t.Fatalf("waiting for tasks %v: %v", open, err)
		}
		id, evs, err := protocol.DecodeSessionEvents(body)
		if err != nil {
			p.t.Fatal(err)
		}
		if !open[id] {
			p.t.Fatalf("events for task %d, which is not waiting", id)
		}
		got[id] = append(got[id], evs...)
		if last := evs[len(evs)-1].Type; last == protocol.EventResult || last == protocol.EventError {
			delete(open, id)
		}
	}
	return got
}

// TestHostSessionRules plays a client on the session protocol by hand: a
// bad request is refused under its own ID and the session goes on; a
// cancelled request gets nothing more; a request ID that does not increase
// or a frame that does not decode ends the session, and the host serves
// the next one.
func TestHostSessionRules(t *testing.T) {
	sw := hostSwarm(t, kernel.Noop{}, nil)
	h := sw.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	task := func(seed uint64) protocol.TaskRequest {
		return protocol.TaskRequest{Task: mustNormalize(t, protocol.Task{Model: kernel.NoopModel, Prompt: "by hand", Seed: seed, Width: 64, Height: 64, Steps: 1}), NoCache: true}
	}

	p := openSession(t, ctx, h)
	bad := task(1)
	bad.Previews = protocol.MaxPreviews + 1
	p.request(1, bad)
	p.request(2, task(2))
	p.request(5, task(5))
	got := p.answers(1, 2, 5)
	if e := got[1][len(got[1])-1]; e.Type != protocol.EventError || e.Code != protocol.CodeBadRequest {
		t.Errorf("bad request: last event %s/%s, want error/bad_request", e.Type, e.Code)
	}
	for _, id := range []uint64{2, 5} {
		evs := got[id]
		last := evs[len(evs)-1]
		if last.Type != protocol.EventResult {
			t.Fatalf("task %d: last event %s %s", id, last.Type, last.Message)
		}
		m, err := protocol.DecodeManifest(last.Manifest)
		if err != nil || m.Task.Seed != id {
			t.Errorf("task %d: result for seed %v (%v)", id, m, err)
		}
	}

	// A cancelled request: withdrawn, nothing more comes for it; the
	// session still serves the next.
	p.send(protocol.SessionRequest{ID: 6, Cancel: true}) // not in flight: ignored
	p.request(7, task(7))
	if got := p.answers(7); got[7][len(got[7])-1].Type != protocol.EventResult {
		t.Fatalf("after a stray cancellation: %v", got[7])
	}

	// An ID that does not increase ends the session.
	p.request(7, task(8))
	if _, err := protocol.ReadFrame(p.r, protocol.MaxSessionEventBytes); err == nil {
		t.Error("the host answered a request whose ID did not increase")
	}
	// So does a frame that is not a session request.
	q := openSession(t, ctx, h)
	if _, err := q.st.Write(frame([]byte("hello, host"))); err != nil {
		t.Fatal(err)
	}
	if _, err := protocol.ReadFrame(q.r, protocol.MaxSessionEventBytes); err == nil {
		t.Error("the host answered garbage on a session")
	}
	c := addClient(t, sw)
	if err := submitMany(ctx, c, h.ID(), 4, "after garbage"); err != nil {
		t.Fatalf("host no longer serves after broken sessions: %v", err)
	}
}

// sizedKernel answers a task with outputs whose size depends on its seed:
// small ones, and ones too big to be copied into a shared write (a
// session writes those after whatever waits, on their own).
type sizedKernel struct{}

func (sizedKernel) Name() string     { return "sized-test" }
func (sizedKernel) Models() []string { return []string{"test/sized"} }
func (sizedKernel) Run(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
	size := 100 + int(t.Seed%4)*150_000 // up to 450 kB
	outs := []kernel.Output{{MediaType: "application/octet-stream", Data: bytes.Repeat([]byte{byte(t.Seed)}, size)}}
	if t.Seed%3 == 0 {
		outs = append(outs, kernel.Output{MediaType: "text/plain", Data: fmt.Appendf(nil, "seed %d", t.Seed)})
	}
	if progress != nil {
		progress(1, 1)
	}
	return outs, nil
}

// TestSessionCarriesBigAnswers: answers of every size, from many tasks at
// once, reach their own tasks whole over one session, big blocks among
// small answers.
func TestSessionCarriesBigAnswers(t *testing.T) {
	ctx, _, h, c := sessionClient(t, sizedKernel{})
	var wg sync.WaitGroup
	errs := make([]error, 24)
	for i := range errs {
		wg.Go(func() {
			seed := uint64(i + 1)
			res, err := c.SubmitTo(ctx, h.ID(), protocol.Task{Model: "test/sized", Prompt: "sized", Seed: seed, Width: 64, Height: 64, Steps: 1}, node.SubmitOptions{NoCache: true})
			switch {
			case err != nil:
				errs[i] = err
			case len(res.Blocks[0]) != 100+int(seed%4)*150_000 || res.Blocks[0][0] != byte(seed):
				errs[i] = fmt.Errorf("seed %d: a block of %d bytes starting %d", seed, len(res.Blocks[0]), res.Blocks[0][0])
			case (seed%3 == 0) != (len(res.Blocks) == 2):
				errs[i] = fmt.Errorf("seed %d: %d blocks", seed, len(res.Blocks))
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}
