package node_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
)

// provideCounter is an Observer that counts one node's DHT provides of
// results, done or failed.
type provideCounter struct{ n atomic.Int64 }

func (c *provideCounter) SubmitProgress(node.SubmitEvent) {}
func (c *provideCounter) SubmitDone(node.SubmitEvent)     {}
func (c *provideCounter) Served(node.ServedEvent)         {}
func (c *provideCounter) Beacon(string)                   {}
func (c *provideCounter) Provided(error)                  { c.n.Add(1) }

// observedClient starts an ephemeral client whose provides c counts.
func observedClient(t *testing.T, sw *swarm.Swarm, c *provideCounter) *node.Node {
	t.Helper()
	cfg := nodeConfig(t, sw, "")
	cfg.Observers = []node.Observer{c}
	n, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestOnlyTheServingNodeProvides: a client that got a result straight from
// its host, or fetched it from a provider, sends no provide of its own: the
// host's record is the one others find. A node that then serves the result
// (answers a fetch of it) or is told to keep it (Announce, what a pin does)
// provides it, once.
func TestOnlyTheServingNodeProvides(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090"}, Tune: provideAll})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A submits: the host computes and provides; A only stores.
	var aProvides provideCounter
	a := observedClient(t, sw, &aProvides)
	res, err := a.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Cache != node.CacheMiss {
		t.Fatalf("first submit: cache %q, want a computation", res.Cache)
	}
	waitProviders(t, ctx, sw, res.TaskCID, res.Host)
	// Close waits for every provide A started, so the count is final.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := aProvides.n.Load(); got != 0 {
		t.Errorf("the submitting client sent %d provides for a result its host provides; want 0", got)
	}

	// B gets it from the host over the fetch protocol: no provide either.
	var bProvides provideCounter
	b := observedClient(t, sw, &bProvides)
	got, err := b.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Cache != node.CacheNetwork || got.Provider != res.Host {
		t.Fatalf("second client: cache %q from %s, want a network hit from the host %s", got.Cache, got.Provider, res.Host)
	}

	// Then a peer fetches it from B directly, twice: B serves it, so it
	// provides it, and only once.
	raw := rawPeer(t, sw)
	if err := raw.h.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	req, err := protocol.Marshal(protocol.FetchRequest{CID: protocol.Link{Cid: res.TaskCID}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		rawFetchResult(t, ctx, raw.h, b.ID(), frame(req))
	}
	waitProviders(t, ctx, sw, res.TaskCID, res.Host, b.ID())

	// C holds it too, and is told to keep it: it provides it.
	var cProvides provideCounter
	c := observedClient(t, sw, &cProvides)
	if _, err := c.Submit(ctx, smallTask, node.SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Announce(ctx, res.ResultCID); err != nil {
		t.Fatalf("announcing a held result by its ResultCID: %v", err)
	}
	waitProviders(t, ctx, sw, res.TaskCID, res.Host, c.ID())

	for _, n := range []*node.Node{b, c} {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if b, c := bProvides.n.Load(), cProvides.n.Load(); b != 1 || c != 1 {
		t.Errorf("provides: %d by the node that served fetches, %d by the one told to keep it; want 1 each", b, c)
	}

	// A result the node does not hold cannot be announced.
	d := addClient(t, sw)
	if err := d.Announce(ctx, res.TaskCID); err == nil {
		t.Error("announcing a result the node does not hold: no error")
	}
}

// TestReservedFromCacheIsProvided: a host that got a result as a client
// (from another host) does not provide it, until it answers another peer's
// task request with it from its store.
func TestReservedFromCacheIsProvided(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090", "a100"}, Tune: provideAll})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	maker, holder := sw.Hosts[0], sw.Hosts[1]
	res, err := holder.SubmitTo(ctx, maker.ID(), smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitProviders(t, ctx, sw, res.TaskCID, maker.ID())

	c := addClient(t, sw)
	again, err := c.SubmitTo(ctx, holder.ID(), smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Cache != node.CacheNetwork || !again.ResultCID.Equals(res.ResultCID) {
		t.Fatalf("the holder answered %q with %s, want its stored %s", again.Cache, again.ResultCID, res.ResultCID)
	}
	waitProviders(t, ctx, sw, res.TaskCID, maker.ID(), holder.ID())
}

// TestMissDoesNotWaitForASilentPeer: one DHT server takes a provider lookup
// and never answers it. The lookup is cut once the other peers have
// answered with nothing, whatever the bound: a miss does not wait for the
// silent peer (nor, without the cut, for the DHT's own request timeout).
func TestMissDoesNotWaitForASilentPeer(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := addClient(t, sw)

	var asked atomic.Int32
	release := make(chan struct{})
	h, err := libp2p.New(libp2p.ListenAddrStrings(swarm.Loopback...))
	if err != nil {
		t.Fatal(err)
	}
	silent, err := dht.New(h, dht.Mode(dht.ModeServer), dht.ProtocolPrefix(protocol.DHTPrefix), dht.BootstrapPeers(),
		dht.OnRequestHook(func(ctx context.Context, _ network.Stream, req *pb.Message) {
			if req.GetType() != pb.Message_GET_PROVIDERS {
				return
			}
			asked.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
			}
		}))
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		silent.Close()
		h.Close()
	})
	t.Cleanup(func() { close(release) }) // first: frees the blocked handler
	if err := h.Connect(ctx, peer.AddrInfo{ID: client.ID(), Addrs: client.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	// The silent peer must be one the lookup asks: in the client's routing
	// table.
	for !isDHTPeer(client, h.ID()) {
		if ctx.Err() != nil {
			t.Fatal("the silent peer never joined the client's routing table")
		}
		time.Sleep(10 * time.Millisecond)
	}

	task := mustNormalize(t, protocol.Task{Prompt: "nobody holds this", Width: 64, Height: 64, Steps: 1})
	tc, _ := task.CID()
	_, err = client.FetchFromNetwork(ctx, tc, time.Hour)
	if !errors.Is(err, node.ErrNoProvider) || ctx.Err() != nil {
		t.Fatalf("lookup with a silent peer: %v (test context: %v), want a miss", err, ctx.Err())
	}
	if got := client.FetchStats().LookupsCut; got != 1 {
		t.Errorf("%d lookups cut; want 1: the miss waited for the lookup to end by itself", got)
	}
	// The cut mattered only if the silent peer was asked.
	for asked.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the silent peer was never asked for providers")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isDHTPeer(n *node.Node, p peer.ID) bool {
	for _, pi := range n.Peers() {
		if pi.ID == p.String() {
			return pi.DHT
		}
	}
	return false
}

// TestProviderRecordsSurviveRestart: the provider records a DHT server
// keeps for others live in its data directory (node/providers), not in
// memory: after a restart it still names the provider, with no other peer
// to ask.
func TestProviderRecordsSurviveRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	start := func() *node.Node {
		cfg := node.DefaultConfig()
		cfg.DataDir = dir
		cfg.ListenAddrs = swarm.Loopback
		cfg.MDNS = false
		cfg.DHTServer = true
		cfg.Logger = testLogger(t)
		n, err := node.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	fx := signedResult(t, "kept across a restart")

	// A bare peer that provides fx and serves it, whose only DHT server is
	// the node under test.
	bare := bareDHTPeer(t)
	h, d := bare.h, bare.d
	h.SetStreamHandler(lp2pproto.ID(protocol.FetchProtocol), func(s network.Stream) {
		defer s.Close()
		if _, err := readFetchRequest(s); err != nil {
			s.Reset()
			return
		}
		writeAnswer(s, fx.manifest, fx.blocks[0])
	})
	join := func(n *node.Node) {
		t.Helper()
		if err := h.Connect(ctx, peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	// fetched waits until n names the bare peer as fx's provider, which it
	// can learn only from its own records, and fetches fx from it.
	fetched := func(n *node.Node) {
		t.Helper()
		for {
			r, err := n.FetchFromNetwork(ctx, fx.task, 5*time.Second)
			if err == nil && r.Provider == h.ID() {
				if err := n.Store().Remove(ctx, fx.task); err != nil {
					t.Fatal(err)
				}
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("the node never named the provider of %s: %v", fx.task, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	n := start()
	join(n)
	for d.RoutingTable().Size() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the bare peer's DHT never took the node as a server")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := d.Provide(ctx, fx.task, true); err != nil {
		t.Fatalf("providing: %v", err)
	}
	fetched(n)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	n = start()
	join(n) // for its address: provider records keep none across a restart
	fetched(n)
}

// provideAll makes a node provide every result it makes, however cheap
// (Config.ProvideMinCompute): for the tests of who provides, whose tasks
// take the test kernel milliseconds.
func provideAll(c *node.Config) { c.ProvideMinCompute = 0 }

// TestCheapResultIsQuietUntilAskedAgain: a host does not provide a result
// that took its kernel less than ProvideMinCompute, cheaper to compute
// again than to find; it still answers a duplicate of the task with it,
// and from then on provides it.
func TestCheapResultIsQuietUntilAskedAgain(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	host := sw.Hosts[0]
	first, err := addClient(t, sw).Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if first.Cache != node.CacheMiss {
		t.Fatalf("first submit: cache %q, want a computation", first.Cache)
	}
	quiet := func() bool {
		t.Helper()
		for {
			l, err := host.Store().List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range l {
				if e.TaskCID.Equals(first.TaskCID) {
					return e.Quiet
				}
			}
			// The host answers before it stores.
			select {
			case <-ctx.Done():
				t.Fatal("the host never stored its result")
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	if !quiet() {
		t.Fatal("a result of a few milliseconds' kernel time was stored to be provided")
	}

	again, err := addClient(t, sw).Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if runs, _ := kernelRuns(sw); runs != 1 || !again.ResultCID.Equals(first.ResultCID) {
		t.Fatalf("a duplicate from another client: %d kernel runs, result %s; want 1 run and %s", runs, again.ResultCID, first.ResultCID)
	}
	waitProviders(t, ctx, sw, first.TaskCID, host.ID())
	if quiet() {
		t.Error("provided, but still marked quiet in the store")
	}
}

// TestReceivedResultSyncedBeforeAnnounced: a client with a data directory
// stores the result it submitted without a sync (no one is told of it),
// and syncs it before it announces it (store.Sync; the crash test is
// node/store's TestPutSurvivesKill9).
func TestReceivedResultSyncedBeforeAnnounced(t *testing.T) {
	dir := t.TempDir() // removed after the swarm closes
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090"}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := sw.AddClientTuned(ctx, func(c *node.Config) { c.DataDir = dir })
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Store().Unsynced(); got != 1 {
		t.Fatalf("%d results stored unsynced after one submit, want 1", got)
	}
	if err := c.Announce(ctx, res.TaskCID); err != nil {
		t.Fatal(err)
	}
	if got := c.Store().Unsynced(); got != 0 {
		t.Errorf("%d results unsynced after announcing the one received, want 0", got)
	}
}
