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
	"syscall"
	"time"

	"github.com/gpunet/gpunet/node/providers"
	"github.com/gpunet/gpunet/node/reach"
	"github.com/gpunet/gpunet/node/sampling"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	corecm "github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
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
	reach *reach.Tracker // reachability; set with the host

	// prov holds the DHT's provider records and the results this node
	// announces (announce.go); closed after the DHT.
	prov       *providers.Store
	announceMu sync.Mutex    // makes announce's check-then-provide atomic
	provides   *provideQueue // results to provide (providequeue.go)

	serve *server // nil unless cfg.Kernel is set
	// own is this host's latest beacon, so that its own submissions can
	// be placed on it as on any other host.
	own      atomic.Pointer[protocol.Beacon]
	schedCfg scheduler.Config
	ledger   ledger      // tasks this node placed, to correct its view
	submits  submitCalls // identical Submits in flight share one journey
	waiting  *waitRoom   // submissions waiting out a saturated swarm
	gossip   *gossip
	// sampling is load information by probing (probe.go, node/sampling);
	// beaconSeq numbers this host's beacons, gossiped or probed.
	sampling  *sampling.Service
	beaconSeq atomic.Uint64
	fetch     *fetcher  // set in New before any goroutine reads it
	verify    *verifier // nil unless cfg.Verify is set (verify.go)
	// jobs runs tasks' attempts and session requests' answers (workers.go).
	jobs *workers
	// self is this node's peer ID as a string (base58: worth encoding once).
	self string
	// sessions are this node's task sessions, one per host (session.go).
	sessMu   sync.Mutex
	sessions map[peer.ID]*clientSession
	// noSession is when each host refused a session (session.go).
	noSession sync.Map
	// refreshed is when each peer's addresses were last looked up again
	// after a failed dial (dispatch.go, refreshAddrs).
	refreshed sync.Map

	started time.Time
	stats   counters
	tmpDir  string      // ephemeral store, removed on Close
	lock    *dirLock    // the data directory's, held until Close
	peers   *peerMemory // remembered peers (nil for an ephemeral node); peers.go

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
	n := &Node{cfg: cfg, log: cfg.Logger, started: time.Now(), schedCfg: cfg.Scheduler, sessions: make(map[peer.ID]*clientSession)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.jobs = newWorkers(n.ctx.Done())
	n.waiting = newWaitRoom(func() int {
		v := n.View()
		n.ledger.adjust(v, n.viewExpiry())
		return scheduler.FreeCapacity(v, "")
	})
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

	if cfg.DataDir != "" {
		// First, so a second process on this directory stops before it
		// touches the store or the listen port.
		if n.lock, err = lockDataDir(cfg.DataDir); err != nil {
			return err
		}
	}
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
	storeDir := filepath.Join(dir, "store")
	storeOpts := []store.Option{store.WithBudget(cfg.StoreBudget), store.WithLogger(n.log.With("sub", "store"))}
	if n.tmpDir != "" {
		// The store goes with the node's temporary directory: a sync per
		// result would protect nothing.
		storeOpts = append(storeOpts, store.WithoutSync())
	}
	n.store, err = store.Open(storeDir, storeOpts...)
	if errors.Is(err, store.ErrCorrupt) {
		// A damaged store must not keep the node down: what still verifies
		// is as good as ever, and the rest is computed or fetched again.
		n.log.Error("results store is damaged; moving it aside and starting with every result that still verifies", "dir", storeDir, "err", err)
		rep, rerr := store.Repair(storeDir, storeOpts...)
		if err = rerr; err == nil {
			n.log.Warn("results store repaired: started with the results salvaged; delete the damaged copy once no longer needed",
				"dir", storeDir, "kept", rep.Kept, "lost", len(rep.Lost), "damaged", rep.Damaged, "unlisted", rep.Unlisted)
			n.store, err = store.Open(storeDir, storeOpts...)
		}
	}
	if err != nil {
		return fmt.Errorf("opening results store in %s: %w", dir, err)
	}
	if n.prov, err = providers.Open(filepath.Join(dir, "dht"), n.log.With("sub", "providers")); err != nil {
		return err
	}
	n.bw = metrics.NewBandwidthCounter()
	if n.host, n.reach, err = newHost(n.key, cfg, dir, n.bw, n.log); err != nil {
		return err
	}
	n.self = n.host.ID().String()
	mode := dht.ModeClient
	if cfg.DHTServer {
		mode = dht.ModeServer
	}
	n.dht, err = dht.New(n.host,
		dht.Mode(mode),
		dht.ProtocolPrefix(protocol.DHTPrefix),
		// An ordered store: a lookup is a seek, not a scan of every record
		// under a lock (node/providers, issue 14).
		dht.ProviderDatastore(n.prov.Datastore()),
		dht.NamespacedValidator(protocol.CapacityNamespace, protocol.CapacityValidator{}),
		// A private network has no public bootstrappers to fall back on.
		dht.BootstrapPeers(),
	)
	if err != nil {
		return fmt.Errorf("starting DHT: %w", err)
	}
	if err := n.startProvides(); err != nil {
		return err
	}
	if n.gossip, err = newGossip(n.ctx, n.host, &n.cfg, n.log.With("sub", "gossip")); err != nil {
		return err
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.gossip.drain(n.ctx)
	}()
	if err := n.startSampling(); err != nil {
		return err
	}
	if err := n.startVerify(); err != nil {
		return err
	}
	if cfg.Kernel != nil {
		if n.cfg.MaxTempC == 0 {
			n.cfg.MaxTempC = deviceMaxTemp(ctx, cfg)
		}
		n.serve = newServer(n)
		n.startHours() // before the handler: out of hours, not one task
		n.host.SetStreamHandler(protocol.TaskProtocol, n.serve.handle)
		n.host.SetStreamHandler(protocol.SessionProtocol, n.serve.handleSession)
	}
	n.startFetch()
	if err := n.connectBootstrap(ctx, cfg.Bootstrap); err != nil {
		return err
	}
	n.startPeers()
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
		if w, ok := cfg.Kernel.(kernelWatcher); ok {
			n.wg.Add(1)
			go n.watchKernel(w)
		}
	}
	return nil
}

// newHost builds the libp2p host: TCP and QUIC, Noise and TLS, and a
// resource manager with explicit limits for gpunet's own protocols (the
// defaults reset concurrent streams past 75 per protocol per peer); then
// what node/reach adds for the network the node is in: a swarm key (TCP
// only), AutoNAT, a relay service once public, AutoRelay once private,
// and the reachability tracker that Status reads.
//
// One process per listen port: TCP listens without SO_REUSEPORT, which
// go-libp2p sets by default so that dials leave from the listen port; with
// it, a second daemon on the same port starts silently and the kernel splits
// incoming connections between the two. The cost is that TCP dials leave
// from ephemeral ports, so TCP hole punching is off; QUIC keeps it, since it
// shares its one UDP socket in-process (quicreuse opens it with a plain
// net.ListenUDP, which a second process cannot bind).
//
// cfg.MetricsRegisterer, when set, takes go-libp2p's own metrics in place
// of the global registry. libp2p.New registers the resource manager's
// collectors on it too (rcmgr.MustRegisterWith), and the resource manager
// feeds them through the StatsTraceReporter it adds unless its metrics are
// disabled, so nothing more is needed here; node/metrics' test checks that
// the libp2p_rcmgr_ families arrive. go-libp2p's collectors are package
// variables shared by every host in the process: several nodes in one
// process (the tests, the demo) may each have their own registry without a
// clash, but each shows the process's totals; a daemon runs one node.
//
// cfg.HostOptions come last, so a test can put the host on a simulated
// network (node/simnet_test.go).
//
// dir is the node's data directory (its temporary one when ephemeral),
// where swarm.key is looked for when cfg.SwarmKeyFile is empty.
func newHost(key crypto.PrivKey, cfg Config, dir string, bw metrics.Reporter, log *slog.Logger) (host.Host, *reach.Tracker, error) {
	addrs := make([]ma.Multiaddr, 0, len(cfg.ListenAddrs))
	for _, s := range cfg.ListenAddrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, nil, fmt.Errorf("listen address %q: %w", s, err)
		}
		addrs = append(addrs, a)
	}
	rs := reach.Settings{
		// A one-shot client (a DHT client) dials out and leaves: it has
		// nothing to relay and no one needs to dial it.
		Serve:        cfg.DHTServer && len(addrs) > 0,
		RelayService: cfg.RelayService,
		Log:          log.With("sub", "reach"),
	}
	var err error
	if rs.Force, err = reach.ParseReachability(cfg.Reachability); err != nil {
		return nil, nil, err
	}
	if path := reach.SwarmKeyPath(cfg.SwarmKeyFile, dir); path != "" {
		if rs.PSK, err = reach.LoadSwarmKey(path); err != nil {
			return nil, nil, err
		}
		log.Info("private swarm: only peers with this swarm key can connect", "key", path)
	}
	if len(cfg.Bootstrap) > 0 {
		// Bootstrap peers are the first relay candidates; a malformed one
		// is connectBootstrap's to report.
		rs.Relays, _ = ParseAddrInfos(cfg.Bootstrap)
	}
	plan, err := reach.NewPlan(rs, addrs)
	if err != nil {
		return nil, nil, err
	}
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	for _, p := range []string{protocol.TaskProtocol, protocol.FetchProtocol} {
		// One peer may have many tasks in flight (a client submitting a
		// batch), but not enough to exhaust the host.
		limits.AddProtocolPeerLimit(libp2pProto(p), rcmgr.BaseLimit{StreamsInbound: 128, StreamsOutbound: 128, Streams: 256, Memory: 64 << 20}, rcmgr.BaseLimitIncrease{})
		limits.AddProtocolLimit(libp2pProto(p), rcmgr.BaseLimit{StreamsInbound: 1024, StreamsOutbound: 1024, Streams: 2048, Memory: 512 << 20}, rcmgr.BaseLimitIncrease{})
	}
	// A client keeps one session per host; a few spare for one reopened
	// while the last still closes. Each carries at most MaxSessionTasks.
	limits.AddProtocolPeerLimit(libp2pProto(protocol.SessionProtocol), rcmgr.BaseLimit{StreamsInbound: 4, StreamsOutbound: 4, Streams: 8, Memory: 64 << 20}, rcmgr.BaseLimitIncrease{})
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		return nil, nil, fmt.Errorf("resource manager: %w", err)
	}
	var cm corecm.ConnManager = &corecm.NullConnMgr{}
	if cfg.ConnsHigh > 0 {
		if cm, err = connmgr.NewConnManager(cfg.ConnsLow, cfg.ConnsHigh, connmgr.WithGracePeriod(cfg.ConnsGrace)); err != nil {
			return nil, nil, fmt.Errorf("connection manager: %w", err)
		}
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ConnectionManager(cm),
		libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.ResourceManager(rm),
		libp2p.EnableHolePunching(),
		libp2p.BandwidthReporter(bw),
		// Listening is done below, address by address: libp2p's own
		// listening succeeds if any one address works and drops the
		// errors' causes, so a port taken on one transport would pass.
		libp2p.NoListenAddrs,
	}
	if plan.QUIC {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	if cfg.MetricsRegisterer != nil {
		opts = append(opts, libp2p.PrometheusRegisterer(cfg.MetricsRegisterer))
	}
	opts = append(opts, plan.Options...)
	h, err := libp2p.New(append(opts, cfg.HostOptions...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("starting libp2p host: %w", err)
	}
	plan.Attach(h)
	tr, err := reach.NewTracker(h, rs)
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("following reachability: %w", err)
	}
	if err := listenAll(h, plan.Listen, log); err != nil {
		tr.Close()
		h.Close()
		return nil, nil, err
	}
	return h, tr, nil
}

// listenAll listens on every address. A port in use fails at once, since
// it means another process (most likely another gpunet) is there; other
// failures (no IPv6 on this machine, say) only log, as long as one address
// works.
func listenAll(h host.Host, addrs []ma.Multiaddr, log *slog.Logger) error {
	sw, ok := h.Network().(interface{ AddListenAddr(ma.Multiaddr) error })
	if !ok {
		return h.Network().Listen(addrs...)
	}
	var errs []error
	for _, a := range addrs {
		err := sw.AddListenAddr(a)
		switch {
		case err == nil:
			continue
		case errors.Is(err, syscall.EADDRINUSE):
			return fmt.Errorf("listen port %s in use (%s): another gpunet running? stop it, or pick a free port with --listen: %w", listenPort(a), a, err)
		}
		errs = append(errs, fmt.Errorf("listening on %s: %w", a, err))
	}
	if len(errs) == len(addrs) && len(addrs) > 0 {
		return errors.Join(errs...)
	}
	for _, err := range errs {
		log.Warn("not listening on one address", "err", err)
	}
	return nil
}

// listenPort is a listen address's TCP or UDP port, for error messages.
func listenPort(a ma.Multiaddr) string {
	for _, code := range []int{ma.P_TCP, ma.P_UDP} {
		if v, err := a.ValueForProtocol(code); err == nil {
			return v
		}
	}
	return a.String()
}

// connectBootstrap dials every bootstrap peer and waits briefly for the DHT
// routing table to fill, so a lookup right after New finds something.
//
// When peers were given and none answers, a client (not a DHT server: a
// one-shot submit) fails, since it came to do one thing now and its user
// should hear at once that the address is wrong. A daemon or host only
// warns and starts: it is meant to stay up, and its redial loop (peers.go)
// keeps trying, so a daemon started before its bootstrap peer, or restarted
// while that peer is down, joins when the peer comes back.
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
			errs = append(errs, fmt.Errorf("%s: %w", ai.ID, reach.ExplainDialError(err, n.reach.Info().PrivateSwarm)))
			continue
		}
		ok++
	}
	if ok == 0 {
		err := fmt.Errorf("could not reach any bootstrap peer (is a daemon running there?): %w", errors.Join(errs...))
		if !n.cfg.DHTServer {
			return err
		}
		n.log.Warn("starting alone; will keep dialling bootstrap and remembered peers", "err", err)
		return nil
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
	n.waiting.close()
	var errs []error
	if n.mdns != nil {
		errs = append(errs, n.mdns.Close())
	}
	if n.host != nil {
		n.host.RemoveStreamHandler(protocol.TaskProtocol)
		n.host.RemoveStreamHandler(protocol.SessionProtocol)
		n.host.RemoveStreamHandler(protocol.FetchProtocol)
	}
	if n.serve != nil {
		n.serve.close()
	}
	n.closeSessions()
	n.wg.Wait()
	if n.sampling != nil {
		errs = append(errs, n.sampling.Close())
	}
	errs = append(errs, n.closePeers()) // while the host still knows its peers
	if n.gossip != nil {
		if n.verify != nil {
			n.verify.close()
		}
		n.gossip.close()
	}
	if n.dht != nil {
		errs = append(errs, n.dht.Close())
	}
	errs = append(errs, n.prov.Close()) // after the DHT, which flushes into it
	if n.reach != nil {
		errs = append(errs, n.reach.Close())
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
	errs = append(errs, n.lock.release()) // last: the directory is free now
	return errors.Join(errs...)
}
