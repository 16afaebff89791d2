package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node/providers"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p-kad-dht/provider/keystore"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
)

// countingPeer is a bare DHT server that counts the DHT requests it gets
// from one peer (watch), by message type.
type countingPeer struct {
	h     host.Host
	d     *dht.IpfsDHT
	watch atomic.Value // peer.ID
	got   [8]atomic.Int64
}

func (c *countingPeer) count(t pb.Message_MessageType) int64 { return c.got[t].Load() }

// countAll sums the requests of type typ that peers got.
func countAll(peers []*countingPeer, typ pb.Message_MessageType) (total int64) {
	for _, p := range peers {
		total += p.count(typ)
	}
	return total
}

func startCountingPeers(t *testing.T, k int) []*countingPeer {
	t.Helper()
	ps := make([]*countingPeer, k)
	for i := range ps {
		c := &countingPeer{}
		c.watch.Store(peer.ID(""))
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
		if err != nil {
			t.Fatal(err)
		}
		d, err := dht.New(h, dht.Mode(dht.ModeServer), dht.ProtocolPrefix(protocol.DHTPrefix), dht.BootstrapPeers(),
			dht.OnRequestHook(func(_ context.Context, s network.Stream, m *pb.Message) {
				if s.Conn().RemotePeer() == c.watch.Load().(peer.ID) && int(m.GetType()) < len(c.got) {
					c.got[m.GetType()].Add(1)
				}
			}))
		if err != nil {
			h.Close()
			t.Fatal(err)
		}
		c.h, c.d = h, d
		t.Cleanup(func() {
			d.Close()
			h.Close()
		})
		ps[i] = c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, a := range ps {
		for _, b := range ps[i+1:] {
			// Once in a while a dial between fresh loopback hosts
			// fails ("all dials failed"); a second try connects, once
			// the swarm's dial backoff for the peer is cleared (else the
			// retry fails at once with "dial backoff").
			var err error
			for range 3 {
				if err = a.h.Connect(ctx, peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err == nil {
					break
				}
				if sw, ok := a.h.Network().(interface{ Backoff() *swarm.DialBackoff }); ok {
					sw.Backoff().Clear(b.h.ID())
				}
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	return ps
}

// sweepNode starts an ephemeral DHT server node bootstrapped from peers,
// whose provides c counts.
func sweepNode(t *testing.T, peers []*countingPeer, c *provided) *Node {
	return sweepNodeWith(t, peers, c, nil)
}

// sweepNodeWith is sweepNode with its config changed by tune.
func sweepNodeWith(t *testing.T, peers []*countingPeer, c *provided, tune func(*Config)) *Node {
	t.Helper()
	cfg := loopbackConfig()
	cfg.Observers = []Observer{c}
	for _, p := range peers {
		cfg.Bootstrap = append(cfg.Bootstrap, fmt.Sprintf("%s/p2p/%s", p.h.Addrs()[0], p.h.ID()))
	}
	if tune != nil {
		tune(&cfg)
	}
	return startLoopback(t, cfg)
}

// provided counts Observer.Provided, done and failed.
type provided struct{ ok, failed atomic.Int64 }

func (c *provided) SubmitProgress(SubmitEvent) {}
func (c *provided) SubmitDone(SubmitEvent)     {}
func (c *provided) Served(ServedEvent)         {}
func (c *provided) Beacon(string)              {}
func (c *provided) Provided(err error) {
	if err != nil {
		c.failed.Add(1)
	} else {
		c.ok.Add(1)
	}
}

func (c *provided) waitOK(t *testing.T, ctx context.Context, want int64) {
	t.Helper()
	for c.ok.Load() < want {
		if ctx.Err() != nil {
			t.Fatalf("%d provides done, %d failed; want %d done", c.ok.Load(), c.failed.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// signedResult is a result of prompt made by the host with key: its
// manifest, encoded, and its one block.
func signedResult(t *testing.T, key crypto.PrivKey, prompt string) (tc cid.Cid, manifest []byte, blocks [][]byte) {
	t.Helper()
	task, err := protocol.Task{Prompt: prompt, Width: 64, Height: 64, Steps: 1}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	block := []byte("the picture of " + prompt)
	out := []protocol.Output{{CID: protocol.Link{Cid: protocol.RawCID(block)}, MediaType: "image/png", Size: uint64(len(block))}}
	m, err := protocol.NewManifest(task, out, "test", uint64(time.Now().UnixMilli()), key)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return m.TaskCID.Cid, mb, [][]byte{block}
}

// storedResult puts a result of prompt, made by another host, in the
// store in dir, pinned or not, and returns its TaskCID.
func storedResult(t *testing.T, dir, prompt string, pin bool) cid.Cid {
	t.Helper()
	ctx := context.Background()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	tc, mb, blocks := signedResult(t, key, prompt)
	s, err := store.Open(filepath.Join(dir, "store"), store.WithoutSync(), store.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Put(ctx, mb, blocks); err != nil {
		t.Fatal(err)
	}
	if pin {
		if err := s.Pin(ctx, tc); err != nil {
			t.Fatal(err)
		}
	}
	return tc
}

// madeResults stores k results as if n had computed them, and returns
// their TaskCIDs: what n serves, so what its sweep keeps providing.
func madeResults(t *testing.T, n *Node, prefix string, k int) []cid.Cid {
	t.Helper()
	out := make([]cid.Cid, k)
	for i := range out {
		tc, mb, blocks := signedResult(t, n.key, fmt.Sprintf("%s %d", prefix, i))
		if _, err := n.store.Put(context.Background(), mb, blocks); err != nil {
			t.Fatal(err)
		}
		out[i] = tc
	}
	return out
}

// keystoreKeys lists the sweep's keystore in the provider store in dir.
func keystoreKeys(t *testing.T, ps *providers.Store) map[string]bool {
	t.Helper()
	ks, err := keystore.NewKeystore(ps.SweepKeys())
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	keys, err := ks.Get(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, k := range keys {
		out[string(k)] = true
	}
	return out
}

// findable reports whether from's FindProviders names p for c.
func findable(ctx context.Context, from *dht.IpfsDHT, c cid.Cid, p peer.ID) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for ai := range from.FindProvidersAsync(ctx, c, 0) {
		if ai.ID == p {
			return true
		}
	}
	return false
}

// TestSweepBatchesProvides: a burst of results is provided in batches by
// keyspace region, not with a DHT walk each, in a swarm as small as one
// peer and in one of eight. Every result of the burst is found by another
// peer's FindProviders, and the burst costs the node fewer FIND_NODE
// requests than it has results: a walk per result (the path before issue 14)
// asks every peer once per result: 128 to over 1,000 requests here.
func TestSweepBatchesProvides(t *testing.T) {
	for _, size := range []int{1, 8} {
		t.Run(fmt.Sprintf("%d peers", size), func(t *testing.T) { testSweepBatches(t, size) })
	}
}

func testSweepBatches(t *testing.T, size int) {
	const burst = 128
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	peers := startCountingPeers(t, size)
	var c provided
	n := sweepNode(t, peers, &c)
	for _, p := range peers {
		p.watch.Store(n.ID())
	}
	probe := peers[len(peers)-1].d

	// The first result starts the provider; it is findable once provided.
	first := madeResults(t, n, "first", 1)[0]
	if !n.provides.add(first) {
		t.Fatal("queue refused a result")
	}
	c.waitOK(t, ctx, 1)
	if !findable(ctx, probe, first, n.ID()) {
		t.Fatal("the first result, reported provided, is not found")
	}
	// Let the node's routing table refresh end: its walks are not provides.
	if err := <-n.dht.ForceRefresh(); err != nil {
		t.Logf("routing table refresh: %v", err)
	}

	results := madeResults(t, n, "burst", burst)
	count := func(typ pb.Message_MessageType) int64 { return countAll(peers, typ) }
	f0 := count(pb.Message_FIND_NODE)
	start := time.Now()
	for i, tc := range results {
		if !n.provides.add(tc) {
			t.Fatalf("queue refused result %d", i)
		}
	}
	c.waitOK(t, ctx, 1+burst)
	took := time.Since(start)
	walks := count(pb.Message_FIND_NODE) - f0
	t.Logf("%d results provided in %v with %d FIND_NODE requests", burst, took.Round(time.Millisecond), walks)
	if walks >= burst {
		t.Errorf("%d results cost %d FIND_NODE requests: a DHT walk per result, not batches by region", burst, walks)
	}
	for i, tc := range results {
		if !findable(ctx, probe, tc, n.ID()) {
			t.Errorf("result %d of the burst is not found", i)
		}
	}
	if f := c.failed.Load(); f != 0 {
		t.Errorf("%d provides failed", f)
	}
}

// TestSweepKeystoreFollowsStore: the keys the sweep reprovides are the
// results the node serves. A node restarted on a store that holds a pinned
// result (served) and another host's result it never served, with a
// keystore left from its last run that lists the unserved one and one the
// store evicted, provides the pinned one and keeps only it.
func TestSweepKeystoreFollowsStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	pinned := storedResult(t, dir, "kept by its owner", true)
	unserved := storedResult(t, dir, "fetched once, never served", false)
	evicted := protocol.RawCID([]byte("a result the store evicted"))
	ps, err := providers.Open(filepath.Join(dir, "dht"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.NewKeystore(ps.SweepKeys())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Put(ctx, unserved.Hash(), evicted.Hash()); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(ks.Close(), ps.Close()); err != nil {
		t.Fatal(err)
	}

	peers := startCountingPeers(t, 4)
	var c provided
	n := sweepNodeWith(t, peers, &c, func(cfg *Config) { cfg.DataDir = dir })
	probe := peers[0].d
	for !findable(ctx, probe, pinned, n.ID()) {
		if ctx.Err() != nil {
			t.Fatal("the pinned result is not provided after a restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := map[string]bool{string(pinned.Hash()): true}
	for {
		got := keystoreKeys(t, n.prov)
		if maps.Equal(got, want) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("keystore holds %d keys (pinned %v, unserved %v, evicted %v); want only the pinned one",
				len(got), got[string(pinned.Hash())], got[string(unserved.Hash())], got[string(evicted.Hash())])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if c.ok.Load() != 0 {
		t.Errorf("%d provides reported for a restart's sync; it reprovides, it provides nothing new", c.ok.Load())
	}
}

// TestSweepReprovidesByRegion: what the node provides is provided again each
// sweep interval, region by region: every key goes out to every peer again
// without being asked, for fewer FIND_NODE requests than keys (a reprovide
// round of one walk per key, as before issue 14, asks every peer once per
// key), and a reprovide is not reported as a new provide.
func TestSweepReprovidesByRegion(t *testing.T) {
	const keys, size = 128, 8
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	peers := startCountingPeers(t, size)
	var c provided
	n := sweepNodeWith(t, peers, &c, func(cfg *Config) { cfg.SweepInterval = 2 * time.Second })
	for _, p := range peers {
		p.watch.Store(n.ID())
	}
	count := func(typ pb.Message_MessageType) int64 { return countAll(peers, typ) }
	waitRecords := func(want int64, what string) {
		for count(pb.Message_ADD_PROVIDER) < want {
			if ctx.Err() != nil {
				t.Fatalf("%s: %d provider records sent, want %d", what, count(pb.Message_ADD_PROVIDER), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, tc := range madeResults(t, n, "kept", keys) {
		if !n.provides.add(tc) {
			t.Fatal("queue refused a result")
		}
	}
	c.waitOK(t, ctx, keys)
	waitRecords(keys*size, "first provide")

	a0, f0, start := count(pb.Message_ADD_PROVIDER), count(pb.Message_FIND_NODE), time.Now()
	waitRecords(a0+keys*size, "reprovide")
	walks := count(pb.Message_FIND_NODE) - f0
	t.Logf("%d keys reprovided to %d peers %v after their provide, with %d FIND_NODE requests", keys, size, time.Since(start).Round(time.Millisecond), walks)
	if walks >= keys {
		t.Errorf("reproviding %d keys cost %d FIND_NODE requests: a walk per key, not a sweep by region", keys, walks)
	}
	if got := c.ok.Load(); got != keys {
		t.Errorf("%d provides reported; want %d, reprovides are not new provides", got, keys)
	}
}
