package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p-kad-dht/provider"
	"github.com/libp2p/go-libp2p-kad-dht/provider/keystore"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
)

// Result provides go to the DHT through kad-dht's SweepingProvider, wired as
// Kubo wires it (issue 14), rather than one DHT walk per result:
//
//   - New keys are provided as they come, but grouped by keyspace region
//     while the provider's workers are busy: a region's keys cost one walk
//     of the region and then their ADD_PROVIDER messages, so a surge of
//     results on a host costs a few walks, not one per result. One or two
//     keys in a region are provided one by one, which is a plain provide.
//   - Every key the node provides is kept in a keystore (node/providers,
//     on disk) and reprovided region by region, the regions spread over the
//     sweep interval (Config.SweepInterval, ReprovideInterval by default),
//     in place of a walk per key per round.
//   - The keystore is what the node serves (announce.go's rule): at start
//     and every sweep interval it is synced with the store, so a result
//     the store no longer holds stops being reprovided, and one it serves
//     but the keystore lacks (a lost keystore) is provided.
//   - A provide counts as done (Observer.Provided) when its first provider
//     record reaches a peer: from then on a lookup can find it.
//
// The provider starts once it has work (a key to provide, or a stored result
// the node serves) and the DHT has a peer: its first connectivity check is a
// lookup, which fails on an empty routing table and is then retried with a
// backoff of up to a minute; and a one-shot client, which provides nothing,
// does not pay the provider's start (five lookups to estimate the network's
// size).

const (
	// sweepPollMin and sweepPollMax bound the backoff with which the sweep,
	// once it has work, looks for a first DHT peer (the routing table has
	// no event of its own to wait on), and then asks the new provider
	// whether it has estimated the network's size: keys it is given before
	// that go only to its keystore, and would wait for their region's turn
	// if that region was reprovided shortly before a restart. On loopback
	// both take milliseconds; a node alone backs off to a look a second.
	sweepPollMin = 10 * time.Millisecond
	sweepPollMax = time.Second
)

// sweep owns the node's SweepingProvider and its keystore: it starts the
// provider, hands it what the provide queue holds, syncs the keystore with
// the store, and closes both. Its fields are only used from run.
type sweep struct {
	n    *Node
	q    *provideQueue
	ks   keystore.Keystore
	prov *provider.SweepingProvider // nil until started
}

// startProvides starts the provide queue and the sweep; the sweep stops
// with the node.
func (n *Node) startProvides() error {
	n.provides = newProvideQueue(func(k int, err error) {
		for range k {
			n.observe(func(o Observer) { o.Provided(err) })
		}
	})
	ks, err := keystore.NewKeystore(n.prov.SweepKeys())
	if err != nil {
		return fmt.Errorf("opening the provide keystore: %w", err)
	}
	s := &sweep{n: n, q: n.provides, ks: ks}
	n.wg.Add(1)
	if n.cfg.ProvideOneByOne {
		go s.oneByOne()
	} else {
		go s.run()
	}
	return nil
}

// oneByOne is run for Config.ProvideOneByOne: each key its own provide
// (a walk to the key's closest peers, then ADD_PROVIDER to each), a few at
// a time; nothing is reprovided.
func (s *sweep) oneByOne() {
	n := s.n
	defer n.wg.Done()
	defer s.close()
	sem := make(chan struct{}, oneByOneWorkers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-s.q.wake:
		}
		for _, h := range s.q.take() {
			select {
			case sem <- struct{}{}:
			case <-n.ctx.Done():
				return
			}
			wg.Go(func() {
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
				defer cancel()
				if err := n.dht.Provide(ctx, cid.NewCidV1(cid.Raw, h), true); err == nil {
					s.q.sent(h)
				} else {
					n.log.Debug("providing a result", "key", h, "err", err)
				}
			})
		}
	}
}

// oneByOneWorkers bounds oneByOne's provides in flight, as the provide
// queue's workers did before the sweep.
const oneByOneWorkers = 4

// run is the sweep's loop.
func (s *sweep) run() {
	n := s.n
	defer n.wg.Done()
	defer s.close()
	if !s.start() {
		return
	}
	s.hand() // start took the wake-up of what waits
	if err := s.sync(n.ctx); err != nil {
		n.log.Debug("syncing the provide keystore", "err", err)
	}
	tick := time.NewTicker(s.interval())
	defer tick.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-s.q.wake:
			s.hand()
		case <-tick.C:
			if err := s.sync(n.ctx); err != nil {
				n.log.Debug("syncing the provide keystore", "err", err)
			}
		}
	}
}

// interval is the sweep's period: Config.SweepInterval, else
// ReprovideInterval.
func (s *sweep) interval() time.Duration {
	if d := s.n.cfg.SweepInterval; d > 0 {
		return d
	}
	return ReprovideInterval
}

// start waits for work and a DHT peer, then starts the provider and waits
// until it can take keys. It returns false when the node closes first.
func (s *sweep) start() bool {
	n := s.n
	work := len(s.served()) > 0
	wait := sweepPollMin
	for !work || n.dht.RoutingTable().Size() == 0 {
		var poll <-chan time.Time
		if work {
			poll = time.After(wait)
			wait = min(2*wait, sweepPollMax)
		}
		select {
		case <-n.ctx.Done():
			return false
		case <-s.q.wake:
			work = true
		case <-poll:
		}
	}
	prov, err := provider.New(
		provider.WithHost(n.host),
		provider.WithRouter(n.dht),
		provider.WithMessageSender(sentTap{n.dht.MessageSender(), s.q.sent}),
		provider.WithSelfAddrs(n.dht.FilteredAddrs),
		provider.WithAddLocalRecord(func(ctx context.Context, h mh.Multihash) error {
			// Records are keyed by multihash; the codec does not matter.
			return n.dht.Provide(ctx, cid.NewCidV1(cid.Raw, h), false)
		}),
		provider.WithReplicationFactor(n.dht.BucketSize()),
		provider.WithReprovideInterval(s.interval()),
		provider.WithKeystore(s.ks),
		provider.WithDatastore(n.prov.SweepState()),
	)
	if err != nil {
		// Only a bad option fails here: a bug, not a condition to run in.
		n.log.Error("starting the DHT provider: results will not be provided", "err", err)
		return false
	}
	s.prov = prov
	for wait = sweepPollMin; ; wait = min(2*wait, sweepPollMax) {
		ctx, cancel := context.WithTimeout(n.ctx, time.Second)
		st, err := prov.Stats(ctx)
		cancel()
		if err == nil && st.Schedule.AvgPrefixLength >= 0 {
			return true
		}
		select {
		case <-n.ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// hand gives the provider every TaskCID waiting. force: a key handed over is
// one this node has decided to provide now (a fresh result, or one it
// started serving), even if the keystore still holds it from before.
func (s *sweep) hand() {
	keys := s.q.take()
	if len(keys) == 0 {
		return
	}
	if err := s.prov.StartProviding(true, keys...); err != nil {
		s.n.log.Debug("handing results to the DHT provider", "keys", len(keys), "err", err)
	}
}

// served lists the TaskCIDs of the stored results this node serves
// (announce.go), as multihashes.
func (s *sweep) served() []mh.Multihash {
	n := s.n
	held, err := n.store.List(n.ctx)
	if err != nil {
		return nil
	}
	var out []mh.Multihash
	for _, e := range held {
		if n.reprovides(n.ctx, e) {
			out = append(out, e.TaskCID.Hash())
		}
	}
	return out
}

// sync makes the keystore hold what this node serves: keys of results it
// no longer serves are dropped, and served ones it lacks are provided. The
// keystore is read before the store, so a key added in between (a result
// just stored) is not taken for one the store no longer holds.
func (s *sweep) sync(ctx context.Context) error {
	n := s.n
	have, err := s.ks.Get(ctx, "")
	if err != nil {
		return fmt.Errorf("listing the keystore: %w", err)
	}
	held, err := n.store.List(ctx)
	if err != nil {
		return fmt.Errorf("listing stored results: %w", err)
	}
	n.forgetEvicted(ctx, held)
	serve := make(map[string]bool, len(held))
	var add []mh.Multihash
	for _, e := range held {
		if n.reprovides(ctx, e) {
			h := e.TaskCID.Hash()
			serve[string(h)] = true
			add = append(add, h)
		}
	}
	var drop []mh.Multihash
	for _, h := range have {
		if !serve[string(h)] {
			drop = append(drop, h)
		}
	}
	var errs []error
	if len(drop) > 0 {
		errs = append(errs, s.prov.StopProviding(drop...))
	}
	if len(add) > 0 && n.reachable() {
		// Not forced: what the keystore holds is provided already, and
		// reprovided in its region's turn.
		errs = append(errs, s.prov.StartProviding(false, add...))
	}
	n.log.Debug("synced the provide keystore", "served", len(add), "dropped", len(drop))
	return errors.Join(errs...)
}

// close stops the provider (waiting for its workers), then the keystore, and
// reports the provides that had not gone out. The provider persists its
// queue in its datastore, which node/providers closes after the DHT.
func (s *sweep) close() {
	var errs []error
	if s.prov != nil {
		errs = append(errs, s.prov.Close())
	}
	errs = append(errs, s.ks.Close())
	if err := errors.Join(errs...); err != nil {
		s.n.log.Warn("closing the DHT provider", "err", err)
	}
	s.q.close()
}

// sentTap is the DHT's message sender as the provider sees it: it tells
// sent of every provider record that reached a peer.
type sentTap struct {
	pb.MessageSender
	sent func(mh.Multihash)
}

func (t sentTap) SendMessage(ctx context.Context, p peer.ID, m *pb.Message) error {
	err := t.MessageSender.SendMessage(ctx, p, m)
	if err == nil && m.GetType() == pb.Message_ADD_PROVIDER {
		t.sent(m.GetKey())
	}
	return err
}
