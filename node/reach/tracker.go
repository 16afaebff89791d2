package reach

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// Info is what a node knows of its reachability; node.Status carries it.
type Info struct {
	// Reachability is public, private or unknown.
	Reachability Reachability `json:"reachability"`
	// Source is who said so: "autonat" (v1, the whole node), "autonat-v2"
	// (addresses confirmed one by one), "configured" (--reachability), or
	// empty while unknown.
	Source string `json:"source,omitempty"`
	// Confirmed are addresses AutoNAT v2 confirmed dialable from outside.
	Confirmed []string `json:"confirmed_addrs,omitempty"`
	// Relay are the node's /p2p-circuit addresses: those of the relays it
	// holds a reservation with.
	Relay []string `json:"relay_addrs,omitempty"`
	// PrivateSwarm: the node uses a swarm key.
	PrivateSwarm bool `json:"private_swarm,omitempty"`
	// RelayService: the node relays for peers behind NAT now.
	RelayService bool `json:"relay_service,omitempty"`
	// Since is when Reachability last changed (zero: never).
	Since time.Time `json:"since,omitzero"`
}

// Tracker follows a host's reachability events. Its methods are safe for
// concurrent use; Close stops its goroutine.
type Tracker struct {
	h       host.Host
	log     *slog.Logger
	forced  Reachability
	private bool

	relayOn bool // Settings.RelayService

	mu        sync.Mutex
	v1        Reachability // AutoNAT v1's last word
	confirmed []ma.Multiaddr
	since     time.Time
	relay     *relayv2.Relay // running while public, if relayOn; only loop and Close change it

	sub  event.Subscription
	done chan struct{}
}

// NewTracker starts following h's reachability. s is the Settings h was
// built with.
func NewTracker(h host.Host, s Settings) (*Tracker, error) {
	t := &Tracker{h: h, log: s.Log, forced: s.Force, private: len(s.PSK) > 0, v1: Unknown, done: make(chan struct{}),
		relayOn: s.RelayService && s.Serve}
	if t.log == nil {
		t.log = slog.Default()
	}
	sub, err := h.EventBus().Subscribe([]any{
		new(event.EvtLocalReachabilityChanged),
		new(event.EvtHostReachableAddrsChanged),
	})
	if err != nil {
		return nil, err
	}
	t.sub = sub
	t.follow() // a forced reachability is known before any event
	go t.loop()
	return t, nil
}

func (t *Tracker) loop() {
	defer close(t.done)
	for ev := range t.sub.Out() {
		before := t.Info().Reachability
		t.mu.Lock()
		switch e := ev.(type) {
		case event.EvtLocalReachabilityChanged:
			t.v1 = fromNetwork(e.Reachability)
		case event.EvtHostReachableAddrsChanged:
			t.confirmed = slices.Clone(e.Reachable)
		}
		t.mu.Unlock()
		if after := t.Info(); after.Reachability != before {
			t.mu.Lock()
			t.since = time.Now()
			t.mu.Unlock()
			t.log.Info("reachability", "now", after.Reachability, "by", after.Source, "confirmed", after.Confirmed)
		}
		t.follow()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.relay != nil {
		t.relay.Close()
		t.relay = nil
	}
}

// follow starts the relay service when the node is public and stops it
// when it no longer is. Called from NewTracker, then only from loop.
func (t *Tracker) follow() {
	if !t.relayOn {
		return
	}
	public := t.Info().Reachability == Public
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case public && t.relay == nil:
		r, err := relayv2.New(t.h, relayv2.WithResources(RelayResources()))
		if err != nil {
			t.log.Warn("not relaying for peers behind NAT", "err", err)
			return
		}
		t.relay = r
		t.log.Info("relaying for peers behind NAT", "limit_per_conn", fmt.Sprintf("%d MiB, %v", RelayLimitData>>20, RelayLimitDuration))
	case !public && t.relay != nil:
		t.relay.Close()
		t.relay = nil
		t.log.Info("relay service stopped: this node is not publicly reachable now")
	}
}

func fromNetwork(r network.Reachability) Reachability {
	switch r {
	case network.ReachabilityPublic:
		return Public
	case network.ReachabilityPrivate:
		return Private
	}
	return Unknown
}

// Info reports what the node knows now. Relay addresses are read from the
// host each time, so they are as fresh as its address book.
func (t *Tracker) Info() Info {
	t.mu.Lock()
	in := Info{Reachability: Unknown, PrivateSwarm: t.private, Since: t.since, RelayService: t.relay != nil}
	for _, a := range t.confirmed {
		in.Confirmed = append(in.Confirmed, a.String())
	}
	switch {
	case t.forced != Unknown:
		in.Reachability, in.Source = t.forced, "configured"
	case len(t.confirmed) > 0:
		// One confirmed address is enough for peers to dial the node.
		in.Reachability, in.Source = Public, "autonat-v2"
	case t.v1 != Unknown:
		in.Reachability, in.Source = t.v1, "autonat"
	}
	t.mu.Unlock()
	for _, a := range t.h.Addrs() {
		if IsRelayed(a) {
			in.Relay = append(in.Relay, a.String())
		}
	}
	return in
}

// Close stops the tracker.
func (t *Tracker) Close() error {
	err := t.sub.Close()
	<-t.done
	if err != nil {
		return errors.Join(errors.New("closing reachability tracker"), err)
	}
	return nil
}
