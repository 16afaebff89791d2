package sampling

import (
	"bufio"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"go.uber.org/goleak"
)

// fakeNode is the node as the service sees it: a beacon of a fixed load
// (nil: not a host) and a record of what it heard.
type fakeNode struct {
	id    peer.ID
	mu    sync.Mutex
	load  *protocol.Beacon
	heard []heardBeacon
	hosts []peer.ID
}

type heardBeacon struct {
	from   peer.ID
	busy   uint32
	notice bool
}

func (f *fakeNode) Live() *protocol.Beacon {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.load == nil {
		return nil
	}
	b := *f.load
	b.Peer = f.id.String()
	b.Issued = uint64(time.Now().UnixMilli())
	b.Seq++
	f.load.Seq++
	return &b
}

func (f *fakeNode) State(id peer.ID, b *protocol.Beacon) scheduler.PeerState {
	return scheduler.PeerState{
		ID: id.String(), Models: b.Models, Slots: int(b.Slots), Busy: int(b.Busy), QueueLen: int(b.Queue),
		Accepting: b.Accepting, Speed: 1, Updated: time.UnixMilli(int64(b.Issued)),
	}
}

func (f *fakeNode) Heard(id peer.ID, b *protocol.Beacon, notice bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heard = append(f.heard, heardBeacon{id, b.Busy, notice})
}

func (f *fakeNode) Hosts(context.Context, string) []peer.ID { return f.hosts }

func (f *fakeNode) notices() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, h := range f.heard {
		if h.notice {
			n++
		}
	}
	return n
}

// hostBeacon is a one-slot host's beacon with busy slots busy.
func hostBeacon(busy uint32) *protocol.Beacon {
	return &protocol.Beacon{Seq: 1, Models: []string{protocol.DefaultModel}, Slots: 1, Busy: busy, Accepting: true,
		QueueMax: 4, ServiceMs: map[string]uint32{protocol.DefaultModel: 500}, SpeedPm: 1000}
}

type testPeer struct {
	h    host.Host
	node *fakeNode
	s    *Service
}

// newPeer starts a libp2p host on loopback with the service; load nil
// makes it a client only. shuffle 0 keeps the periodic shuffle out of the
// way.
func newPeer(t *testing.T, load *protocol.Beacon) *testPeer {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNode{id: h.ID(), load: load}
	cfg := scheduler.DefaultProbeConfig()
	cfg.ShuffleEvery = time.Hour
	s, err := New(h, f, cfg, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		h.Close()
	})
	return &testPeer{h, f, s}
}

func connect(t *testing.T, a *testPeer, bs ...*testPeer) {
	t.Helper()
	for _, b := range bs {
		if err := a.h.Connect(context.Background(), peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMain checks that the service stops every goroutine it started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// go-libp2p's process-wide bandwidth sweeper, never stopped by design.
		goleak.IgnoreTopFunction("github.com/libp2p/go-flow-metrics.(*sweeper).runActive"),
	)
}

// A probe round ranks the idle host first, brings its descriptors into the
// client's view, and asks for notices: when the busy host's slot frees,
// it tells the client.
func TestRoundRanksAndNotices(t *testing.T) {
	idle, busy, client := newPeer(t, hostBeacon(0)), newPeer(t, hostBeacon(1)), newPeer(t, nil)
	connect(t, client, idle, busy)
	extra := newPeer(t, hostBeacon(0))
	idle.s.Seed(extra.h.ID()) // the idle host knows of a third
	connect(t, extra, idle)
	client.s.Seed(idle.h.ID(), busy.h.ID())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := client.s.Round(ctx, scheduler.Request{Model: protocol.DefaultModel}, scheduler.DefaultConfig(), 4)
	if len(got) != 2 || got[0].ID != idle.h.ID() {
		t.Fatalf("ranking %v, want the idle host %s first of two", got, idle.h.ID())
	}
	st := client.s.Stats()
	if st.Probes != 2 || st.ProbeFails != 0 || st.Memory != 1 {
		t.Fatalf("client stats %+v: want 2 probes answered, 1 host remembered (the idle one)", st)
	}
	if st.View != 3 {
		t.Fatalf("view of %d; the idle host's reply should have brought the third host", st.View)
	}

	// The busy host's slot frees with nobody queued: one notice, to its
	// prober.
	busy.node.mu.Lock()
	busy.node.load.Busy = 0
	busy.node.mu.Unlock()
	busy.s.Changed(busy.node.Live(), 1)
	eventually(t, ctx, "an idle notice", func() bool { return client.node.notices() == 1 })
	// A second beacon with the same free slot owes nothing more.
	busy.s.Changed(busy.node.Live(), 1)
	if n := client.s.Stats().NoticesHeard; n != 1 {
		t.Fatalf("%d notices for one freed slot", n)
	}
	if client.s.Stats().Memory != 2 {
		t.Fatalf("the notice did not enter the memory: %+v", client.s.Stats())
	}
	// The slot was taken and freed again between two beacons: the beacon
	// looks the same, but the slot is free anew and owed a notice.
	busy.s.Changed(busy.node.Live(), 2)
	eventually(t, ctx, "a notice for a slot freed between beacons", func() bool { return client.node.notices() == 2 })
}

// A host that does not answer leaves the view and the memory.
func TestFailedProbeForgets(t *testing.T) {
	gone, client := newPeer(t, hostBeacon(0)), newPeer(t, nil)
	connect(t, client, gone)
	client.s.Seed(gone.h.ID())
	gone.s.Close()
	gone.h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got := client.s.Round(ctx, scheduler.Request{Model: protocol.DefaultModel}, scheduler.DefaultConfig(), 4); len(got) != 0 {
		t.Fatalf("a host that left ranked: %v", got)
	}
	if st := client.s.Stats(); st.ProbeFails != 1 || st.View != 0 {
		t.Fatalf("stats %+v: want the failed host out of the view", st)
	}
}

// A shuffle swaps descriptors both ways and puts the initiating host in
// its partner's view at age 0.
func TestShuffle(t *testing.T) {
	a, b := newPeer(t, hostBeacon(0)), newPeer(t, hostBeacon(0))
	others := []*testPeer{newPeer(t, hostBeacon(0)), newPeer(t, hostBeacon(0)), newPeer(t, hostBeacon(0))}
	connect(t, a, b)
	a.s.Seed(b.h.ID(), others[0].h.ID())
	b.s.Seed(others[1].h.ID(), others[2].h.ID())
	if err := a.s.shuffle(); err != nil {
		t.Fatal(err)
	}
	inView := func(p *testPeer, id peer.ID) bool {
		p.s.mu.Lock()
		defer p.s.mu.Unlock()
		for _, d := range p.s.view {
			if d.ID == id.String() {
				return true
			}
		}
		return false
	}
	if !inView(b, a.h.ID()) {
		t.Errorf("the initiator is not in its partner's view")
	}
	if !inView(a, others[1].h.ID()) && !inView(a, others[2].h.ID()) {
		t.Errorf("the partner's entries did not reach the initiator")
	}
	if inView(a, b.h.ID()) {
		t.Errorf("the partner stays in the initiator's view (Cyclon replaces it by what it sent)")
	}
	if a.s.Stats().Shuffles != 1 {
		t.Errorf("shuffle not counted")
	}
}

// Garbage on every protocol gets the stream reset and changes nothing.
func TestHandlersRefuseGarbage(t *testing.T) {
	target, client := newPeer(t, hostBeacon(0)), newPeer(t, nil)
	connect(t, client, target)
	target.s.Seed(client.h.ID())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bodies := [][]byte{
		{0xff, 0xff, 0xff, 0xff, 0x0f},           // a length past the cap
		{0x03, 0xa1, 0x61},                       // truncated CBOR
		append([]byte{0x05}, []byte("hello")...), // not CBOR
		func() []byte {
			b, _ := protocol.Marshal([]int{1})
			return append([]byte{byte(len(b))}, b...)
		}(), // a list, not a map
	}
	for _, proto := range []string{protocol.ProbeProtocol, protocol.IdleProtocol, protocol.SampleProtocol} {
		for _, body := range bodies {
			st, err := client.h.NewStream(ctx, target.h.ID(), p2pproto.ID(proto))
			if err != nil {
				t.Fatal(err)
			}
			st.SetDeadline(time.Now().Add(5 * time.Second))
			st.Write(body)
			st.CloseWrite()
			if reply, err := protocol.ReadFrame(bufio.NewReader(st), protocol.MaxSampleBytes); err == nil && proto != protocol.SampleProtocol {
				t.Errorf("%s answered garbage %x with %x", proto, body, reply)
			}
			st.Close()
		}
	}
	if st := target.s.Stats(); st.NoticesHeard != 0 || st.View != 1 {
		t.Fatalf("garbage changed the service: %+v", st)
	}
	// It still works.
	client.s.Seed(target.h.ID())
	if got := client.s.Round(ctx, scheduler.Request{Model: protocol.DefaultModel}, scheduler.DefaultConfig(), 4); len(got) != 1 {
		t.Fatalf("after garbage, a round found %v", got)
	}
}

func eventually(t *testing.T, ctx context.Context, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		if ctx.Err() != nil {
			t.Fatalf("never saw: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
