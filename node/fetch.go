package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/node/reach"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	"golang.org/x/time/rate"
)

// DefaultNetworkCacheBound bounds the DHT provider lookup a submitter makes
// before it schedules a task when no DHT peer answers it at all: how long a
// cache miss may cost at most.
//
// A miss usually ends far sooner: when the lookup converges with no
// provider, or at the grace after the first answer (DefaultNetworkCacheGrace).
// The bound is for a lookup whose every peer is slow: on real networks a
// lookup in a private DHT of a few hundred peers gets its first answers in a
// round trip or two including dials, 100–400 ms at continental latencies;
// past 500 ms the lookup is far more likely a miss stuck on unreachable
// peers, and 500 ms is at most 5% of a generation that takes 10 s on a GPU.
const DefaultNetworkCacheBound = 500 * time.Millisecond

// DefaultNetworkCacheGrace is how long a provider lookup goes on after the
// first DHT peer answered it before a miss stops waiting: the lookup is then
// cut, so a miss never waits on peers that are slow, loaded or gone.
//
// The first round asks α = 10 peers at once; a provider record lives on the
// k = 20 peers closest to its key, which that round reaches in a swarm whose
// routing tables hold them, so a lookup that will find a provider usually
// has one in the first answers, or in those of peers about as fast. 5 ms is
// several loopback or LAN round trips. On links whose round trips differ by
// more than that, a provider known only to the slower peers is missed and the
// task is computed again, which costs a GPU more than waiting would; a grace
// that follows the measured round trips would suit such swarms better
// (docs/cache.md). A grace of one round trip of the first answer was tried:
// on loopback under load the first answer is slow for want of CPU, not of
// network, and that grace doubled the wait for nothing (p99 of 16 concurrent
// misses 40–130 ms against 23–60 ms with 5 ms).
const DefaultNetworkCacheGrace = 5 * time.Millisecond

// Fetch service limits. They are not in Config because no deployment has
// needed to tune them; each says why it is what it is.
const (
	// FetchRate and FetchBurst bound the fetch requests one peer may make
	// of this node: a client fetches once per submit, so 50 a second is
	// far above any honest use, while a flood costs this node at most 50
	// store reads a second per peer. The burst lets a client that
	// re-fetches a batch of results do so without waiting.
	FetchRate  = 50
	FetchBurst = 100

	// fetchMaxServing bounds the fetches this node answers at once: each
	// holds its whole result in memory (a 512x512 PNG is ~300 KiB; the
	// protocol allows up to MaxOutputs blocks of MaxBlockBytes), and a
	// peer that needs more waits a moment on busy.
	fetchMaxServing = 16
	// fetchMaxPeersTracked bounds the per-peer rate limiters kept; past it,
	// limiters whose bucket is full (idle peers) are dropped first.
	fetchMaxPeersTracked = 4096

	// fetchMaxProviders is how many providers a lookup asks the DHT for.
	// The first good one wins, so a few spares cover stale records
	// (peers that evicted the result) and bad providers.
	fetchMaxProviders = 8
	// fetchRace is how many providers are asked at once at most, and
	// fetchHedgeDelay how long the first may take before a second is
	// asked too: longer than a fetch on a LAN or within a region (a few
	// ms), so usually one provider sends the bytes, yet a provider that
	// stalls costs at most this much.
	fetchRace       = 2
	fetchHedgeDelay = 50 * time.Millisecond
	// fetchAttemptTimeout bounds one fetch from one provider, from stream
	// open to verified result: ample for MBs on any link that could serve
	// as a cache, short next to computing the result again.
	fetchAttemptTimeout = 30 * time.Second

	// badProviderTTL is how long a provider that sent data failing
	// verification is not asked again. A correct node never sends such
	// data (its store re-hashes every read), so a bad provider is broken
	// or hostile; ten minutes spares a burst of repeats from it, and a
	// peer that fixed itself is trusted again soon enough.
	badProviderTTL = 10 * time.Minute
	// badProvidersMax bounds that memory.
	badProvidersMax = 1024

	// ReprovideInterval is how often a node provides again the TaskCID of
	// every result it stores and serves (announce.go). The DHT drops a provider record after 48 h
	// and the provider's addresses with it after 24 h (kad-dht's amino
	// defaults); every 12 h keeps both fresh with one failed round to
	// spare, and re-announces results to the peers that are now closest
	// to each key after churn.
	ReprovideInterval = 12 * time.Hour
)

// ErrNoProvider means no peer that the DHT named for a TaskCID answered
// with a valid result within the lookup bound: a cache miss.
var ErrNoProvider = errors.New("no peer holds the result")

// errBadProvider marks a provider that broke the fetch protocol (events out
// of order, too many blocks), as opposed to a refusal or a network failure.
var errBadProvider = errors.New("provider broke the fetch protocol")

// FetchStats are the fetch service's counters since the node started.
type FetchStats struct {
	Served      uint64 `json:"served"`       // fetches answered with a result
	NotFound    uint64 `json:"not_found"`    // ... with not_found
	Refused     uint64 `json:"refused"`      // bad requests, rate limited, busy
	Fetched     uint64 `json:"fetched"`      // results this node fetched and verified
	BadProvider uint64 `json:"bad_provider"` // providers caught sending bad data
	// LookupsCut counts provider lookups this node stopped early: nothing
	// found within the grace after the first peer answered (a miss that
	// did not wait for slow peers).
	LookupsCut uint64 `json:"lookups_cut"`
	// RendezvousHits counts results fetched from the host rendezvous
	// hashing on the TaskCID names, asked as the DHT lookup starts.
	RendezvousHits uint64 `json:"rendezvous_hits"`
}

// fetcher is both ends of /gpunet/fetch/1.0.0 for one node, and the loop
// that re-provides what the node stores. It is safe for concurrent use.
type fetcher struct {
	n       *Node
	log     *slog.Logger
	serving chan struct{} // one token per fetch being answered

	mu      sync.Mutex
	closed  bool
	limits  map[peer.ID]*rate.Limiter
	bad     map[peer.ID]time.Time // provider -> when it may be asked again
	handles sync.WaitGroup        // running handlers; Add under mu

	served, notFound, refused, fetched, badProvider, lookupsCut, rendezvousHits atomic.Uint64
}

// startFetch serves /gpunet/fetch/1.0.0 from the node's store and starts
// the re-provide loop. Every node runs it: a client that fetched a result
// serves it like the host that made it.
func (n *Node) startFetch() {
	f := &fetcher{
		n: n, log: n.log.With("sub", "fetch"),
		serving: make(chan struct{}, fetchMaxServing),
		limits:  map[peer.ID]*rate.Limiter{},
		bad:     map[peer.ID]time.Time{},
	}
	n.fetch = f
	n.host.SetStreamHandler(libp2pProto(protocol.FetchProtocol), f.handle)
	// Reprovides are the sweep's (sweep.go): it reprovides what this
	// node serves region by region, not one DHT walk per result.
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		<-n.ctx.Done()
		f.close()
	}()
}

// fetcher returns the node's fetch service, nil once the node has closed.
func (n *Node) fetcher() *fetcher {
	f := n.fetch
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	return f
}

// FetchStats returns the fetch service's counters.
func (n *Node) FetchStats() FetchStats {
	f := n.fetcher()
	if f == nil {
		return FetchStats{}
	}
	return FetchStats{Served: f.served.Load(), NotFound: f.notFound.Load(), Refused: f.refused.Load(),
		Fetched: f.fetched.Load(), BadProvider: f.badProvider.Load(), LookupsCut: f.lookupsCut.Load(), RendezvousHits: f.rendezvousHits.Load()}
}

// close waits for running handlers, so none reads the store after Node.Close
// closes it. Handlers end promptly: each resets its stream when n.ctx ends.
func (f *fetcher) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.handles.Wait()
}

// handle answers one fetch stream: the result's blocks then its manifest,
// as a host answers a task it holds, or one error event.
func (f *fetcher) handle(st network.Stream) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		st.Reset()
		return
	}
	f.handles.Add(1)
	f.mu.Unlock()
	defer f.handles.Done()
	defer st.Close()
	stop := context.AfterFunc(f.n.ctx, func() { st.Reset() })
	defer stop()

	remote := st.Conn().RemotePeer()
	log := f.log.With("peer", remote)
	refuse := func(code, msg string, retry time.Duration) {
		if code == protocol.CodeNotFound {
			f.notFound.Add(1)
		} else {
			f.refused.Add(1)
		}
		log.Debug("refusing fetch", "code", code, "msg", msg)
		_ = st.SetWriteDeadline(time.Now().Add(writeTimeout))
		_ = protocol.WriteMsg(st, protocol.ErrorEvent(code, msg, retry))
	}

	// Limit before reading: a refused request costs one small write.
	if ok, retry := f.allow(remote, time.Now()); !ok {
		refuse(protocol.CodeRateLimited, fmt.Sprintf("more than %d fetches a second", FetchRate), retry)
		return
	}
	_ = st.SetReadDeadline(time.Now().Add(protocol.RequestTimeout))
	body, err := protocol.ReadFrame(bufio.NewReader(st), protocol.MaxRequestBytes)
	if err != nil {
		refuse(protocol.CodeBadRequest, err.Error(), 0)
		return
	}
	req, err := protocol.DecodeFetchRequest(body)
	if err != nil {
		refuse(protocol.CodeBadRequest, err.Error(), 0)
		return
	}
	select {
	case f.serving <- struct{}{}:
		defer func() { <-f.serving }()
	default:
		refuse(protocol.CodeBusy, fmt.Sprintf("answering %d fetches already", fetchMaxServing), 100*time.Millisecond)
		return
	}
	c := req.CID.Cid
	log = log.With("cid", c)
	if c.Prefix().Codec == cid.Raw {
		f.serveBlock(st, c, log, refuse)
		return
	}
	res, err := f.lookup(c)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, protocol.ErrBadCID):
		// Corrupt data was dropped by the store: for the asker it is gone.
		refuse(protocol.CodeNotFound, "this peer does not hold "+c.String(), 0)
		return
	case err != nil:
		refuse(protocol.CodeInternal, "reading the results store: "+err.Error(), 0)
		return
	}
	if err := sendResult(st, res, true); err != nil {
		log.Debug("sending fetched result", "err", err)
		st.Reset()
		return
	}
	f.served.Add(1)
	log.Debug("fetch served", "result", res.CID)
	// Someone asked this node for it: it serves it, so it provides it
	// (announce.go).
	f.n.announce(res.Manifest)
}

// lookup reads the result c names, a TaskCID or a ResultCID, verified;
// or, for a TaskCID, the result this host has just made and sent and is
// storing still (server.storing).
func (f *fetcher) lookup(c cid.Cid) (*store.Result, error) {
	res, err := f.n.reservable(f.n.ctx, c)
	if errors.Is(err, store.ErrNotFound) && f.n.serve != nil {
		if r, ok := f.n.serve.storing(c); ok {
			return r, nil
		}
	}
	return res, err
}

// allow takes a token from p's bucket, or says how long until one is there.
func (f *fetcher) allow(p peer.ID, now time.Time) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	lim := f.limits[p]
	if lim == nil {
		if len(f.limits) >= fetchMaxPeersTracked {
			f.pruneLimitsLocked(now)
		}
		lim = rate.NewLimiter(FetchRate, FetchBurst)
		f.limits[p] = lim
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		// Whole milliseconds, rounded up, as the error event carries them.
		return false, (d + time.Millisecond - 1).Truncate(time.Millisecond)
	}
	return true, 0
}

// pruneLimitsLocked forgets peers whose bucket has refilled: a fresh limiter
// would treat them the same. If every tracked peer is active, it forgets
// some anyway (map order): memory stays bounded, and the resource manager
// still bounds their streams. Called with mu held.
func (f *fetcher) pruneLimitsLocked(now time.Time) {
	for p, lim := range f.limits {
		if lim.TokensAt(now) >= FetchBurst {
			delete(f.limits, p)
		}
	}
	for p := range f.limits {
		if len(f.limits) < fetchMaxPeersTracked*3/4 {
			break
		}
		delete(f.limits, p)
	}
}

// isBad reports whether p sent bad data recently.
func (f *fetcher) isBad(p peer.ID, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	until, ok := f.bad[p]
	if ok && !now.Before(until) {
		delete(f.bad, p)
		return false
	}
	return ok
}

func (f *fetcher) markBad(p peer.ID, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.bad) >= badProvidersMax {
		for q, until := range f.bad {
			if !now.Before(until) || len(f.bad) >= badProvidersMax {
				delete(f.bad, q)
			}
		}
	}
	f.bad[p] = now.Add(badProviderTTL)
}

// FetchFromNetwork looks for a peer that holds taskCID's result and fetches
// it. It asks the DHT for providers for at most bound (0 means
// DefaultNetworkCacheBound), and stops asking sooner when no provider has
// turned up within the grace after the first DHT peer answered
// (DefaultNetworkCacheGrace). It skips itself and providers that recently
// sent bad data, and asks providers as they are found: one at a time, with a
// second asked too when the first has not answered within a short hedge
// delay. The first result that verifies wins (manifest signature, TaskCID,
// every block against its CID); it is stored and returned with Cache set to
// CacheNetwork and Provider to the peer that sent it. This node does not
// provide it until it serves it to someone (announce.go). A provider that
// sends data that fails verification is not asked again for some minutes.
//
// It returns an error wrapping ErrNoProvider on a miss: no provider found
// within bound or the grace, or none that answered with a valid result. A
// fetch already under way when the lookup stops is allowed to finish.
func (n *Node) FetchFromNetwork(ctx context.Context, taskCID cid.Cid, bound time.Duration) (*Result, error) {
	return n.fetchFromNetwork(ctx, taskCID, bound, "")
}

// fetchFromNetwork is FetchFromNetwork that also asks first, as the lookup
// starts, the peer first: the host rendezvous hashing on the TaskCID makes
// the likeliest holder (rendezvousHolder). A duplicate of a recent task was
// most likely computed there, and asking it costs one round trip where the
// lookup costs log N; its answer does not wait on the lookup, nor a miss
// there on it.
func (n *Node) fetchFromNetwork(ctx context.Context, taskCID cid.Cid, bound time.Duration, first peer.ID) (*Result, error) {
	start := time.Now()
	f := n.fetcher()
	if f == nil {
		return nil, errors.New("fetching from the network: node closed")
	}
	if bound <= 0 {
		bound = DefaultNetworkCacheBound
	}
	// Attempts still running when this returns are cancelled (the deferred
	// cancel runs first), then waited for, so that none outlives the call.
	var attempts sync.WaitGroup
	defer attempts.Wait()
	// ctx ends every attempt when this returns; lookupCtx ends the lookup
	// at the bound without ending attempts already under way.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lookupCtx, cancelLookup := context.WithTimeout(ctx, bound)
	defer cancelLookup()
	// The lookup's events say when the first DHT peer answered. They must
	// be read as they come: the DHT blocks on sending each one.
	lookupCtx, events := routing.RegisterForQueryEvents(lookupCtx)
	providers := n.dht.FindProvidersAsync(lookupCtx, taskCID, fetchMaxProviders)

	type outcome struct {
		from peer.ID
		res  *Result
		err  error
	}
	var (
		outcomes = make(chan outcome)
		queue    []peer.ID
		seen     = map[peer.ID]bool{n.host.ID(): true}
		inFlight int
		hedge    *time.Timer
		hedgeC   <-chan time.Time
		grace    *time.Timer // from the first answer of a DHT peer
		graceC   <-chan time.Time
		found    bool // a provider other than this node was named
		cut      bool // the grace ended the lookup
		errs     []error
	)
	defer func() {
		if hedge != nil {
			hedge.Stop()
		}
		if grace != nil {
			grace.Stop()
		}
	}()
	launch := func(p peer.ID) {
		inFlight++
		attempts.Add(1)
		go func() {
			defer attempts.Done()
			res, err := n.fetchFrom(ctx, p, taskCID)
			// Recorded here, not in the loop below, so that bad data is
			// remembered even when another provider's answer won the race.
			if err != nil && isBadData(err) {
				f.badProvider.Add(1)
				f.markBad(p, time.Now())
				n.log.Warn("provider sent a result that does not verify; not asking it again for a while",
					"peer", p, "task", taskCID, "err", err, "for", badProviderTTL)
			}
			select {
			case outcomes <- outcome{p, res, err}:
			case <-ctx.Done():
			}
		}()
		if hedge == nil {
			hedge = time.NewTimer(fetchHedgeDelay)
		} else {
			hedge.Reset(fetchHedgeDelay)
		}
		hedgeC = hedge.C
	}
	hedged := false
	if first != "" && first != n.host.ID() && !f.isBad(first, time.Now()) {
		seen[first] = true
		launch(first)
	}
	for {
		// One attempt at a time; a second only once the first has had
		// fetchHedgeDelay, or when the first has failed.
		for len(queue) > 0 && (inFlight == 0 || (inFlight < fetchRace && hedged)) {
			p := queue[0]
			queue = queue[1:]
			launch(p)
			hedged = false
		}
		if inFlight == 0 && providers == nil {
			if len(errs) == 0 {
				return nil, fmt.Errorf("%w: no provider of %s found in %s", ErrNoProvider, taskCID, time.Since(start).Round(time.Microsecond))
			}
			return nil, fmt.Errorf("%w: %s: %w", ErrNoProvider, taskCID, errors.Join(errs...))
		}
		select {
		case ai, ok := <-providers:
			if !ok {
				providers = nil
				if cut && errors.Is(lookupCtx.Err(), context.Canceled) {
					f.lookupsCut.Add(1) // the lookup ended at the cut, not by itself
				}
				continue
			}
			if seen[ai.ID] {
				continue
			}
			seen[ai.ID] = true
			if f.isBad(ai.ID, time.Now()) {
				n.log.Debug("skipping a provider that sent bad data", "peer", ai.ID, "task", taskCID)
				continue
			}
			if len(ai.Addrs) > 0 {
				n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, 10*time.Minute)
			}
			found = true
			queue = append(queue, ai.ID)
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Type == routing.PeerResponse && grace == nil {
				grace = time.NewTimer(DefaultNetworkCacheGrace)
				graceC = grace.C
			}
		case <-graceC:
			graceC = nil
			if !found {
				// Nothing within the grace after the first answer: a miss.
				// Attempts under way, if any, are not affected.
				cut = true
				cancelLookup()
			}
		case o := <-outcomes:
			inFlight--
			if o.err == nil {
				f.fetched.Add(1)
				if o.from == first {
					f.rendezvousHits.Add(1)
				}
				o.res.Elapsed = time.Since(start)
				return o.res, nil
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			n.log.Debug("provider did not serve", "peer", o.from, "task", taskCID, "err", o.err)
			errs = append(errs, fmt.Errorf("%s: %w", o.from, o.err))
			hedged = true // a failed attempt frees its place at once
		case <-hedgeC:
			hedgeC = nil
			hedged = true
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// isBadData reports whether a fetch failed because of what the provider
// sent, rather than because it refused, was unreachable or was slow.
func isBadData(err error) bool {
	return errors.Is(err, protocol.ErrBadCID) || errors.Is(err, protocol.ErrBadManifest) || errors.Is(err, errBadProvider)
}

// readFetchEvent reads one event of a fetch answer. A frame over the cap
// or an event that does not decode is the provider's fault
// (errBadProvider); the stream is reset on any failure.
func readFetchEvent(st network.Stream, r *bufio.Reader) (*protocol.Event, error) {
	body, err := protocol.ReadFrame(r, protocol.MaxEventBytes)
	if err != nil {
		st.Reset()
		if errors.Is(err, protocol.ErrFrameTooLarge) {
			return nil, fmt.Errorf("%w: %v", errBadProvider, err)
		}
		return nil, fmt.Errorf("reading from provider: %w", err)
	}
	e, err := protocol.DecodeEvent(body)
	if err != nil {
		st.Reset()
		return nil, fmt.Errorf("%w: bad event: %v", errBadProvider, err)
	}
	return e, nil
}

// openFetch opens a fetch stream to p (through a relay too, when that is
// how p is reached), sends the request for c and closes its write side.
// The stream is reset if ctx ends first; done closes it.
func (n *Node) openFetch(ctx context.Context, p peer.ID, c cid.Cid) (st network.Stream, done func(), err error) {
	st, err = n.host.NewStream(reach.AllowRelayed(ctx), p, libp2pProto(protocol.FetchProtocol))
	if err != nil {
		return nil, nil, fmt.Errorf("opening fetch stream to %s: %w", p, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	if err := protocol.WriteMsg(st, protocol.FetchRequest{CID: protocol.Link{Cid: c}}); err != nil {
		stop()
		st.Reset()
		return nil, nil, fmt.Errorf("sending fetch request: %w", err)
	}
	_ = st.CloseWrite()
	return st, func() { stop(); st.Close() }, nil
}

// fetchFrom fetches taskCID's result from one provider and accepts it
// through acceptResult, which verifies, stores and provides it.
func (n *Node) fetchFrom(ctx context.Context, p peer.ID, taskCID cid.Cid) (*Result, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchAttemptTimeout)
	defer cancel()
	st, done, err := n.openFetch(ctx, p, taskCID)
	if err != nil {
		return nil, err
	}
	defer done()

	r := bufio.NewReader(st)
	var blocks [][]byte
	// A fetch answer is at most MaxOutputs blocks and a result, or one error.
	for range protocol.MaxOutputs + 1 {
		e, err := readFetchEvent(st, r)
		if err != nil {
			return nil, err
		}
		switch e.Type {
		case protocol.EventError:
			return nil, e.Err()
		case protocol.EventBlock:
			blocks = append(blocks, e.Data)
		case protocol.EventResult:
			return n.acceptResult(ctx, taskCID, e.Manifest, blocks, p, p.String())
		default:
			st.Reset()
			return nil, fmt.Errorf("%w: %s event in a fetch answer", errBadProvider, e.Type)
		}
	}
	st.Reset()
	return nil, fmt.Errorf("%w: more blocks than a manifest may name", errBadProvider)
}

// rendezvousHolder is the host of the view serving t's model with the
// highest rendezvous weight for tc, whatever its load: placement's
// rendezvous draw favours it for every copy of the task, so it is where a
// duplicate most likely was computed. Empty when the view has none.
func (n *Node) rendezvousHolder(t protocol.Task, tc cid.Cid) peer.ID {
	key := scheduler.KeyHash(tc.Bytes())
	model := viewModel(t)
	var best peer.ID
	var bestW uint64
	n.gossip.pv.read(n.viewDeps(), func(v scheduler.View, ids []peer.ID) {
		for i := range v {
			if !slices.Contains(v[i].Models, model) {
				continue
			}
			if w := scheduler.RendezvousWeight(key, v[i].ID); best == "" || w > bestW {
				best, bestW = ids[i], w
			}
		}
	})
	return best
}
