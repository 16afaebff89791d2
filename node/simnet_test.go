package node_test

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/marcopolo/simnet"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/quic-go/quic-go"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/reach"
)

// TestRelayThenDirectOnSimnet runs the journey of docs/nat.md on a
// simulated network (github.com/marcopolo/simnet, QUIC only, no real
// socket): a public relay daemon, a host and a client each behind a
// firewall that drops every packet it did not ask for, like a home
// router's NAT.
//
//   - The host reserves a slot on the relay and says so in status (a
//     /p2p-circuit address). Fails with the relay service or AutoRelay off.
//   - The client's first connection to the host is the relayed, limited
//     one, and a task runs over it and verifies.
//   - DCUtR then punches through both firewalls: the host's direct dial
//     fails (the client's firewall drops it), the hole punch succeeds,
//     and a second task runs over the direct connection with the relay gone.
//
// Two gates keep the order fixed without timing: the client may not dial
// the host directly, and the host may not start its hole punch, until the
// relayed task is done. The first matters because a direct dial from the
// client, even a failed one, opens the client's firewall to the host, and
// the host's direct dial would then pass without any hole punch.
func TestRelayThenDirectOnSimnet(t *testing.T) {
	router := &simnet.SimpleFirewallRouter{}
	direct := make(chan struct{}) // closed: direct dials and the hole punch may go
	var once sync.Once
	openDirect := func() { once.Do(func() { close(direct) }) }
	defer openDirect() // before the nodes close: a held hole punch would stall the host's Close

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	start := func(name, ip string, public bool, tune func(*node.Config)) *node.Node {
		t.Helper()
		cfg := nodetest.Config()
		cfg.ListenAddrs = []string{"/ip4/" + ip + "/udp/8000/quic-v1"}
		cfg.Logger = testLogger(t).With("node", name)
		cfg.HostOptions = []libp2p.Option{simQUIC(t, router, public), noAutoNATDialers}
		tune(&cfg)
		n, err := node.New(ctx, cfg)
		if err != nil {
			t.Fatalf("starting the %s: %v", name, err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	relay := start("relay", "1.2.0.1", true, func(c *node.Config) {
		c.Reachability = "public" // the relay starts at once (AutoNAT is off here)
	})

	trace := &punchTrace{events: make(chan *holepunch.Event, 64)}
	host := start("host", "2.2.0.1", false, func(c *node.Config) {
		c.Reachability = "private"
		c.Kernel = kernel.Sketch{}
		c.Bootstrap = relay.Addrs()
		c.HostOptions = append(c.HostOptions, libp2p.EnableHolePunching(
			holepunch.WithTracer(trace),
			holepunch.WithAddrFilter(punchGate{direct}),
			// The host's first step, a direct dial, is dropped by the
			// client's firewall and waits out this timeout; on simnet a
			// working dial takes milliseconds.
			holepunch.DirectDialTimeout(2*time.Second),
		))
	})

	// The host's relay address, as its status reports it.
	var circuit []ma.Multiaddr
	waitFor(ctx, t, "the host behind the firewall to have a relay address", func() bool {
		for _, s := range host.Status(ctx).Reach.Relay {
			circuit = append(circuit, ma.StringCast(s))
		}
		return len(circuit) > 0
	})
	t.Logf("host's relay addresses: %v", circuit)
	// go-libp2p's hole punching starts once the host listens on a public
	// address, polled with a backoff; a relayed connection that arrives
	// before then is never punched. A long-running host is past it.
	waitFor(ctx, t, "the host's hole punching service", func() bool {
		return slices.Contains(host.Host().Mux().Protocols(), holepunch.Protocol)
	})

	gater := &noDirectDials{to: host.ID(), open: direct}
	client := start("client", "2.2.0.2", false, func(c *node.Config) {
		c.Reachability = "private"
		c.DHTServer = false
		c.Bootstrap = relay.Addrs()
		c.HostOptions = append(c.HostOptions, libp2p.ConnectionGater(gater))
	})
	client.Host().Peerstore().AddAddrs(host.ID(), circuit, peerstore.TempAddrTTL)

	res, err := client.SubmitTo(ctx, host.ID(), smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatalf("task through the relay: %v", err)
	}
	if res.Host != host.ID() || host.KernelRuns() != 1 {
		t.Fatalf("served by %s (%d kernel runs), want %s", res.Host, host.KernelRuns(), host.ID())
	}
	if c := gater.first.Load(); c == nil {
		t.Fatal("task served without a connection to the host")
	} else if !(*c).Stat().Limited || !reach.IsRelayed((*c).RemoteMultiaddr()) {
		t.Fatalf("first connection to the host is %s (limited %v), want a relayed, limited one", (*c).RemoteMultiaddr(), (*c).Stat().Limited)
	}
	if c := directConn(client, host.ID()); c != nil {
		t.Fatalf("direct connection %s before the hole punch was let go", c.RemoteMultiaddr())
	}

	waitFor(ctx, t, "the client's hole punching service", func() bool {
		return slices.Contains(client.Host().Mux().Protocols(), holepunch.Protocol)
	})
	openDirect()
	var dialed, punched bool
	for !punched {
		select {
		case ev := <-trace.events:
			switch e := ev.Evt.(type) {
			case *holepunch.DirectDialEvt:
				dialed = true
				t.Logf("host's direct dial to the client: success %v %s", e.Success, e.Error)
				if e.Success {
					t.Fatal("the host dialled the client directly through its firewall: the firewall does not filter, so no hole punch was tested")
				}
			case *holepunch.EndHolePunchEvt:
				if !e.Success {
					t.Logf("hole punch attempt failed: %s", e.Error)
					continue
				}
				punched = true
				t.Logf("hole punched in %v", e.EllapsedTime)
			case *holepunch.ProtocolErrorEvt:
				t.Fatalf("DCUtR: %s", e.Error)
			}
		case <-ctx.Done():
			t.Fatalf("no hole punch (direct dial tried: %v)", dialed)
		}
	}
	if !dialed {
		t.Error("the host punched without trying a direct dial first")
	}
	for _, side := range []struct {
		n    *node.Node
		peer peer.ID
	}{{client, host.ID()}, {host, client.ID()}} {
		if directConn(side.n, side.peer) == nil {
			t.Fatalf("%s has no direct connection to %s after the hole punch", side.n.ID(), side.peer)
		}
	}

	// The direct connection carries tasks on its own: with the relay gone,
	// a fresh computation still arrives and verifies.
	if err := relay.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := client.SubmitTo(ctx, host.ID(), smallTask, node.SubmitOptions{NoCache: true}); err != nil {
		t.Fatalf("task over the direct connection: %v", err)
	}
	if got := host.KernelRuns(); got != 2 {
		t.Fatalf("host ran %d tasks, want 2", got)
	}
}

// waitFor polls cond until it holds, failing the test when ctx ends
// first: a bound, not a figure the test asserts.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// directConn is n's direct (not relayed, not limited) connection to p, or
// nil.
func directConn(n *node.Node, p peer.ID) network.Conn {
	conns := n.Host().Network().ConnsToPeer(p)
	i := slices.IndexFunc(conns, func(c network.Conn) bool {
		return !c.Stat().Limited && !reach.IsRelayed(c.RemoteMultiaddr())
	})
	if i < 0 {
		return nil
	}
	return conns[i]
}

// simQUIC puts a host's QUIC sockets on router (go-libp2p's
// p2p/protocol/holepunch tests do the same): a public node takes
// unsolicited packets, any other only replies to what it sent.
//
// go-libp2p closes only the QUIC connection manager it builds itself, so
// the test closes this one once the node is closed.
func simQUIC(t *testing.T, router *simnet.SimpleFirewallRouter, public bool) libp2p.Option {
	src := &fixedSourceIP{}
	newCM := func(k quic.StatelessResetKey, tk quic.TokenGeneratorKey, opts ...quicreuse.Option) (*quicreuse.ConnManager, error) {
		cm, err := quicreuse.NewConnManager(k, tk, opts...)
		if err == nil {
			t.Cleanup(func() { cm.Close() })
		}
		return cm, err
	}
	return libp2p.QUICReuse(newCM,
		quicreuse.OverrideSourceIPSelector(func() (quicreuse.SourceIPSelector, error) { return src, nil }),
		quicreuse.OverrideListenUDP(func(_ string, a *net.UDPAddr) (net.PacketConn, error) {
			src.ip.Store(&a.IP)
			if public {
				router.SetAddrPubliclyReachable(a)
			}
			c := simnet.NewSimConn(a)
			c.SetUpPacketReceiver(router)
			router.AddNode(a, c)
			return c, nil
		}))
}

// fixedSourceIP answers that a host sends from its listen IP: there is no
// routing table on simnet to ask.
type fixedSourceIP struct{ ip atomic.Pointer[net.IP] }

func (s *fixedSourceIP) PreferredSourceIPForDestination(*net.UDPAddr) (net.IP, error) {
	return *s.ip.Load(), nil
}

// noAutoNATDialers turns off the throwaway hosts that AutoNAT's services
// dial from: they are built with go-libp2p's default QUIC sockets, not
// simnet's, so they would send real packets. Reachability is forced
// instead (--reachability).
func noAutoNATDialers(c *libp2p.Config) error {
	c.EnableAutoNATv2 = false
	c.AutoNATConfig.EnableService = false
	return nil
}

// punchTrace hands the host's hole punching events to the test.
type punchTrace struct{ events chan *holepunch.Event }

func (p *punchTrace) Trace(e *holepunch.Event) {
	select {
	case p.events <- e:
	default: // the test has what it needs; never block DCUtR
	}
}

// punchGate holds the host's hole punch (after its direct dial, before it
// sends its addresses) until open is closed.
type punchGate struct{ open <-chan struct{} }

func (g punchGate) FilterLocal(_ peer.ID, as []ma.Multiaddr) []ma.Multiaddr {
	<-g.open
	return as
}

func (punchGate) FilterRemote(_ peer.ID, as []ma.Multiaddr) []ma.Multiaddr { return as }

// noDirectDials refuses the client's direct dials to one peer until open
// is closed; its relay address is always allowed. It also keeps the
// client's first connection to that peer, made however it was (in New
// already, by the DHT, or by the first task).
type noDirectDials struct {
	to    peer.ID
	open  <-chan struct{}
	first atomic.Pointer[network.Conn]
}

func (g *noDirectDials) InterceptPeerDial(peer.ID) bool { return true }

func (g *noDirectDials) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	if p != g.to || reach.IsRelayed(a) {
		return true
	}
	select {
	case <-g.open:
		return true
	default:
		return false
	}
}

func (g *noDirectDials) InterceptAccept(network.ConnMultiaddrs) bool { return true }

func (g *noDirectDials) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}

func (g *noDirectDials) InterceptUpgraded(c network.Conn) (bool, control.DisconnectReason) {
	if c.RemotePeer() == g.to {
		g.first.CompareAndSwap(nil, &c)
	}
	return true, 0
}
