package node

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node/trust"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultAPIAddr is the local HTTP API's address: loopback only (the API is
// for the machine's own user), on a port chosen to be unlikely to collide.
const DefaultAPIAddr = "127.0.0.1:7447"

// Config.LoadInfo values.
const (
	LoadGossip = "gossip"
	LoadProbe  = "probe"
)

// DefaultListenAddrs listen on a fixed port on all interfaces, as a daemon
// others connect to needs. Tests pass /ip4/127.0.0.1/tcp/0.
var DefaultListenAddrs = []string{
	"/ip4/0.0.0.0/tcp/4747",
	"/ip4/0.0.0.0/udp/4747/quic-v1",
	"/ip6/::/tcp/4747",
	"/ip6/::/udp/4747/quic-v1",
}

// Config configures a Node. Start from DefaultConfig.
type Config struct {
	// DataDir holds the identity key and the results store. Empty means an
	// ephemeral node: a fresh identity and a store in a temporary directory
	// removed on Close (what a one-shot p2p submit uses).
	DataDir string
	// ListenAddrs are libp2p multiaddrs to listen on. Empty means none
	// (a pure client dials out only).
	ListenAddrs []string
	// Bootstrap peers: multiaddrs with /p2p/ID.
	Bootstrap []string
	// MDNS finds peers on the LAN. Off in tests: it multicasts on every
	// interface.
	MDNS bool
	// DHTServer makes this node answer DHT queries (daemons and hosts).
	// Ephemeral clients are DHT clients so they don't pollute routing tables.
	DHTServer bool
	// MinPeers: while the node has fewer connected peers, it redials its
	// bootstrap peers and the peers it remembers (DATA/peers.json), so a
	// restarted daemon rejoins without flags. Default 4: a node with a few
	// connections finds the rest through the DHT and gossip; one or two
	// leave it a partition away from being alone. 0 turns redialling off.
	MinPeers int
	// RedialMin and RedialMax bound the redial loop's backoff, which
	// doubles after each round that connects to no one (with jitter, so a
	// swarm restarted together does not redial in step). 1 s answers a
	// peer that restarts at once; 1 min keeps a node cut off for hours to
	// a dial per remembered peer per minute.
	RedialMin time.Duration
	RedialMax time.Duration

	// The network the node is in (node/reach, docs/nat.md).
	//
	// SwarmKeyFile makes the swarm private: the node connects only to
	// peers with the same key (Kubo's swarm.key format; `gpunet swarm-key
	// generate`), over TCP, since QUIC cannot carry a key. Empty: the key
	// in DATA/swarm.key when that file exists, else the open swarm.
	SwarmKeyFile string
	// Reachability is "" (or "auto") to let AutoNAT find out whether
	// peers can dial this node, or "public" / "private" to say so: an
	// operator who knows the machine is reachable starts its relay at once.
	Reachability string
	// RelayService lets a daemon or host that is publicly reachable relay
	// for peers behind NAT, with limits raised so that results fit
	// (reach.RelayResources). Default on: a swarm of volunteers behind
	// home routers needs someone to relay, and a public node costs little
	// while no one uses it.
	RelayService bool

	// Kernel, when set, makes this node a host that serves tasks.
	Kernel kernel.Kernel
	// Device is the GPU the kernel runs on (simulated or real); optional.
	Device kernel.Device
	// Slots is how many tasks run at once. Default 1: one GPU runs one
	// diffusion job efficiently; more only shares the same silicon.
	Slots int
	// QueueLen bounds tasks waiting for a slot; beyond it the host refuses
	// with "busy" so the client moves on instead of waiting behind a queue.
	QueueLen int

	// MaxTempC is the owner's temperature limit: the host stops taking
	// work and pauses running work before the GPU reaches it. 0 means 5 °C
	// under the device's slowdown temperature, so gpunet never drives a GPU
	// into hardware throttling.
	MaxTempC float64
	// LendHours is when, in local time, the host takes work; outside them
	// it pauses itself, apart from the owner's own pause (Status.OffHours).
	// The zero value is every hour: a GPU lent by default is lent always,
	// and an owner who wants it back by day says when.
	LendHours LendHours
	// SimulateGPUSpeed paces kernel steps to a simulated GPU's throughput
	// and clock, so simulated hosts run at their cards' speed rather than
	// the CPU's. Off for benchmarks that measure protocol overhead.
	SimulateGPUSpeed bool
	// ConnsLow and ConnsHigh are the connection manager's watermarks: past
	// ConnsHigh open connections it closes the least valued ones down to
	// ConnsLow, sparing peers in a GossipSub mesh, in the DHT's routing
	// table, with a task in flight, and connections younger than
	// ConnsGrace. They bound a node's connections, and so its memory,
	// whatever the size of the swarm (issue 14). The defaults are Kubo's,
	// 32 and 96: in `gpunet bench scale` a node's heap stops growing at
	// about 6.5 MB from 100 nodes on, where 96 and 192 let it reach 10 MB
	// at 300; the price is some redialling (2.6 against 0.8 kB/s idle at
	// 300 nodes, docs/bench.md). ConnsHigh 0 turns the manager off.
	ConnsLow, ConnsHigh int
	ConnsGrace          time.Duration
	// RateLimit is tasks per second one submitter may start on this host
	// (0: unlimited), with bursts of RateBurst.
	RateLimit float64
	RateBurst int
	// BeaconInterval is how often a host publishes its load and heat. Two
	// seconds keeps views fresh next to a diffusion task's seconds of
	// runtime for about 100 B/s per host.
	BeaconInterval time.Duration
	// BeaconShards splits the swarm's beacons over this many GossipSub
	// topics (protocol.BeaconShardTopic), a host publishing on the shard
	// of its peer ID; ViewShards is how many of them this node subscribes
	// to (0: all). Every node of a swarm must use the same BeaconShards.
	// Default 1 and all: every node hears every host, which costs each
	// node O(hosts) bytes per second (docs/scheduling.md). A large swarm
	// shards so that a node hears a sample of about a thousand hosts: in
	// the simulator, placing over such a sample of 100,000 hosts stays
	// within 1.05× of the oracle's mean.
	BeaconShards int
	ViewShards   int
	// LoadInfo is how this node learns the hosts' load: LoadGossip (every
	// beacon, over GossipSub) or LoadProbe (a peer-sampling view, probes
	// and idle notices: node/sampling). Default gossip, which a swarm of a
	// few hundred hosts affords; probing costs a node about the same bytes
	// at 1,000 hosts as at 100,000 (docs/scheduling.md, "Load information
	// at scale"). A probing host publishes no beacons; every node answers
	// probes and shuffles in either mode, so a swarm can move over.
	LoadInfo string
	// Probe tunes probing; every default's reason is in scheduler/probe.go.
	Probe scheduler.ProbeConfig
	// QueueHedge lets Submit move a task that waits in a host's queue well
	// past its predicted wait to a host predicted to finish it sooner, once
	// that host has accepted it (scheduler/hedge.go; the scheduler config
	// tunes it). Default on: in the simulator it brings p99 time in system
	// from 1.43× to within 1.1× of an omniscient scheduler.
	QueueHedge bool
	// Scheduler tunes placement and the queue hedge; every default's reason
	// is in scheduler/config.go.
	Scheduler scheduler.Config

	// StoreBudget bounds the results store in bytes (LRU eviction).
	StoreBudget int64
	// AdvertiseInterval is how often a host re-puts its capacity record and
	// re-provides its models; well inside CapacityMaxAge and the DHT's
	// provider record lifetime.
	AdvertiseInterval time.Duration
	// SweepInterval is the period of the DHT provider's reprovide sweep
	// (sweep.go): each result this node provides is reprovided once per
	// period, with the other keys of its keyspace region. 0 (or less) means
	// ReprovideInterval; tests shorten it to watch a sweep.
	SweepInterval time.Duration
	// ProvideOneByOne provides each result with its own DHT walk, as
	// nodes did before the sweep, and reprovides nothing: for harnesses
	// that run nodes inside a testing/synctest bubble (node/scale). kad-dht's
	// SweepingProvider cannot close there: Close waits on a mutex while its
	// prefix-length workers sleep a second between retries, and a bubble's
	// clock does not move while a goroutine waits on a mutex. A daemon
	// leaves it off.
	ProvideOneByOne bool
	// ProvideMinCompute is the least kernel time for which a host provides
	// a result it made on the DHT (announce.go): a cheaper one costs less to
	// compute again than a provide and a lookup cost the swarm. It is still
	// served: from this host's store to a duplicate placed here, as
	// rendezvous placement does, and to a fetch; and once it is asked for
	// again that way, it is provided like any other. 0 provides every result.
	ProvideMinCompute time.Duration
	// NoSessions sends every task on a task stream of its own, as clients
	// before protocol 1.5 did, instead of on the session this node keeps
	// with each host that serves one (session.go).
	NoSessions bool
	// FindTimeout bounds a DHT search for hosts of a model.
	FindTimeout time.Duration
	// TaskTimeout bounds one attempt at one host, from stream open to result.
	TaskTimeout time.Duration
	// EventIdleTimeout is how long a client waits for the next event from a
	// host before it gives up on that host. Hosts send one at least every
	// protocol.KeepaliveInterval (2 s), so 15 s is seven missed keepalives;
	// long before that, after SuspectAfter, the client offers the task to
	// another host too, and moves it once that one accepts.
	EventIdleTimeout time.Duration
	// SuspectAfter is how long a host may be silent before the client
	// suspects it (frozen, or its link gone) and offers the task elsewhere
	// as well: three missed keepalives (protocol.SuspectAfter).
	SuspectAfter time.Duration
	// MaxAttempts, times five, bounds how many hosts may fail one task
	// (not refuse it for load: a refused task waits) before Submit gives up.
	MaxAttempts int
	// SubmitTimeout is a task's deadline when its caller sets none: a
	// surge is waited out, not refused, and an image is worth minutes of
	// waiting in one, not hours.
	SubmitTimeout time.Duration

	// Verify, when set, turns on the checking of other hosts' results
	// (node/trust, docs/trust.md): results of hosts on probation are held
	// until a re-run on another host agrees, later ones re-run at a rate
	// that falls with a clean record, hosts caught are excluded and fraud
	// proofs gossiped. Nil (the zero Config) checks nothing; the gpunet
	// command turns it on with trust.DefaultPolicy unless --verify=false.
	Verify *trust.Policy

	// Observers hear what the node does (metrics, the dashboard); see
	// Observer for their rules.
	Observers []Observer
	// MetricsRegisterer, when set, is where go-libp2p registers its own
	// metrics (swarm, resource manager, identify, hole punching, ...), so
	// they are scraped beside gpunet's; nil leaves libp2p's default, the
	// global registry.
	MetricsRegisterer prometheus.Registerer
	// HostOptions, for tests and embedders, are extra libp2p options
	// applied after gpunet's own (node.newHost), so they add to or
	// override them: a simulated network's transports, say, or, under
	// such a network, a libp2p.Option that turns off AutoNAT's dialer
	// hosts, which would open real sockets. Nil for a daemon.
	HostOptions []libp2p.Option

	// Version is reported in capacity records.
	Version string
	Logger  *slog.Logger

	// now, when set, is the clock the lending hours are read on: for
	// tests, which cannot wait for the hours to turn. nil: time.Now.
	now func() time.Time
}

// DefaultConfig returns a configuration for a daemon in the default data
// directory.
func DefaultConfig() Config {
	return Config{
		DataDir:           DefaultDataDir(),
		ListenAddrs:       append([]string(nil), DefaultListenAddrs...),
		MDNS:              true,
		DHTServer:         true,
		MinPeers:          4,
		RedialMin:         time.Second,
		RedialMax:         time.Minute,
		RelayService:      true,
		Slots:             1,
		QueueLen:          8,
		SimulateGPUSpeed:  true,
		ConnsLow:          32,
		ConnsHigh:         96,
		ConnsGrace:        30 * time.Second,
		RateLimit:         10,
		RateBurst:         20,
		BeaconInterval:    2 * time.Second,
		StoreBudget:       1 << 30,
		AdvertiseInterval: 10 * time.Minute,
		ProvideMinCompute: 50 * time.Millisecond,
		FindTimeout:       5 * time.Second,
		TaskTimeout:       5 * time.Minute,
		EventIdleTimeout:  15 * time.Second,
		SuspectAfter:      protocol.SuspectAfter,
		MaxAttempts:       5,
		SubmitTimeout:     10 * time.Minute,
		QueueHedge:        true,
		BeaconShards:      1,
		LoadInfo:          LoadGossip,
		Probe:             scheduler.DefaultProbeConfig(),
		Scheduler:         scheduler.DefaultConfig(),
		Version:           "dev",
	}
}

// DefaultDataDir is $GPUNET_HOME, else ~/.gpunet.
func DefaultDataDir() string {
	if d := os.Getenv("GPUNET_HOME"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".gpunet"
	}
	return filepath.Join(home, ".gpunet")
}

func (c *Config) validate() error {
	var errs []error
	if c.Slots < 1 {
		errs = append(errs, fmt.Errorf("slots %d: want at least 1", c.Slots))
	}
	if c.ConnsHigh < 0 || c.ConnsLow < 0 || (c.ConnsHigh > 0 && c.ConnsLow > c.ConnsHigh) {
		errs = append(errs, fmt.Errorf("connection watermarks %d, %d: want 0 ≤ low ≤ high (high 0: no limit)", c.ConnsLow, c.ConnsHigh))
	}
	if c.QueueLen < 0 {
		errs = append(errs, fmt.Errorf("queue length %d: want 0 or more", c.QueueLen))
	}
	if c.StoreBudget <= 0 {
		errs = append(errs, errors.New("store budget must be positive"))
	}
	if c.RateLimit < 0 || (c.RateLimit > 0 && c.RateBurst < 1) {
		errs = append(errs, errors.New("rate limit must be 0 (off) or positive with a burst of at least 1"))
	}
	if c.MaxTempC < 0 || c.MaxTempC > 120 {
		errs = append(errs, fmt.Errorf("max temperature %.0f °C: want 0 (device default) or up to 120", c.MaxTempC))
	}
	if !c.LendHours.valid() {
		errs = append(errs, fmt.Errorf("lending hours %d-%d minutes after midnight: want 0 to 1439 each (ParseLendHours)", c.LendHours.Start, c.LendHours.End))
	}
	if c.SuspectAfter == 0 {
		c.SuspectAfter = protocol.SuspectAfter
	}
	if c.SubmitTimeout == 0 {
		c.SubmitTimeout = 10 * time.Minute
	}
	if c.FindTimeout <= 0 || c.TaskTimeout <= 0 || c.EventIdleTimeout <= 0 || c.AdvertiseInterval <= 0 || c.BeaconInterval <= 0 || c.SubmitTimeout < 0 || c.SuspectAfter < 0 {
		errs = append(errs, errors.New("timeouts and intervals must be positive"))
	}
	if c.MinPeers < 0 || c.RedialMin <= 0 || c.RedialMax < c.RedialMin {
		errs = append(errs, fmt.Errorf("min peers %d, redial backoff %v to %v: want 0 or more peers and 0 < min <= max", c.MinPeers, c.RedialMin, c.RedialMax))
	}
	if c.MaxAttempts < 1 {
		errs = append(errs, errors.New("max attempts must be at least 1"))
	}
	if c.BeaconShards < 1 || c.BeaconShards > protocol.MaxBeaconShards || c.ViewShards < 0 || c.ViewShards > c.BeaconShards {
		errs = append(errs, fmt.Errorf("beacon shards %d, view shards %d: want 1 to %d shards and 0 (all) to that many in the view",
			c.BeaconShards, c.ViewShards, protocol.MaxBeaconShards))
	}
	if err := c.Scheduler.Validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.LoadInfo {
	case "":
		c.LoadInfo = LoadGossip
	case LoadGossip:
	case LoadProbe:
		if err := c.Probe.Validate(); err != nil {
			errs = append(errs, err)
		}
	default:
		errs = append(errs, fmt.Errorf("load information %q: want %s or %s", c.LoadInfo, LoadGossip, LoadProbe))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return errors.Join(errs...)
}
