package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// gossip owns the beacon topics: it publishes this host's beacons and folds
// everyone's into a view of the swarm. Task hand-off never rides on gossip.
//
// With Config.BeaconShards k > 1 the beacons are split over k topics, a
// host publishing on the shard of its peer ID (protocol.BeaconShard); a
// node subscribes to Config.ViewShards of them, starting at its own, and
// its view holds the hosts of those shards only. Others are found on the
// DHT when the view has no candidate.
type gossip struct {
	log    *slog.Logger
	ps     *pubsub.PubSub
	topics []*pubsub.Topic // the subscribed shards'; topics[0] is this node's own
	subs   []*pubsub.Subscription
	cfg    *Config

	mu   sync.Mutex
	view map[peer.ID]viewEntry // guarded by mu
	// pv is the same view as placement reads it, kept up to date here,
	// once per beacon (view.go). Its own lock, taken after mu.
	pv placeView
}

type viewEntry struct {
	b        protocol.Beacon
	received time.Time
	ps       scheduler.PeerState // peerState of b, made once per beacon
}

// newGossip joins the beacon topic with strict signing, a validator and
// peer scoring.
func newGossip(ctx context.Context, h host.Host, cfg *Config, log *slog.Logger) (*gossip, error) {
	k := max(cfg.BeaconShards, 1)
	shards := heardShards(cfg, h.ID())
	if cfg.LoadInfo == LoadProbe {
		shards = nil // no beacon topic: load comes from probes (probe.go)
	}
	names := make([]string, len(shards))
	for i, shard := range shards {
		names[i] = protocol.BeaconShardTopic(k, shard)
	}
	scored := names
	if cfg.Verify != nil {
		// A proof the receiver's re-run contradicts is rejected and costs
		// its sender score like a forged beacon.
		scored = append(slices.Clone(names), protocol.FraudTopic)
	}
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		// Every message on the network is a small beacon; RPCs batch a few
		// of them plus control messages.
		pubsub.WithMaxMessageSize(64<<10),
		pubsub.WithPeerOutboundQueueSize(256),
		pubsub.WithValidateQueueSize(256),
		pubsub.WithPeerScore(beaconScoreParams(scored), &pubsub.PeerScoreThresholds{
			GossipThreshold: -100, PublishThreshold: -500, GraylistThreshold: -1000,
			AcceptPXThreshold: 10, OpportunisticGraftThreshold: 5,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("starting gossipsub: %w", err)
	}
	g := &gossip{log: log, ps: ps, cfg: cfg, view: map[peer.ID]viewEntry{}}
	g.pv.self = h.ID()
	for i, name := range names {
		shard := shards[i]
		validate := func(ctx context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
			if protocol.BeaconShard(msg.GetFrom().String(), k) != shard {
				return pubsub.ValidationReject // published on a shard not its own
			}
			return g.validate(ctx, from, msg)
		}
		if err := ps.RegisterTopicValidator(name, validate); err != nil {
			return nil, err
		}
		topic, err := ps.Join(name)
		if err != nil {
			return nil, fmt.Errorf("joining %s: %w", name, err)
		}
		sub, err := topic.Subscribe(pubsub.WithBufferSize(256))
		if err != nil {
			return nil, err
		}
		g.topics, g.subs = append(g.topics, topic), append(g.subs, sub)
	}
	return g, nil
}

// heardShards are the beacon shards the node self subscribes to: its own,
// then the following ones, ViewShards in all (every shard when 0).
func heardShards(cfg *Config, self peer.ID) []int {
	k := max(cfg.BeaconShards, 1)
	v := cfg.ViewShards
	if v <= 0 || v > k {
		v = k
	}
	own := protocol.BeaconShard(self.String(), k)
	out := make([]int, v)
	for i := range out {
		out[i] = (own + i) % k
	}
	return out
}

// beaconScoreParams: peers that send invalid beacons lose score fast and
// are graylisted; useful first deliveries earn a little. Mesh-delivery
// penalties stay off: beacons are sparse, so a quiet honest peer would look
// like a lazy one. IP colocation is off too: volunteers behind one carrier
// NAT share an address, and so does a loopback test swarm.
func beaconScoreParams(topics []string) *pubsub.PeerScoreParams {
	params := &pubsub.PeerScoreParams{
		Topics:                    map[string]*pubsub.TopicScoreParams{},
		AppSpecificScore:          func(peer.ID) float64 { return 0 },
		IPColocationFactorWeight:  0,
		BehaviourPenaltyWeight:    -10,
		BehaviourPenaltyThreshold: 6,
		BehaviourPenaltyDecay:     0.99,
		DecayInterval:             time.Second,
		DecayToZero:               0.01,
		RetainScore:               10 * time.Minute,
	}
	for _, t := range topics {
		params.Topics[t] = beaconTopicScore()
	}
	return params
}

func beaconTopicScore() *pubsub.TopicScoreParams {
	return &pubsub.TopicScoreParams{
		TopicWeight:                     1,
		TimeInMeshWeight:                0.01,
		TimeInMeshQuantum:               time.Second,
		TimeInMeshCap:                   100,
		FirstMessageDeliveriesWeight:    1,
		FirstMessageDeliveriesDecay:     0.9,
		FirstMessageDeliveriesCap:       50,
		MeshMessageDeliveriesDecay:      0.9,
		MeshFailurePenaltyDecay:         0.9,
		InvalidMessageDeliveriesWeight:  -100,
		InvalidMessageDeliveriesDecay:   0.99,
		MeshMessageDeliveriesWindow:     10 * time.Millisecond,
		MeshMessageDeliveriesActivation: time.Minute,
		MeshMessageDeliveriesThreshold:  1,
		MeshMessageDeliveriesCap:        10,
	}
}

// validate runs for every beacon before it is delivered or forwarded.
// Malformed, oversized, forged, replayed or flooding beacons are rejected
// (which costs the sender score); stale ones are ignored.
func (g *gossip) validate(ctx context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	r := g.judge(msg)
	if g.cfg != nil && len(g.cfg.Observers) > 0 {
		outcome := BeaconAccepted
		switch r {
		case pubsub.ValidationReject:
			outcome = BeaconRejected
		case pubsub.ValidationIgnore:
			outcome = BeaconIgnored
		}
		for _, o := range g.cfg.Observers {
			o.Beacon(outcome)
		}
	}
	return r
}

// judge is the validator's verdict on one beacon, folding accepted ones
// into the view.
func (g *gossip) judge(msg *pubsub.Message) pubsub.ValidationResult {
	if len(msg.Data) > protocol.MaxBeaconBytes {
		return pubsub.ValidationReject
	}
	now := time.Now()
	b, err := protocol.DecodeBeacon(msg.Data, now)
	if err != nil {
		g.log.Debug("dropping beacon", "from", msg.GetFrom(), "err", err)
		if errors.Is(err, protocol.ErrStaleBeacon) {
			return pubsub.ValidationIgnore
		}
		return pubsub.ValidationReject
	}
	author := msg.GetFrom()
	if b.Peer != author.String() {
		return pubsub.ValidationReject // a beacon about someone else
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if prev, ok := g.view[author]; ok {
		if b.Seq <= prev.b.Seq {
			return pubsub.ValidationIgnore // replay, or an old copy arriving late
		}
		// Flooding is judged by the author's own signed clock: two beacons
		// it issued too close together are its fault, and the penalty
		// lands on whoever delivers the second. Two that only arrive close
		// together (bunched on the way by a busy relay or link) are not:
		// penalising the relay for that graylisted honest peers under
		// load, and with them every topic they relay. Those are dropped
		// unpenalised, which still bounds what an author with a clock set
		// ahead gets through.
		if b.Issued < prev.b.Issued+uint64(protocol.BeaconMinInterval/time.Millisecond) {
			return pubsub.ValidationReject // flooding
		}
		if now.Sub(prev.received) < protocol.BeaconMinInterval {
			return pubsub.ValidationIgnore
		}
	}
	ps := peerState(author, b)
	g.view[author] = viewEntry{b: *b, received: now, ps: ps}
	g.pv.put(author, ps, now)
	return pubsub.ValidationAccept
}

// heard folds in a beacon that came straight from its host, in a probe
// reply or an idle notice (node/sampling): the stream authenticated the
// host and nobody relayed it, so only order matters, not the flood limit.
func (g *gossip) heard(id peer.ID, b *protocol.Beacon, now time.Time) {
	if id == g.pv.self {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if prev, ok := g.view[id]; ok && b.Seq <= prev.b.Seq {
		return // an older answer overtaken by a newer one
	}
	ps := peerState(id, b)
	g.view[id] = viewEntry{b: *b, received: now, ps: ps}
	g.pv.put(id, ps, now)
}

// drain consumes delivered messages: the validator has already folded them
// into the view, so the subscriptions exist only to be in the meshes.
func (g *gossip) drain(ctx context.Context) {
	var wg sync.WaitGroup
	for _, sub := range g.subs {
		wg.Go(func() {
			for {
				if _, err := sub.Next(ctx); err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
}

// publish sends one beacon.
func (g *gossip) publish(ctx context.Context, b *protocol.Beacon) (int, error) {
	if len(g.topics) == 0 {
		return 0, errors.New("no beacon topic joined")
	}
	data, err := b.Encode()
	if err != nil {
		return 0, err
	}
	return len(data), g.topics[0].Publish(ctx, data)
}

// snapshot returns the live part of the view as the scheduler sees it,
// dropping peers silent for longer than expiry.
//
// rtt, if set, gives this node's round-trip estimate to a peer (0 when
// unknown) given the reachability its beacon states, which placement adds
// to the predicted completion.
func (g *gossip) snapshot(now time.Time, expiry time.Duration, self peer.ID, rtt func(id peer.ID, reach string) time.Duration) scheduler.View {
	g.mu.Lock()
	defer g.mu.Unlock()
	v := make(scheduler.View, 0, len(g.view))
	for id, e := range g.view {
		if now.Sub(e.received) > expiry {
			delete(g.view, id)
			continue
		}
		if id == self {
			continue
		}
		ps := e.ps
		if rtt != nil {
			ps.RTTMs = float64(rtt(id, e.b.Reach)) / float64(time.Millisecond)
		}
		v = append(v, ps)
	}
	return v
}

// digestCounts adds to byKey, for each DigestKey the live beacons give
// model, how many hosts serve it so; bare counts the hosts serving model
// by name alone, seen all those serving it. It reads the beacons in place:
// cheaper than a snapshot, since every submission by bare name asks.
func (g *gossip) digestCounts(model string, byKey map[string]int, self peer.ID, expiry time.Duration) (bare, seen int) {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, e := range g.view {
		if id == self || now.Sub(e.received) > expiry || !slices.Contains(e.b.Models, model) {
			continue
		}
		seen++
		if k, ok := e.b.Digests[model]; ok {
			byKey[k]++
		} else {
			bare++
		}
	}
	return bare, seen
}

// running returns the peers whose last beacon lists key as in flight,
// other than self and those in skip.
func (g *gossip) running(key []byte, self peer.ID, skip map[string]bool) []peer.ID {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []peer.ID
	for id, e := range g.view {
		// The in-flight lists first: naming a peer in base58 for skip on
		// every Submit, for every peer of the view, was 2-3 % of a busy
		// client's CPU.
		if id == self || !slices.ContainsFunc(e.b.Inflight, func(k []byte) bool { return bytes.Equal(k, key) }) {
			continue
		}
		if len(skip) == 0 || !skip[e.ps.ID] {
			out = append(out, id)
		}
	}
	return out
}

// forget drops a peer from the view (it refused or failed), until its next
// beacon.
func (g *gossip) forget(id peer.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e, ok := g.view[id]; ok {
		e.b.Accepting, e.ps.Accepting = false, false
		g.view[id] = e
		if id != g.pv.self {
			g.pv.refuse(e.ps.ID)
		}
	}
}

func (g *gossip) close() {
	for i := range g.subs {
		g.subs[i].Cancel()
		_ = g.topics[i].Close()
	}
}

// peerState maps a beacon to the scheduler's plain fields.
func peerState(id peer.ID, b *protocol.Beacon) scheduler.PeerState {
	s := scheduler.PeerState{
		ID: id.String(), Models: b.Models, FreeMemMB: b.FreeMemMB, Accepting: b.Accepting,
		Slots: int(b.Slots), Busy: int(b.Busy), QueueLen: int(b.Queue), QueueMax: int(b.QueueMax), GPU: b.GPU, Reach: b.Reach,
		TempC: float64(b.TempDC) / 10, SlowdownC: float64(b.SlowdownDC) / 10, LimitC: float64(b.LimitDC) / 10,
		Throttled: b.Throttled, Speed: float64(b.SpeedPm) / 1000, HeatPerTaskC: float64(b.HeatDC) / 10,
		Updated: time.UnixMilli(int64(b.Issued)),
	}
	if len(b.ServiceMs) > 0 {
		s.ServiceMs = make(map[string]float64, len(b.ServiceMs)+len(b.Digests))
		for m, ms := range b.ServiceMs {
			s.ServiceMs[m] = float64(ms)
		}
	}
	if len(b.Digests) > 0 {
		// A model named by content is listed a second time as
		// name@DigestKey, which placement matches a task carrying that
		// digest against (viewModel), with the name's service time.
		s.Models = slices.Clone(b.Models)
		for _, m := range b.Models {
			if k, ok := b.Digests[m]; ok {
				s.Models = append(s.Models, m+"@"+k)
				if ms, ok := s.ServiceMs[m]; ok {
					s.ServiceMs[m+"@"+k] = ms
				}
			}
		}
	}
	return s
}

// jitter returns d ± 20%, so that hosts started together do not publish in
// lockstep.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
