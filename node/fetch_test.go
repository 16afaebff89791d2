package node_test

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	mh "github.com/multiformats/go-multihash"
)

// TestNetworkHitFromAnotherClient: a result client A had computed is fetched
// by client B from the host that made it, the one peer that provides it (A
// got it straight from the host and does not), without a kernel run.
func TestNetworkHitFromAnotherClient(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090", "a100"}, Tune: provideAll})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := addClient(t, sw), addClient(t, sw)
	first, err := a.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runs, _ := kernelRuns(sw)
	if runs != 1 {
		t.Fatalf("%d kernel runs for one task", runs)
	}

	got := fetchEventually(t, ctx, b, first.TaskCID, func(r *node.Result) bool { return true })
	if got.Cache != node.CacheNetwork {
		t.Errorf("cache %q, want %q", got.Cache, node.CacheNetwork)
	}
	if got.Provider != first.Host {
		t.Errorf("provider %s, want the host %s (client A %s must not provide what its host provides)", got.Provider, first.Host, a.ID())
	}
	if got.Host != first.Host || !got.ResultCID.Equals(first.ResultCID) || !bytes.Equal(got.Blocks[0], first.Blocks[0]) {
		t.Errorf("fetched result %s from host %s differs from the computed %s from %s", got.ResultCID, got.Host, first.ResultCID, first.Host)
	}
	if after, _ := kernelRuns(sw); after != runs {
		t.Errorf("kernel runs went from %d to %d on a network hit", runs, after)
	}
	// B verified and stored it: now a local hit, and B serves it too if
	// asked.
	if !b.Store().Has(ctx, first.TaskCID) {
		t.Error("fetched result not stored")
	}
	if st := b.FetchStats(); st.Fetched != 1 || st.BadProvider != 0 {
		t.Errorf("B's fetch stats %+v, want 1 fetched, no bad provider", st)
	}

	// A task nobody holds is a quick miss, not an error of another kind.
	other := mustNormalize(t, protocol.Task{Prompt: "nobody asked for this", Width: 64, Height: 64, Steps: 1})
	oc, _ := other.CID()
	if _, err := b.FetchFromNetwork(ctx, oc, 0); !errors.Is(err, node.ErrNoProvider) {
		t.Errorf("fetching an unknown task: %v, want ErrNoProvider", err)
	}
}

// TestStoredResultsAreProvidedAtStart: a node that starts with a pinned
// result in its store provides it, so others find it though no one computed
// or fetched it in this run. (Results it neither made, pinned nor served are
// its makers' to provide: TestOnlyTheServingNodeProvides.)
func TestStoredResultsAreProvidedAtStart(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	fx := signedResult(t, "kept from an earlier run")
	s, err := store.Open(filepath.Join(dir, "store"), store.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, fx.manifest, fx.blocks); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(ctx, fx.task); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := startNode(t, sw, dir)
	b := addClient(t, sw)
	got := fetchEventually(t, ctx, b, fx.task, func(*node.Result) bool { return true })
	if got.Provider != r.ID() || !got.ResultCID.Equals(fx.result) {
		t.Errorf("fetched %s from %s, want %s from the restarted node %s", got.ResultCID, got.Provider, fx.result, r.ID())
	}
}

// TestBadProviderIsSkipped: of two providers, one answers with a tampered
// block. The client detects it, takes the result from the other, and does
// not ask the bad one again.
func TestBadProviderIsSkipped(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fx := signedResult(t, "a contested picture")

	var evilCount atomic.Int32
	var client atomic.Pointer[node.Node] // the node whose fetch is under test
	evil := rawPeer(t, sw)
	evil.h.SetStreamHandler(lp2pproto.ID(protocol.FetchProtocol), func(s network.Stream) {
		defer s.Close()
		if _, err := readFetchRequest(s); err != nil {
			s.Reset()
			return
		}
		evilCount.Add(1)
		bad := bytes.Clone(fx.blocks[0])
		bad[len(bad)/2] ^= 0x01
		writeAnswer(s, fx.manifest, bad)
	})
	good := rawPeer(t, sw)
	good.h.SetStreamHandler(lp2pproto.ID(protocol.FetchProtocol), func(s network.Stream) {
		defer s.Close()
		if _, err := readFetchRequest(s); err != nil {
			s.Reset()
			return
		}
		// Hold the answer until the client has caught the bad provider, so
		// the test does not depend on which provider the DHT lists first:
		// the client asks a second provider when the first is slow.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if c := client.Load(); c == nil || c.FetchStats().BadProvider > 0 {
				break
			}
		}
		writeAnswer(s, fx.manifest, fx.blocks[0])
	})
	evil.provide(t, ctx, fx.task)
	good.provide(t, ctx, fx.task)
	waitProviders(t, ctx, sw, fx.task, evil.h.ID(), good.h.ID())

	b := addClient(t, sw)
	client.Store(b)
	got, err := b.FetchFromNetwork(ctx, fx.task, 10*time.Second)
	if err != nil {
		t.Fatalf("fetch with one good provider: %v", err)
	}
	if got.Provider != good.h.ID() || !bytes.Equal(got.Blocks[0], fx.blocks[0]) {
		t.Errorf("served by %s, want the good provider %s", got.Provider, good.h.ID())
	}
	if n := evilCount.Load(); n != 1 {
		t.Fatalf("bad provider asked %d times, want 1", n)
	}
	if st := b.FetchStats(); st.BadProvider != 1 {
		t.Errorf("fetch stats %+v, want one bad provider caught", st)
	}

	// Forget the result and fetch again: the bad provider is not asked.
	if err := b.Store().Remove(ctx, fx.task); err != nil {
		t.Fatal(err)
	}
	again, err := b.FetchFromNetwork(ctx, fx.task, 10*time.Second)
	if err != nil {
		t.Fatalf("second fetch: %v", err)
	}
	if again.Provider != good.h.ID() {
		t.Errorf("second fetch served by %s, want %s", again.Provider, good.h.ID())
	}
	if n := evilCount.Load(); n != 1 {
		t.Errorf("bad provider asked again (%d times in all)", n)
	}

	// With only the bad provider left (the good one stops serving, and B
	// leaves), a new client refuses the bad data: a miss.
	good.h.RemoveStreamHandler(lp2pproto.ID(protocol.FetchProtocol))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c := addClient(t, sw)
	client.Store(nil)
	if r, err := c.FetchFromNetwork(ctx, fx.task, 10*time.Second); !errors.Is(err, node.ErrNoProvider) {
		t.Fatalf("only a bad provider: got %v, %v; want ErrNoProvider", r, err)
	}
	if c.Store().Has(ctx, fx.task) {
		t.Error("tampered result was stored")
	}
}

// TestFetchRefusesMalformedRequests plays a hostile peer on the raw fetch
// protocol: every bad request gets an error event and the node keeps
// serving; a flood is rate limited for that peer only.
func TestFetchRefusesMalformedRequests(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := addClient(t, sw)
	held, err := a.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw := rawPeer(t, sw)
	if err := raw.h.Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	req := func(c cid.Cid) []byte {
		b, err := protocol.Marshal(protocol.FetchRequest{CID: protocol.Link{Cid: c}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	v0, err := cid.Prefix{Version: 0, Codec: cid.DagProtobuf, MhType: mh.SHA2_256, MhLength: -1}.Sum([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	taskReq, _ := protocol.Marshal(protocol.TaskRequest{Task: mustNormalize(t, smallTask)})
	unknown := mustNormalize(t, protocol.Task{Prompt: "never made", Width: 64, Height: 64, Steps: 1})
	uc, _ := unknown.CID()
	cases := []struct {
		name    string
		payload []byte
		code    string
	}{
		{"huge length prefix", binary.AppendUvarint(nil, 1<<60), protocol.CodeBadRequest},
		{"over the request cap", frame(make([]byte, protocol.MaxRequestBytes+1)), protocol.CodeBadRequest},
		{"not CBOR", frame([]byte("give me everything")), protocol.CodeBadRequest},
		{"truncated frame", append(binary.AppendUvarint(nil, 100), 1, 2, 3), protocol.CodeBadRequest},
		{"empty stream", nil, protocol.CodeBadRequest},
		{"raw block CID, not held", frame(req(protocol.RawCID([]byte("nobody has this")))), protocol.CodeNotFound},
		{"CIDv0", frame(req(v0)), protocol.CodeBadRequest},
		{"a task request", frame(taskReq), protocol.CodeBadRequest},
		{"unknown TaskCID", frame(req(uc)), protocol.CodeNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := rawFetch(t, ctx, raw.h, a.ID(), tc.payload)
			if e.Type != protocol.EventError || e.Code != tc.code {
				t.Errorf("got %s/%s (%s), want error/%s", e.Type, e.Code, e.Message, tc.code)
			}
		})
	}

	// A raw block's CID (since 1.2: a task's input image, or any output)
	// is answered with that one block.
	if e := rawFetch(t, ctx, raw.h, a.ID(), frame(req(held.Manifest.Outputs[0].CID.Cid))); e.Type != protocol.EventBlock || !bytes.Equal(e.Data, held.Blocks[0]) {
		t.Errorf("fetch by block CID: %s/%s, want the block", e.Type, e.Code)
	}

	// By TaskCID and by ResultCID, the answer is the result's blocks, then
	// the manifest with cached set.
	for _, c := range []cid.Cid{held.TaskCID, held.ResultCID} {
		blocks, m := rawFetchResult(t, ctx, raw.h, a.ID(), frame(req(c)))
		if !bytes.Equal(blocks[0], held.Blocks[0]) || !protocol.ManifestCID(m).Equals(held.ResultCID) {
			t.Errorf("fetch by %s: wrong result", c)
		}
	}

	// Flood: the first FetchBurst requests pass (not_found), then the peer
	// is told to slow down, with a retry hint.
	limitedAt := -1
	var retry uint64
	for i := 0; i < 20*node.FetchBurst && limitedAt < 0; i++ {
		e := rawFetch(t, ctx, raw.h, a.ID(), frame(req(uc)))
		switch e.Code {
		case protocol.CodeNotFound:
		case protocol.CodeRateLimited:
			limitedAt, retry = i, e.RetryAfterMs
		default:
			t.Fatalf("request %d: %s/%s", i, e.Type, e.Code)
		}
	}
	// The cases, the block fetch and the two result fetches spent tokens.
	if limitedAt < node.FetchBurst-len(cases)-3 || retry == 0 {
		t.Errorf("first rate_limited at request %d with retry %d ms; want one after the burst of %d, with a hint",
			limitedAt, retry, node.FetchBurst)
	}
	// Another peer is not limited, and the node still serves.
	b := addClient(t, sw)
	if _, err := b.FetchFromNetwork(ctx, held.TaskCID, 10*time.Second); err != nil {
		t.Errorf("fetch from another peer after the flood: %v", err)
	}
}

// --- helpers ---

// fixture is a signed result made in the test, not by any host.
type fixture struct {
	task, result cid.Cid
	manifest     []byte
	blocks       [][]byte
}

func signedResult(t *testing.T, prompt string) fixture {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	task := mustNormalize(t, protocol.Task{Prompt: prompt, Width: 64, Height: 64, Steps: 1})
	block := make([]byte, 3000)
	_, _ = crand.Read(block)
	out := []protocol.Output{{CID: protocol.Link{Cid: protocol.RawCID(block)}, MediaType: "image/png", Size: uint64(len(block))}}
	m, err := protocol.NewManifest(task, out, "test", uint64(time.Now().UnixMilli()), key)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return fixture{task: m.TaskCID.Cid, result: protocol.ManifestCID(mb), manifest: mb, blocks: [][]byte{block}}
}

// nodeConfig is a swarm client's config with a data directory.
func nodeConfig(t *testing.T, sw *swarm.Swarm, dir string) node.Config {
	cfg := node.DefaultConfig()
	cfg.DataDir = dir
	cfg.ListenAddrs = swarm.Loopback
	cfg.Bootstrap = sw.Bootstrap()
	cfg.MDNS = false
	cfg.DHTServer = false
	cfg.Logger = testLogger(t)
	return cfg
}

// startNode starts a client node on dir, closed when the test ends.
func startNode(t *testing.T, sw *swarm.Swarm, dir string) *node.Node {
	t.Helper()
	n, err := node.New(context.Background(), nodeConfig(t, sw, dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("closing node: %v", err)
		}
	})
	return n
}

// fetchEventually fetches tc until ok accepts the result: provider records
// reach the DHT in the background, a moment after the result is stored.
func fetchEventually(t *testing.T, ctx context.Context, n *node.Node, tc cid.Cid, ok func(*node.Result) bool) *node.Result {
	t.Helper()
	var last error
	for ctx.Err() == nil {
		r, err := n.FetchFromNetwork(ctx, tc, 5*time.Second)
		if err == nil && ok(r) {
			return r
		}
		if err != nil && !errors.Is(err, node.ErrNoProvider) {
			t.Fatalf("fetch: %v", err)
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no provider served %s: %v", tc, last)
	return nil
}

// dhtPeer is a bare libp2p host with a gpunet DHT client: a peer that
// speaks the protocols however the test wants.
type dhtPeer struct {
	h host.Host
	d *dht.IpfsDHT
}

// bareDHTPeer is a libp2p host on loopback with a DHT client of gpunet's
// DHT and nothing else, closed when the test ends.
func bareDHTPeer(t *testing.T) *dhtPeer {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings(swarm.Loopback...))
	if err != nil {
		t.Fatal(err)
	}
	d, err := dht.New(h, dht.Mode(dht.ModeClient), dht.ProtocolPrefix(protocol.DHTPrefix), dht.BootstrapPeers())
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		h.Close()
	})
	return &dhtPeer{h: h, d: d}
}

// rawPeer is a bare DHT peer joined to sw's DHT.
func rawPeer(t *testing.T, sw *swarm.Swarm) *dhtPeer {
	t.Helper()
	p := bareDHTPeer(t)
	h, d := p.h, p.d
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	infos, err := node.ParseAddrInfos(sw.Bootstrap())
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range infos {
		if err := h.Connect(ctx, ai); err != nil {
			t.Fatal(err)
		}
	}
	for d.RoutingTable().Size() == 0 {
		if ctx.Err() != nil {
			t.Fatal("raw peer's DHT found no server")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

func (p *dhtPeer) provide(t *testing.T, ctx context.Context, c cid.Cid) {
	t.Helper()
	if err := p.d.Provide(ctx, c, true); err != nil {
		t.Fatalf("providing %s: %v", c, err)
	}
}

// waitProviders waits until a fresh DHT client finds every one of want as a
// provider of c.
func waitProviders(t *testing.T, ctx context.Context, sw *swarm.Swarm, c cid.Cid, want ...peer.ID) {
	t.Helper()
	probe := rawPeer(t, sw)
	for {
		found := map[peer.ID]bool{}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		for ai := range probe.d.FindProvidersAsync(lctx, c, 0) {
			found[ai.ID] = true
		}
		cancel()
		all := true
		for _, p := range want {
			all = all && found[p]
		}
		if all {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("providers of %s not found in time: have %v, want %v", c, found, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readFetchRequest(s network.Stream) (*protocol.FetchRequest, error) {
	_ = s.SetDeadline(time.Now().Add(15 * time.Second))
	body, err := protocol.ReadFrame(bufio.NewReader(s), protocol.MaxRequestBytes)
	if err != nil {
		return nil, err
	}
	return protocol.DecodeFetchRequest(body)
}

// writeAnswer writes a fetch answer: one block event per block, then the
// result event.
func writeAnswer(s network.Stream, manifest []byte, blocks ...[]byte) {
	for _, b := range blocks {
		if err := protocol.WriteMsg(s, protocol.Event{Type: protocol.EventBlock, Data: b}); err != nil {
			s.Reset()
			return
		}
	}
	if err := protocol.WriteMsg(s, protocol.Event{Type: protocol.EventResult, Manifest: manifest, Cached: true}); err != nil {
		s.Reset()
	}
}

// rawFetch writes payload on a new fetch stream to p and returns the first
// event of the answer.
func rawFetch(t *testing.T, ctx context.Context, h host.Host, p peer.ID, payload []byte) *protocol.Event {
	t.Helper()
	s, r := openRawFetch(t, ctx, h, p, payload)
	defer s.Close()
	return readEvent(t, r)
}

// rawFetchResult is rawFetch for a request that must succeed: it returns
// the blocks and the manifest.
func rawFetchResult(t *testing.T, ctx context.Context, h host.Host, p peer.ID, payload []byte) ([][]byte, []byte) {
	t.Helper()
	s, r := openRawFetch(t, ctx, h, p, payload)
	defer s.Close()
	var blocks [][]byte
	for {
		e := readEvent(t, r)
		switch e.Type {
		case protocol.EventBlock:
			blocks = append(blocks, e.Data)
		case protocol.EventResult:
			if !e.Cached {
				t.Error("fetch answer without cached set")
			}
			return blocks, e.Manifest
		default:
			t.Fatalf("unexpected %s event: %s %s", e.Type, e.Code, e.Message)
		}
	}
}

func openRawFetch(t *testing.T, ctx context.Context, h host.Host, p peer.ID, payload []byte) (network.Stream, *bufio.Reader) {
	t.Helper()
	s, err := h.NewStream(ctx, p, lp2pproto.ID(protocol.FetchProtocol))
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := s.Write(payload); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseWrite()
	return s, bufio.NewReader(s)
}

func readEvent(t *testing.T, r *bufio.Reader) *protocol.Event {
	t.Helper()
	body, err := protocol.ReadFrame(r, protocol.MaxEventBytes)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	e, err := protocol.DecodeEvent(body)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
