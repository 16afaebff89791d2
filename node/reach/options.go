package reach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	circuit "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// Reachability is whether other peers can dial this node: the answer of
// AutoNAT, or what the operator said (Settings.Force).
type Reachability string

const (
	Unknown Reachability = "unknown" // not found out yet, or AutoNAT cannot judge (no public address)
	Public  Reachability = "public"  // dialable from the Internet: it can serve as a relay
	Private Reachability = "private" // behind NAT or a firewall: reached through relays
)

// ParseReachability reads --reachability: auto (detect; Unknown here,
// meaning "not forced"), public or private.
func ParseReachability(s string) (Reachability, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return Unknown, nil
	case "public":
		return Public, nil
	case "private":
		return Private, nil
	}
	return "", fmt.Errorf("reachability %q: want auto, public or private", s)
}

// Settings say how a node's host is built for its network.
type Settings struct {
	// PSK, when set, makes the swarm private: only peers with the same
	// key complete a connection. TCP only (Listen drops QUIC).
	PSK pnet.PSK
	// Force overrides detection when not Unknown: an operator who knows
	// the machine is reachable (a relay on a server) says public and its
	// relay starts at once, without waiting for AutoNAT.
	Force Reachability
	// Serve is a long-lived node (daemon or host): it answers AutoNAT
	// probes, runs AutoNAT v2, takes relay reservations when it is found
	// private, and runs a relay (RelayService) when found public. A
	// one-shot client does none of this: it dials out and leaves.
	Serve bool
	// RelayService lets a Serve node that is public relay for others.
	RelayService bool
	// Relays are relay candidates known up front (the bootstrap peers);
	// connected peers that speak the relay protocol are candidates too.
	Relays []peer.AddrInfo
	Log    *slog.Logger
}

// Relay limits of a gpunet relay. go-libp2p's defaults (2 min, 128 KiB per
// relayed connection) cut a 512×512 PNG short; a 2048×2048 result is up
// to protocol.MaxBlockBytes (16 MiB). The limits are per relayed
// connection and direction, and a connection that reaches one is reset
// (the next task opens a new circuit), so 64 MiB carries a few large
// results and 10 minutes outlasts a queued task. The cost to the relay's
// operator is bounded by MaxReservations × MaxCircuits circuits of at
// most RelayLimitData each way; docs/nat.md works it out.
const (
	RelayLimitDuration = 10 * time.Minute
	RelayLimitData     = 64 << 20
	// RelayBufferSize is the relay's copy buffer per circuit direction.
	// 2 KiB (go-libp2p's default) costs a system call per 2 KiB; 16 KiB
	// lets a relay move megabytes, for 32 KiB of memory per circuit
	// (512 circuits within the resource manager's 16 MiB relay budget).
	RelayBufferSize = 16 << 10
)

// RelayResources are the limits a gpunet relay grants, go-libp2p's
// defaults but for the relayed connection limit and the buffer.
func RelayResources() relayv2.Resources {
	rc := relayv2.DefaultResources()
	rc.Limit = &relayv2.RelayLimit{Duration: RelayLimitDuration, Data: RelayLimitData}
	rc.BufferSize = RelayBufferSize
	return rc
}

// Plan is how to build one host: libp2p options, and what to do once the
// host exists (Attach).
type Plan struct {
	// Options go to libp2p.New after the node's own (identity, resource
	// manager, security).
	Options []libp2p.Option
	// QUIC says whether the node may add the QUIC transport (not with a
	// swarm key).
	QUIC bool
	// Listen is the listen addresses the node may use.
	Listen []ma.Multiaddr

	src *peerSource
	s   Settings
}

// ErrQUICPrivate is returned by NewPlan when a swarm key leaves no address
// to listen on: every one was QUIC.
var ErrQUICPrivate = errors.New("QUIC cannot carry a swarm key")

// NewPlan works out how to build a host with these settings that listens
// on listen.
func NewPlan(s Settings, listen []ma.Multiaddr) (*Plan, error) {
	if s.Log == nil {
		s.Log = slog.Default()
	}
	p := &Plan{QUIC: len(s.PSK) == 0, Listen: listen, s: s}
	// The circuit relay transport, which the node's libp2p.NoListenAddrs
	// turns off: without it a client cannot dial a host behind NAT through
	// the host's relay address, nor a host accept the relayed connection.
	p.Options = append(p.Options, libp2p.EnableRelay())
	if len(s.PSK) > 0 {
		// go-libp2p's QUIC (and WebTransport, WebRTC) refuse a PSK: their
		// handshake is TLS inside QUIC, with no place for pnet's stream
		// cipher. The node keeps its TCP addresses and says so.
		var kept, dropped []ma.Multiaddr
		for _, a := range listen {
			if isUDP(a) {
				dropped = append(dropped, a)
			} else {
				kept = append(kept, a)
			}
		}
		if len(dropped) > 0 && len(kept) == 0 {
			return nil, fmt.Errorf("--listen %s: %w (go-libp2p's private networks are TCP only): listen on TCP, e.g. /ip4/0.0.0.0/tcp/4747", joinAddrs(dropped), ErrQUICPrivate)
		}
		if len(dropped) > 0 {
			s.Log.Info("private swarm: not listening on QUIC, which cannot carry a swarm key; TCP only", "dropped", joinAddrs(dropped))
		}
		p.Listen = kept
		p.Options = append(p.Options, libp2p.PrivateNetwork(s.PSK))
	}
	switch s.Force {
	case Public:
		p.Options = append(p.Options, libp2p.ForceReachabilityPublic())
	case Private:
		p.Options = append(p.Options, libp2p.ForceReachabilityPrivate())
	}
	if !s.Serve {
		return p, nil
	}
	p.Options = append(p.Options,
		// Answer AutoNAT v1 probes (go-libp2p's rate limits: 30 a minute,
		// 3 per peer): in a young swarm the first daemon learns it is
		// public only from a peer that dials it back.
		libp2p.EnableNATService(),
		// AutoNAT v2 tests each address on its own, so status can list
		// the confirmed ones; it dials from a second, throwaway host.
		libp2p.EnableAutoNATv2(),
	)
	// The relay service is not go-libp2p's EnableRelayService, which
	// follows AutoNAT v1 alone: v1 probes only through peers that have a
	// public address, and in a young swarm every other node may be behind
	// NAT. The Tracker starts the relay when v1 or v2 (or Force) says
	// public, and stops it when that ends.
	p.src = &peerSource{static: s.Relays}
	p.Options = append(p.Options, libp2p.EnableAutoRelayWithPeerSource(p.src.peers,
		// A young swarm has one or two relays, not go-libp2p's 4 candidates
		// (below which it waits 3 minutes before reserving anything).
		autorelay.WithMinCandidates(1),
		autorelay.WithBootDelay(5*time.Second),
		// Ask again soon: a daemon's relay starts only once AutoNAT has
		// found it public, which may be after this node first asked.
		autorelay.WithMinInterval(10*time.Second),
		autorelay.WithBackoff(time.Minute),
	))
	return p, nil
}

// Attach gives the plan the host built from it, for the relay candidates
// (connected peers that speak the relay protocol).
func (p *Plan) Attach(h host.Host) {
	if p.src != nil {
		p.src.h.Store(&h)
	}
}

// peerSource offers AutoRelay its candidates: the static relays first,
// then connected peers whose identify says they run a relay (hop).
type peerSource struct {
	static []peer.AddrInfo
	h      atomic.Pointer[host.Host] // set by Attach, after libp2p.New
}

func (s *peerSource) peers(ctx context.Context, num int) <-chan peer.AddrInfo {
	out := make(chan peer.AddrInfo, num)
	defer close(out)
	seen := map[peer.ID]bool{}
	add := func(ai peer.AddrInfo) bool {
		if len(out) == num {
			return false
		}
		if !seen[ai.ID] {
			seen[ai.ID] = true
			out <- ai
		}
		return true
	}
	hp := s.h.Load()
	for _, ai := range s.static {
		if hp != nil && ai.ID == (*hp).ID() {
			continue
		}
		if !add(ai) {
			return out
		}
	}
	if hp == nil {
		return out
	}
	h := *hp
	for _, p := range h.Network().Peers() {
		if ok, _ := h.Peerstore().SupportsProtocols(p, circuit.ProtoIDv2Hop); len(ok) == 0 {
			continue
		}
		if !add(peer.AddrInfo{ID: p, Addrs: h.Peerstore().Addrs(p)}) {
			break
		}
	}
	return out
}

// isUDP says whether a is a UDP address (QUIC, WebTransport, WebRTC):
// none of these carries a swarm key.
func isUDP(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_UDP)
	return err == nil
}

// IsRelayed says whether a is a relay (/p2p-circuit) address.
func IsRelayed(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

func joinAddrs(as []ma.Multiaddr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// AllowRelayed is ctx with go-libp2p's permission to open a stream over a
// limited (relayed) connection. gpunet's task and fetch streams use it:
// when a host is reachable only through a relay, the relay is the way,
// and gpunet relays' limits (RelayResources) let a result through.
func AllowRelayed(ctx context.Context) context.Context {
	return network.WithAllowLimitedConn(ctx, "gpunet task through a relay")
}
