// Package scale runs a swarm of real gpunet nodes, with everything a
// daemon runs (libp2p host, DHT, beacon gossip, dispatch, the task
// service), on a simulated network in one process, and measures what one
// node costs as the swarm grows: a task's latency, the bytes per second a
// node sends and receives, and its heap and goroutines.
//
// The network is github.com/marcopolo/simnet under go-libp2p's QUIC
// transport (as go-libp2p's x/simlibp2p builds it): no socket is opened,
// and every packet crosses a link with a fixed latency. Run inside a
// testing/synctest bubble, the swarm runs in virtual time: the clock moves
// only when every goroutine waits, so a latency is what the protocol's
// round trips and timers make it, not how busy the machine's cores are.
// Outside a bubble it runs in real time, CPU-bound for large swarms.
//
// The scale test (scale_test.go, in its own test process) and `gpunet bench scale` use it. It
// imports the node and is imported by neither the node nor the daemon's
// other packages.
package scale

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/marcopolo/simnet"
	"github.com/quic-go/quic-go"
)

// Options size one swarm and its measurement. Zero fields take the
// defaults of DefaultOptions.
type Options struct {
	// Nodes is every node of the swarm: Bootstraps plain daemons, Clients
	// client nodes, and hosts (no-op kernel) for the rest. At least
	// Bootstraps + Clients + 1.
	Nodes int
	// Bootstraps are daemons without a kernel that every other node joins
	// through, as a real swarm's public bootstrap peers.
	Bootstraps int
	// Clients submit the tasks, one at a time each.
	Clients int
	// Tasks is how many tasks the clients submit in all, each a fresh
	// computation (a new seed) so that no cache answers it.
	Tasks int
	// Latency is each link's one-way latency: a round trip is twice it.
	Latency time.Duration
	// BitsPerSecond is each node's uplink and downlink rate.
	BitsPerSecond int
	// Settle is how long the swarm runs after the last node started,
	// before anything is measured: GossipSub's mesh forms over a few
	// heartbeats (1 s each), and every client must hear every host.
	Settle time.Duration
	// Window is how long idle traffic is measured: the load information
	// (beacons, mesh upkeep) and DHT upkeep a swarm pays with no task.
	Window time.Duration
	// LoadInfo is how every node learns the hosts' load
	// (node.Config.LoadInfo); empty is the node's default, gossip.
	LoadInfo string
	// Tune adjusts each node's config after the harness's own settings
	// (a load-information design's knobs, say); nil for none.
	Tune func(*node.Config)
	// Logger receives every node's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultOptions: a bootstrap daemon and a client, 20 ms round trips (a
// continent), 100 Mbit/s links so that no link is the bottleneck, five
// seconds to settle once every client hears every host (five GossipSub
// heartbeats, two beacon intervals) and ten of idle traffic (five beacons
// from every host).
func DefaultOptions(nodes int) Options {
	return Options{
		Nodes:         nodes,
		Bootstraps:    1,
		Clients:       1,
		Tasks:         20,
		Latency:       10 * time.Millisecond,
		BitsPerSecond: 100_000_000,
		Settle:        5 * time.Second,
		Window:        10 * time.Second,
	}
}

func (o *Options) fill() error {
	d := DefaultOptions(o.Nodes)
	setInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setInt(&o.Bootstraps, d.Bootstraps)
	setInt(&o.Clients, d.Clients)
	setInt(&o.Tasks, d.Tasks)
	setInt(&o.BitsPerSecond, d.BitsPerSecond)
	setDur(&o.Latency, d.Latency)
	setDur(&o.Settle, d.Settle)
	setDur(&o.Window, d.Window)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Nodes < o.Bootstraps+o.Clients+1 || o.Nodes > 60000 {
		return fmt.Errorf("%d nodes with %d bootstrap(s) and %d client(s): want room for at least one host, and at most 60000 nodes",
			o.Nodes, o.Bootstraps, o.Clients)
	}
	if o.Tasks < 1 || o.Latency < 0 || o.BitsPerSecond < 0 || o.Settle < 0 || o.Window <= 0 {
		return errors.New("want at least one task, a positive window, and no negative latency, rate or settle time")
	}
	return nil
}

// Report is one swarm's figures. Times are on the swarm's clock: virtual
// inside a synctest bubble, real outside one (Virtual says which).
type Report struct {
	Nodes      int  `json:"nodes"`
	Hosts      int  `json:"hosts"`
	Clients    int  `json:"clients"`
	Bootstraps int  `json:"bootstraps"`
	Virtual    bool `json:"virtual_time"`

	// Tasks submitted (Options.Tasks twice: as a user submits, then
	// with NoCache), and how many came back verified from a host that
	// computed them (a kernel run, not a cache).
	Tasks     int `json:"tasks"`
	Completed int `json:"completed"`
	// Submit's latency, from the call to a verified result, as a user
	// submits: the network cache (a DHT lookup) is asked first.
	LatencyP50ms  float64 `json:"latency_p50_ms"`
	LatencyP99ms  float64 `json:"latency_p99_ms"`
	LatencyMeanms float64 `json:"latency_mean_ms"`
	// PlaceP50ms and PlaceP99ms are Submit's latency with NoCache:
	// placement on the client's view and the task at the host, no
	// lookup.
	PlaceP50ms float64 `json:"place_latency_p50_ms"`
	PlaceP99ms float64 `json:"place_latency_p99_ms"`
	// HostsUsed is how many distinct hosts ran the tasks.
	HostsUsed int `json:"hosts_used"`

	// Bytes every node sent and received on its link (QUIC packets,
	// so with every header and handshake), per node per second of the
	// idle window: what the swarm costs a node with no task running.
	IdleBytesPerNodeS float64 `json:"idle_bytes_per_node_s"`
	// The same for the node that moved the most, and for hosts, clients
	// and bootstraps apart (a node's cost depends on its role).
	IdleBytesMaxNodeS      float64 `json:"idle_bytes_max_node_s"`
	IdleBytesPerHostS      float64 `json:"idle_bytes_per_host_s"`
	IdleBytesPerClientS    float64 `json:"idle_bytes_per_client_s"`
	IdleBytesPerBootstrapS float64 `json:"idle_bytes_per_bootstrap_s"`
	// TaskBytesPerNodeS is the same over the task phase, which adds the
	// tasks' own traffic (DHT lookups, streams, provides) to the idle
	// traffic.
	TaskBytesPerNodeS float64 `json:"task_bytes_per_node_s"`
	TaskPhaseS        float64 `json:"task_phase_s"`
	// TaskBytesByProtocol splits the task phase's traffic as
	// IdleBytesByProtocol does the idle window's; ProbeBytesPerNodeS is
	// its load-information part when probing: the probe, idle-notice and
	// shuffle protocols together (node/sampling).
	TaskBytesByProtocol map[string]float64 `json:"task_bytes_by_protocol_per_node_s"`
	ProbeBytesPerNodeS  float64            `json:"probe_bytes_per_node_s"`
	// IdleBytesByProtocol splits the idle window's traffic by libp2p
	// protocol, per node per second: the bytes the protocol's streams
	// carried (sent plus received), before QUIC's framing and
	// encryption, so they sum to less than IdleBytesPerNodeS.
	IdleBytesByProtocol map[string]float64 `json:"idle_bytes_by_protocol_per_node_s"`
	// BeaconsPerS is how many beacons the swarm's hosts published per
	// second of the idle window, BeaconPayloadBytes their mean size, and
	// GossipBytesPerBeacon the GossipSub bytes (sent plus received) each
	// node moved per beacon published: how many times a beacon's
	// payload one node pays, with GossipSub's envelope, signatures,
	// duplicates and control messages.
	BeaconsPerS          float64 `json:"beacons_per_s"`
	BeaconPayloadBytes   float64 `json:"beacon_payload_bytes"`
	GossipBytesPerBeacon float64 `json:"gossip_bytes_per_node_per_beacon"`
	// ConnsPerNode is the mean number of open connections per node at the
	// end of the window. IdleConnsOpenedPerNodeS and IdleConnsClosedPerNodeS
	// are how many connections each node opened (either side dialling) and
	// closed per second of the window: the connection manager's trims and
	// any redials after them.
	ConnsPerNode            float64 `json:"conns_per_node"`
	IdleConnsOpenedPerNodeS float64 `json:"idle_conns_opened_per_node_s"`
	IdleConnsClosedPerNodeS float64 `json:"idle_conns_closed_per_node_s"`

	// The process's live heap after a collection and its goroutines,
	// over and above what they were before the swarm started, per node.
	HeapBytesPerNode  float64 `json:"heap_bytes_per_node"`
	GoroutinesPerNode float64 `json:"goroutines_per_node"`

	// StartS is how long the nodes took to start and settle, on the
	// swarm's clock. WallS is the whole run's real time, the machine's
	// cost rather than a figure of the protocol's: a caller that runs the
	// swarm in a bubble, where the real clock cannot be read, fills it in.
	StartS float64 `json:"start_s"`
	WallS  float64 `json:"wall_s,omitempty"`
}

// member is one node of the swarm and its place on the simulated network.
type member struct {
	n    *node.Node
	role string // "bootstrap", "host" or "client"
	ep   *endpoint
	// opened and closed count the node's connections as they open and
	// close: redialling shows in them before it shows in bytes.
	opened, closed atomic.Int64
}

// endpoint holds a node's simulated UDP socket once QUIC opens it.
type endpoint struct {
	conn atomic.Pointer[simnet.SimConn]
}

func (e *endpoint) bytes() int64 {
	c := e.conn.Load()
	if c == nil {
		return 0
	}
	s := c.Stats()
	return int64(s.BytesSent) + int64(s.BytesRcvd)
}

// PrepareProcess starts, outside any synctest bubble, the process-wide
// goroutine that go-libp2p's bandwidth counters share (go-flow-metrics'
// sweeper). It starts on the first byte counted; started inside a bubble
// it would belong to that bubble, which could then never end (the
// sweeper waits for the next counter forever), and a later bubble's
// counters would touch a channel of the first. Call it once before the first bubble.
func PrepareProcess() {
	metrics.NewBandwidthCounter().LogSentMessage(1)
}

// Run starts a swarm of o.Nodes nodes on a fresh simulated network, lets
// it settle, measures its idle traffic, submits o.Tasks tasks, measures
// again, and closes every node and the network before it returns. ctx
// bounds the run.
func Run(ctx context.Context, o Options) (r *Report, err error) {
	if err := o.fill(); err != nil {
		return nil, err
	}
	runtime.GC()
	heap0, g0 := liveHeap(), runtime.NumGoroutine()

	s := &swarm{o: o, net: &simnet.Simnet{LatencyFunc: simnet.StaticLatency(o.Latency), Logger: o.Logger}}
	s.net.Start()
	defer func() {
		if cerr := s.close(); err == nil && cerr != nil {
			err = cerr
			r = nil
		}
	}()

	t0 := time.Now()
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	if err := s.waitViews(ctx); err != nil {
		return nil, err
	}
	if err := sleep(ctx, o.Settle); err != nil {
		return nil, err
	}
	r = &Report{Nodes: o.Nodes, Bootstraps: o.Bootstraps, Clients: o.Clients, Hosts: o.Nodes - o.Bootstraps - o.Clients,
		Virtual: isVirtual(), StartS: time.Since(t0).Seconds()}

	// Idle traffic, then memory while the swarm is up.
	n0, sz0 := s.beacons(ctx)
	b0, p0 := s.bytes(), s.proto.snapshot()
	o0, c0 := s.conns()
	if err := sleep(ctx, o.Window); err != nil {
		return nil, err
	}
	b1, p1 := s.bytes(), s.proto.snapshot()
	o1, c1 := s.conns()
	n1, sz1 := s.beacons(ctx)
	r.IdleConnsOpenedPerNodeS = float64(o1-o0) / o.Window.Seconds() / float64(o.Nodes)
	r.IdleConnsClosedPerNodeS = float64(c1-c0) / o.Window.Seconds() / float64(o.Nodes)
	if n1 > n0 {
		r.BeaconsPerS = float64(n1-n0) / o.Window.Seconds()
		r.BeaconPayloadBytes = float64(sz1-sz0) / float64(n1-n0)
	}
	s.idle(r, b0, b1, o.Window)
	r.IdleBytesByProtocol = map[string]float64{}
	for p, v := range p1 {
		if d := v - p0[p]; d > 0 {
			r.IdleBytesByProtocol[p] = float64(d) / o.Window.Seconds() / float64(o.Nodes)
			if strings.HasPrefix(p, "/meshsub/") && r.BeaconsPerS > 0 {
				r.GossipBytesPerBeacon += r.IdleBytesByProtocol[p] / r.BeaconsPerS
			}
		}
	}
	runtime.GC()
	r.HeapBytesPerNode = float64(int64(liveHeap())-int64(heap0)) / float64(o.Nodes)
	r.GoroutinesPerNode = float64(runtime.NumGoroutine()-g0) / float64(o.Nodes)
	var conns int
	for _, m := range s.members {
		conns += len(m.n.Host().Network().Conns())
	}
	r.ConnsPerNode = float64(conns) / float64(o.Nodes)

	if err := s.tasks(ctx, r); err != nil {
		return nil, err
	}
	return r, nil
}

type swarm struct {
	o       Options
	net     *simnet.Simnet
	members []*member
	boot    []string
	proto   protoBytes

	cmMu sync.Mutex
	// netMu serialises simnet.NewEndpoint, which appends to the network's
	// links unguarded, while nodes start concurrently.
	netMu sync.Mutex
	cms   []*quicreuse.ConnManager // closed after the nodes: go-libp2p does not close one it was given
}

// start starts the bootstraps one by one, then the hosts and clients,
// joined through every bootstrap, startParallel at a time: a swarm that
// comes up together, as after a launch, and fewer seconds of gossip
// among the first nodes while the last start.
func (s *swarm) start(ctx context.Context) error {
	hosts := s.o.Nodes - s.o.Bootstraps - s.o.Clients
	s.members = make([]*member, s.o.Nodes)
	role := func(i int) string {
		switch {
		case i < s.o.Bootstraps:
			return "bootstrap"
		case i >= s.o.Bootstraps+hosts:
			return "client"
		}
		return "host"
	}
	for i := range s.o.Bootstraps {
		m, err := s.add(ctx, i, role(i))
		if err != nil {
			return fmt.Errorf("starting bootstrap %d: %w", i, err)
		}
		s.members[i] = m
		s.boot = append(s.boot, m.n.Addrs()...)
	}
	errs := make([]error, s.o.Nodes)
	sem := make(chan struct{}, startParallel)
	var wg sync.WaitGroup
	for i := s.o.Bootstraps; i < s.o.Nodes; i++ {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			m, err := s.add(ctx, i, role(i))
			if err != nil {
				errs[i] = fmt.Errorf("starting %s %d of %d: %w", role(i), i, s.o.Nodes, err)
				return
			}
			s.members[i] = m
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return nil
}

// startParallel bounds the nodes starting at once: each start is a few
// round trips (bootstrap, identify, the first DHT walk), and the
// bootstraps answer every one of them.
const startParallel = 16

func (s *swarm) add(ctx context.Context, i int, role string) (*member, error) {
	ip := simnet.IntToPublicIPv4(i)
	m := &member{role: role, ep: &endpoint{}}
	cfg := node.DefaultConfig()
	cfg.DataDir = "" // ephemeral: a fresh identity, a store in a temporary directory
	cfg.ListenAddrs = []string{fmt.Sprintf("/ip4/%s/udp/8000/quic-v1", ip)}
	cfg.Bootstrap = s.boot
	cfg.MDNS = false
	cfg.Logger = s.o.Logger.With("node", fmt.Sprintf("%s-%d", role, i))
	// Every node is on a public address of the simulated network: AutoNAT
	// would only learn that, and its dialer hosts open real sockets.
	cfg.Reachability = "public"
	// The protocol's cost, not a simulated GPU's: the no-op kernel at
	// once, and no per-submitter rate limit on the one client.
	cfg.SimulateGPUSpeed = false
	cfg.RateLimit = 0
	// kad-dht's SweepingProvider cannot close inside a synctest bubble
	// (Config.ProvideOneByOne): results are provided one walk each, as
	// nodes did before the sweep.
	cfg.ProvideOneByOne = true
	if s.o.LoadInfo != "" {
		cfg.LoadInfo = s.o.LoadInfo
	}
	cfg.HostOptions = []libp2p.Option{
		s.quic(m.ep),
		// go-libp2p's x/simlibp2p turns this off too: identify's address
		// discovery stalls a synctest bubble, and every address here is
		// already the one peers dial.
		libp2p.DisableIdentifyAddressDiscovery(),
		noAutoNATDialers,
		s.proto.option(),
	}
	switch role {
	case "bootstrap":
		cfg.DHTServer = true
	case "host":
		cfg.DHTServer = true
		cfg.Kernel = kernel.Noop{}
	case "client":
		cfg.DHTServer = false
	}
	if s.o.Tune != nil {
		s.o.Tune(&cfg)
	}
	n, err := node.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	m.n = n
	n.Host().Network().Notify(&network.NotifyBundle{
		ConnectedF:    func(network.Network, network.Conn) { m.opened.Add(1) },
		DisconnectedF: func(network.Network, network.Conn) { m.closed.Add(1) },
	})
	return m, nil
}

// quic puts a node's QUIC transport on the simulated network, keeping its
// socket in ep for the byte counts.
func (s *swarm) quic(ep *endpoint) libp2p.Option {
	src := &fixedSourceIP{}
	link := simnet.NodeBiDiLinkSettings{
		Downlink: simnet.LinkSettings{BitsPerSecond: s.o.BitsPerSecond},
		Uplink:   simnet.LinkSettings{BitsPerSecond: s.o.BitsPerSecond},
	}
	newCM := func(k quic.StatelessResetKey, tk quic.TokenGeneratorKey, opts ...quicreuse.Option) (*quicreuse.ConnManager, error) {
		cm, err := quicreuse.NewConnManager(k, tk, opts...)
		if err == nil {
			s.cmMu.Lock()
			s.cms = append(s.cms, cm)
			s.cmMu.Unlock()
		}
		return cm, err
	}
	return libp2p.QUICReuse(newCM,
		quicreuse.OverrideSourceIPSelector(func() (quicreuse.SourceIPSelector, error) { return src, nil }),
		quicreuse.OverrideListenUDP(func(_ string, a *net.UDPAddr) (net.PacketConn, error) {
			src.ip.Store(&a.IP)
			s.netMu.Lock()
			c := s.net.NewEndpoint(a, link)
			s.netMu.Unlock()
			ep.conn.Store(c)
			return c, nil
		}))
}

// fixedSourceIP answers that a node sends from its listen IP: there is no
// routing table on simnet to ask.
type fixedSourceIP struct{ ip atomic.Pointer[net.IP] }

func (f *fixedSourceIP) PreferredSourceIPForDestination(*net.UDPAddr) (net.IP, error) {
	return *f.ip.Load(), nil
}

// noAutoNATDialers turns off the throwaway hosts AutoNAT dials from: they
// would be built on real sockets, not simnet's.
func noAutoNATDialers(c *libp2p.Config) error {
	c.EnableAutoNATv2 = false
	c.AutoNATConfig.EnableService = false
	return nil
}

// protoBytes counts stream bytes by protocol over every node of the
// swarm, beside the node's own bandwidth counter (which it wraps, so
// that the node's figures stay whole).
type protoBytes struct{ m sync.Map } // protocol.ID -> *atomic.Int64

func (p *protoBytes) add(n int64, id lp2pproto.ID) {
	v, ok := p.m.Load(id)
	if !ok {
		v, _ = p.m.LoadOrStore(id, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(n)
}

func (p *protoBytes) snapshot() map[string]int64 {
	out := map[string]int64{}
	p.m.Range(func(k, v any) bool {
		out[string(k.(lp2pproto.ID))] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// option wraps the reporter the node installed (node.newHost passes
// libp2p.BandwidthReporter before HostOptions, and go-libp2p refuses a
// second one through that option).
func (p *protoBytes) option() libp2p.Option {
	return func(c *libp2p.Config) error {
		if c.Reporter == nil {
			c.Reporter = metrics.NewBandwidthCounter()
		}
		c.Reporter = &teeReporter{Reporter: c.Reporter, p: p}
		return nil
	}
}

type teeReporter struct {
	metrics.Reporter
	p *protoBytes
}

func (t *teeReporter) LogSentMessageStream(n int64, id lp2pproto.ID, peer peer.ID) {
	t.p.add(n, id)
	t.Reporter.LogSentMessageStream(n, id, peer)
}

func (t *teeReporter) LogRecvMessageStream(n int64, id lp2pproto.ID, peer peer.ID) {
	t.p.add(n, id)
	t.Reporter.LogRecvMessageStream(n, id, peer)
}

// waitViews waits until every client's view holds every host it hears,
// so that placement has load to go on (bounded by ctx; on the swarm's
// clock, a poll costs nothing in a bubble). A probing client hears no
// host: it waits instead until the DHT names as many hosts as a search
// returns (20, or every host of a smaller swarm), the hosts' model
// records having reached the peers closest to the model's key.
func (s *swarm) waitViews(ctx context.Context) error {
	if s.o.probing() {
		return s.waitAdvertised(ctx)
	}
	var hosts, clients []*node.Node
	for _, m := range s.members {
		switch m.role {
		case "host":
			hosts = append(hosts, m.n)
		case "client":
			clients = append(clients, m.n)
		}
	}
	for {
		ready := true
		for _, c := range clients {
			want := 0
			for _, h := range hosts {
				if c.Hears(h.ID()) {
					want++
				}
			}
			if len(c.View()) < want {
				ready = false
				break
			}
		}
		if ready {
			return nil
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("clients' views never held every host: %w", err)
		}
	}
}

// waitAdvertised is waitViews for probing clients.
func (s *swarm) waitAdvertised(ctx context.Context) error {
	hosts := 0
	var clients []*node.Node
	for _, m := range s.members {
		switch m.role {
		case "host":
			hosts++
		case "client":
			clients = append(clients, m.n)
		}
	}
	want := min(hosts, 20)
	for _, c := range clients {
		for {
			found, err := c.FindHosts(ctx, kernel.NoopModel, want)
			if err == nil && len(found) >= want {
				break
			}
			if err := sleep(ctx, time.Second); err != nil {
				return fmt.Errorf("the DHT never named %d hosts to a client (last: %d, %v): %w", want, len(found), err, ctx.Err())
			}
		}
	}
	return nil
}

// probing reports whether the swarm's nodes learn load by probing.
func (o *Options) probing() bool { return o.LoadInfo == node.LoadProbe }

// bytes is every member's link bytes, in the order of s.members.
func (s *swarm) bytes() []int64 {
	out := make([]int64, len(s.members))
	for i, m := range s.members {
		out[i] = m.ep.bytes()
	}
	return out
}

// conns is how many connections the members opened and closed so far,
// all together.
func (s *swarm) conns() (opened, closed int64) {
	for _, m := range s.members {
		opened += m.opened.Load()
		closed += m.closed.Load()
	}
	return opened, closed
}

func (s *swarm) idle(r *Report, b0, b1 []int64, window time.Duration) {
	sec := window.Seconds()
	sum := map[string]float64{}
	count := map[string]int{}
	var total float64
	for i, m := range s.members {
		d := float64(b1[i]-b0[i]) / sec
		total += d
		sum[m.role] += d
		count[m.role]++
		r.IdleBytesMaxNodeS = max(r.IdleBytesMaxNodeS, d)
	}
	per := func(role string) float64 {
		if count[role] == 0 {
			return 0
		}
		return sum[role] / float64(count[role])
	}
	r.IdleBytesPerNodeS = total / float64(len(s.members))
	r.IdleBytesPerHostS = per("host")
	r.IdleBytesPerClientS = per("client")
	r.IdleBytesPerBootstrapS = per("bootstrap")
}

// tasks has every client submit its share of o.Tasks one at a time, as
// a user would (the network cache asked first), then as many again with
// NoCache (placement and the task alone), and fills r's latency and
// task-phase figures.
func (s *swarm) tasks(ctx context.Context, r *Report) error {
	var clients []*node.Node
	for _, m := range s.members {
		if m.role == "client" {
			clients = append(clients, m.n)
		}
	}
	runs0 := s.kernelRuns()
	b0, p0 := s.bytes(), s.proto.snapshot()
	start := time.Now()
	full, err := s.submitAll(ctx, clients, 1, node.SubmitOptions{})
	if err != nil {
		return err
	}
	place, err := s.submitAll(ctx, clients, 2, node.SubmitOptions{NoCache: true})
	if err != nil {
		return err
	}
	phase := time.Since(start)
	b1, p1 := s.bytes(), s.proto.snapshot()
	r.Tasks, r.Completed = 2*s.o.Tasks, len(full)+len(place)
	if got := s.kernelRuns() - runs0; got != uint64(r.Completed) {
		return fmt.Errorf("%d tasks completed but the hosts' kernels ran %d", r.Completed, got)
	}
	r.LatencyP50ms, r.LatencyP99ms, r.LatencyMeanms = latencies(full)
	r.PlaceP50ms, r.PlaceP99ms, _ = latencies(place)
	for _, m := range s.members {
		if m.role == "host" && m.n.KernelRuns() > 0 {
			r.HostsUsed++
		}
	}
	r.TaskPhaseS = phase.Seconds()
	if phase > 0 {
		var total int64
		for i := range b1 {
			total += b1[i] - b0[i]
		}
		r.TaskBytesPerNodeS = float64(total) / phase.Seconds() / float64(len(s.members))
		r.TaskBytesByProtocol = map[string]float64{}
		for p, v := range p1 {
			if d := v - p0[p]; d > 0 {
				r.TaskBytesByProtocol[p] = float64(d) / phase.Seconds() / float64(len(s.members))
				switch p {
				case protocol.ProbeProtocol, protocol.IdleProtocol, protocol.SampleProtocol:
					r.ProbeBytesPerNodeS += r.TaskBytesByProtocol[p]
				}
			}
		}
	}
	return nil
}

// submitAll has the clients submit o.Tasks fresh tasks in all, each
// client one at a time, and returns every Submit's latency. A task
// answered from a cache fails the run: each must be computed.
func (s *swarm) submitAll(ctx context.Context, clients []*node.Node, round uint64, opts node.SubmitOptions) ([]time.Duration, error) {
	lat := make([][]time.Duration, len(clients))
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for ci, c := range clients {
		share := s.o.Tasks / len(clients)
		if ci < s.o.Tasks%len(clients) {
			share++
		}
		wg.Go(func() {
			for k := range share {
				seed := round<<48 | uint64(ci)<<32 | uint64(k+1)
				t := protocol.Task{Model: kernel.NoopModel, Prompt: "scale", Seed: seed, Width: 64, Height: 64, Steps: 1}
				t0 := time.Now()
				res, err := c.Submit(ctx, t, opts)
				if err != nil {
					errs[ci] = fmt.Errorf("client %d, task %d: %w", ci, k, err)
					return
				}
				lat[ci] = append(lat[ci], time.Since(t0))
				if res.Cache != node.CacheMiss {
					errs[ci] = fmt.Errorf("client %d, task %d: answered from a cache (%s), not computed", ci, k, res.Cache)
					return
				}
			}
		})
	}
	wg.Wait()
	return slices.Concat(lat...), errors.Join(errs...)
}

// latencies are the p50, p99 and mean of ds in milliseconds.
func latencies(ds []time.Duration) (p50, p99, mean float64) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	ds = slices.Sorted(slices.Values(ds))
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return ms(quantile(ds, 0.50)), ms(quantile(ds, 0.99)), ms(sum / time.Duration(len(ds)))
}

// beacons is how many beacons the hosts have published, and their
// payload bytes.
func (s *swarm) beacons(ctx context.Context) (n, size uint64) {
	for _, m := range s.members {
		if m.role == "host" {
			st := m.n.Status(ctx)
			n += st.BeaconsSent
			size += st.BeaconBytes
		}
	}
	return n, size
}

func (s *swarm) kernelRuns() uint64 {
	var n uint64
	for _, m := range s.members {
		n += m.n.KernelRuns()
	}
	return n
}

// close closes the nodes (clients first, bootstraps last), then the QUIC
// connection managers and the network.
func (s *swarm) close() error {
	var errs []error
	for _, m := range slices.Backward(s.members) {
		if m != nil {
			errs = append(errs, m.n.Close())
		}
	}
	s.cmMu.Lock()
	for _, cm := range s.cms {
		errs = append(errs, cm.Close())
	}
	s.cmMu.Unlock()
	s.net.Close()
	return errors.Join(errs...)
}

// sleep waits d on the swarm's clock, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// isVirtual says whether the clock is a synctest bubble's, which starts
// at midnight UTC on 2000-01-01 (testing/synctest's documented epoch).
func isVirtual() bool { return time.Now().Year() == 2000 }

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func liveHeap() uint64 {
	var st runtime.MemStats
	runtime.ReadMemStats(&st)
	return st.HeapAlloc
}
