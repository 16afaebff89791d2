package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// mdnsService is the mDNS service name gpunet peers look for.
const mdnsService = "_gpunet-discovery"

// Node is one gpunet peer. Its methods are safe for concurrent use.
type Node struct {
	cfg   Config
	log   *slog.Logger
	key   crypto.PrivKey
	host  host.Host
	dht   *dht.IpfsDHT
	store *store.Store
	mdns  interface{ Close() error }
	bw    *metrics.BandwidthCounter

	serve *server // nil unless cfg.Kernel is set
	// own is this host's latest beacon, so that its own submissions can
	// be placed on it as on any other host.
	own      atomic.Pointer[protocol.Beacon]
	schedCfg scheduler.Config
	ledger   ledger      // tasks this node placed, to correct its view
	submits  submitCalls // identical Submits in flight share one journey
	gossip   *gossip
	fetch    *fetcher // set in New before any goroutine reads it

	started time.Time
	stats   counters
	tmpDir  string // ephemeral store, removed on Close

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// counters are the node's monotonic counters, reported by Status.
type counters struct {
	kernelRuns   atomic.Uint64 // tasks the kernel actually computed
	served       atomic.Uint64 // task requests answered with a result
	servedCached atomic.Uint64 // ... of which from the store
	refused      atomic.Uint64
	submitted    atomic.Uint64
	moved        atomic.Uint64 // queued tasks the queue hedge moved to another host
	beaconsSent  atomic.Uint64
	beaconBytes  atomic.Uint64 // payload bytes of beacons this node published
}

// New starts a node: identity, store, libp2p host, DHT, discovery and, when
// cfg.Kernel is set, the task service and capacity advertisement. Close
// stops everything New started.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	n := &Node{cfg: cfg, log: cfg.Logger, started: time.Now(), schedCfg: cfg.Scheduler}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.start(ctx); err != nil {
		// The named node, not a nil result: Close undoes whatever start
		// got through (the temporary directory included).
		_ = n.Close()
		return nil, err
	}
	n.log.Info("node started", "peer", n.host.ID(), "addrs", n.host.Addrs(), "host", cfg.Kernel != nil)
	return n, nil
}

// start is New's work after validation; on error, New closes what it
// started.
func (n *Node) start(ctx context.Context) (err error) {
	cfg := n.cfg

	dir := cfg.DataDir
	if dir == "" {
		if n.tmpDir, err = os.MkdirTemp("", "gpunet-ephemeral-"); err != nil {
			return err
		}
		dir = n.tmpDir
		if n.key, _, err = crypto.GenerateEd25519Key(nil); err != nil {
			return err
		}
	} else if n.key, err = loadIdentity(dir); err != nil {
		return err
	}
	if n.store, err = store.Open(filepath.Join(dir, "store"), store.WithBudget(cfg.StoreBudget), store.WithLogger(n.log.With("sub", "store"))); err != nil {
		return fmt.Errorf("opening results store in %s: %w", dir, err)
	}
	n.bw = metrics.NewBandwidthCounter()
	if n.host, err = newHost(n.key, cfg.ListenAddrs, n.bw); err != nil {
		return err
	}
	mode := dht.ModeClient
	if cfg.DHTServer {
		mode = dht.ModeServer
	}
	n.dht, err = dht.New(n.host,
		dht.Mode(mode),
		dht.ProtocolPrefix(protocol.DHTPrefix),
		dht.NamespacedValidator(protocol.CapacityNamespace, protocol.CapacityValidator{}),
		// A private network has no public bootstrappers to fall back on.
		dht.BootstrapPeers(),
	)
	if err != nil {
		return fmt.Errorf("starting DHT: %w", err)
	}
	if n.gossip, err = newGossip(n.ctx, n.host, &n.cfg, n.log.With("sub", "gossip")); err != nil {
		return err
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.gossip.drain(n.ctx)
	}()
	if cfg.Kernel != nil {
		if n.cfg.MaxTempC == 0 && cfg.Device != nil {
			if t, err := cfg.Device.Telemetry(ctx); err == nil && t.SlowdownTempC > 0 {
				n.cfg.MaxTempC = t.SlowdownTempC - 5
			}
		}
		n.serve = newServer(n)
		n.host.SetStreamHandler(protocol.TaskProtocol, n.serve.handle)
	}
	n.startFetch()
	if err := n.connectBootstrap(ctx, cfg.Bootstrap); err != nil {
		return err
	}
	if cfg.MDNS {
		s := mdns.NewMdnsService(n.host, mdnsService, mdnsNotifee{n})
		if err := s.Start(); err != nil {
			return fmt.Errorf("starting mDNS: %w", err)
		}
		n.mdns = s
	}
	if cfg.Kernel != nil {
		n.wg.Add(2)
		go n.advertiseLoop()
		go n.beaconLoop()
	}
	return nil
}

// newHost builds the libp2p host: TCP and QUIC, Noise and TLS, and a
// resource manager with explicit limits for gpunet's own protocols (the
// defaults reset concurrent streams past 75 per protocol per peer).
func newHost(key crypto.PrivKey, listen []string, bw metrics.Reporter) (host.Host, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	for _, p := range []string{protocol.TaskProtocol, protocol.FetchProtocol} {
		// One peer may have many tasks in flight (a client submitting a
		// batch), but not enough to exhaust the host.
		limits.AddProtocolPeerLimit(libp2pProto(p), rcmgr.BaseLimit{StreamsInbound: 128, StreamsOutbound: 128, Streams: 256, Memory: 64 << 20}, rcmgr.BaseLimitIncrease{})
		limits.AddProtocolLimit(libp2pProto(p), rcmgr.BaseLimit{StreamsInbound: 1024, StreamsOutbound: 1024, Streams: 2048, Memory: 512 << 20}, rcmgr.BaseLimitIncrease{})
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.ResourceManager(rm),
		libp2p.EnableHolePunching(),
		libp2p.BandwidthReporter(bw),
	}
	if len(listen) == 0 {
		opts = append(opts, libp2p.NoListenAddrs)
	} else {
		opts = append(opts, libp2p.ListenAddrStrings(listen...))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("starting libp2p host on %v: %w", listen, err)
	}
	return h, nil
}

// connectBootstrap dials every bootstrap peer and waits briefly for the DHT
// routing table to fill, so a lookup right after New finds something. It
// fails only if peers were given and none could be reached.
func (n *Node) connectBootstrap(ctx context.Context, addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	infos, err := ParseAddrInfos(addrs)
	if err != nil {
		return err
	}
	var errs []error
	ok := 0
	for _, ai := range infos {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := n.host.Connect(cctx, ai)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ai.ID, err))
			continue
		}
		ok++
	}
	if ok == 0 {
		return fmt.Errorf("could not reach any bootstrap peer (is a daemon running there?): %w", errors.Join(errs...))
	}
	// Identify runs asynchronously after connect; the routing table takes
	// a peer only once identify says it speaks the DHT protocol.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for n.dht.RoutingTable().Size() == 0 {
		select {
		case <-wctx.Done():
			n.log.Warn("bootstrap peers connected but none is a DHT server yet")
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// ParseAddrInfos parses multiaddrs that end in /p2p/ID, merging addresses of
// the same peer.
func ParseAddrInfos(addrs []string) ([]peer.AddrInfo, error) {
	var mas []ma.Multiaddr
	for _, s := range addrs {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("bootstrap address %q: %w", s, err)
		}
		mas = append(mas, m)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(mas...)
	if err != nil {
		return nil, fmt.Errorf("bootstrap addresses must end in /p2p/PEER_ID: %w", err)
	}
	return infos, nil
}

type mdnsNotifee struct{ n *Node }

func (m mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == m.n.host.ID() || m.n.closed.Load() {
		return
	}
	m.n.wg.Add(1)
	go func() {
		defer m.n.wg.Done()
		ctx, cancel := context.WithTimeout(m.n.ctx, 10*time.Second)
		defer cancel()
		if err := m.n.host.Connect(ctx, ai); err != nil {
			m.n.log.Debug("mDNS peer unreachable", "peer", ai.ID, "err", err)
		}
	}()
}

// ID returns the node's peer ID.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Host returns the libp2p host.
func (n *Node) Host() host.Host { return n.host }

// Store returns the results store.
func (n *Node) Store() *store.Store { return n.store }

// Addrs returns the node's listen addresses with /p2p/ID appended, as other
// nodes pass them to --bootstrap.
func (n *Node) Addrs() []string {
	var out []string
	for _, a := range n.host.Addrs() {
		out = append(out, a.String()+"/p2p/"+n.host.ID().String())
	}
	return out
}

// Models lists the models this node serves (none unless it is a host).
func (n *Node) Models() []string {
	if n.cfg.Kernel == nil {
		return nil
	}
	return n.cfg.Kernel.Models()
}

// GossipBytes is the total bytes this node sent and received on the
// GossipSub protocols (beacons, forwarding and mesh control) so far.
func (n *Node) GossipBytes() uint64 {
	var total int64
	for p, st := range n.bw.GetBandwidthByProtocol() {
		if strings.HasPrefix(string(p), "/meshsub/") {
			total += st.TotalIn + st.TotalOut
		}
	}
	return uint64(total)
}

// KernelRuns is how many tasks this node's kernel actually computed.
func (n *Node) KernelRuns() uint64 { return n.stats.kernelRuns.Load() }

// Close stops the node and everything it started, and waits for its
// goroutines.
func (n *Node) Close() error {
	if n.closed.Swap(true) {
		return nil
	}
	n.cancel()
	var errs []error
	if n.mdns != nil {
		errs = append(errs, n.mdns.Close())
	}
	if n.host != nil {
		n.host.RemoveStreamHandler(protocol.TaskProtocol)
		n.host.RemoveStreamHandler(protocol.FetchProtocol)
	}
	if n.serve != nil {
		n.serve.close()
	}
	n.wg.Wait()
	if n.gossip != nil {
		n.gossip.close()
	}
	if n.dht != nil {
		errs = append(errs, n.dht.Close())
	}
	if n.host != nil {
		errs = append(errs, n.host.Close())
	}
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	if n.tmpDir != "" {
		errs = append(errs, os.RemoveAll(n.tmpDir))
	}
	return errors.Join(errs...)
}
