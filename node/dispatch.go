package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Cache outcomes reported by Submit.
const (
	CacheMiss    = "miss"    // a host ran the kernel for this request
	CacheLocal   = "local"   // answered from this node's store
	CacheNetwork = "network" // another peer already held the result
)

// SubmitOptions tune one Submit.
type SubmitOptions struct {
	// NoCache skips every cache and asks the host for a fresh computation.
	NoCache bool
	// Progress, if set, receives events as the task travels. It is called
	// from Submit's goroutine and must not block for long.
	Progress func(Progress)
}

// Progress is one step of a task's journey, for people watching it.
type Progress struct {
	Stage string `json:"stage"` // lookup, joined, searching, trying, queued, running, redispatch, refused, done
	Peer  string `json:"peer,omitempty"`
	protocol.Event
}

// Result is a verified result.
type Result struct {
	TaskCID   cid.Cid
	ResultCID cid.Cid
	Manifest  *protocol.Manifest
	Blocks    [][]byte
	// Host made the result (from the signed manifest); Provider sent it.
	Host     peer.ID
	Provider peer.ID
	Cache    string
	Elapsed  time.Duration
}

// Submit runs task on the network: from the local store if it holds the
// result, else on the hosts the DHT names for the model, trying them in turn
// until one answers. Every block is verified against its CID before it is
// stored or returned.
func (n *Node) Submit(ctx context.Context, task protocol.Task, opts SubmitOptions) (*Result, error) {
	start := time.Now()
	n.stats.submitted.Add(1)
	var pmu sync.Mutex // hedged attempts report from two goroutines
	progress := func(p Progress) {
		if opts.Progress != nil {
			pmu.Lock()
			defer pmu.Unlock()
			opts.Progress(p)
		}
	}
	t, err := task.Normalize()
	if err != nil {
		return nil, err
	}
	tc, err := t.CID()
	if err != nil {
		return nil, err
	}
	// Identical submissions in flight on this node share one journey.
	c, leader := n.submits.join(tc, opts.NoCache)
	if !leader {
		progress(Progress{Stage: "joined"})
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if c.err != nil {
			return nil, c.err
		}
		res := *c.res
		res.Elapsed = time.Since(start)
		return &res, nil
	}
	c.res, c.err = n.submit(ctx, t, tc, opts, start, progress)
	n.submits.leave(tc, opts.NoCache, c)
	return c.res, c.err
}

// submit is Submit's journey for the first of identical submissions.
func (n *Node) submit(ctx context.Context, t protocol.Task, tc cid.Cid, opts SubmitOptions, start time.Time, progress func(Progress)) (*Result, error) {
	if !opts.NoCache {
		progress(Progress{Stage: "lookup"})
		if r, err := n.store.Get(ctx, tc); err == nil {
			res := resultFrom(r, tc, n.host.ID(), CacheLocal)
			res.Elapsed = time.Since(start)
			progress(Progress{Stage: "done"})
			return res, nil
		}
		// A miss must cost little: the lookup is bounded, and on a miss
		// (ErrNoProvider) or any other failure the task is scheduled.
		if res, err := n.FetchFromNetwork(ctx, tc, DefaultNetworkCacheBound); err == nil {
			res.Elapsed = time.Since(start)
			progress(Progress{Stage: "done", Peer: res.Provider.String()})
			return res, nil
		} else if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return n.place(ctx, t, tc, opts.NoCache, start, progress)
}

// submitCalls coalesces identical Submits on one node: the first does the
// work, the others wait for its answer. Safe for concurrent use.
type submitCalls struct {
	mu    sync.Mutex
	calls map[submitKey]*submitCall
}

type submitKey struct {
	task    cid.Cid
	noCache bool
}

type submitCall struct {
	done chan struct{}
	res  *Result
	err  error
}

// join returns the call for (tc, noCache) and whether the caller leads it.
func (s *submitCalls) join(tc cid.Cid, noCache bool) (*submitCall, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := submitKey{tc, noCache}
	if c, ok := s.calls[k]; ok {
		return c, false
	}
	if s.calls == nil {
		s.calls = map[submitKey]*submitCall{}
	}
	c := &submitCall{done: make(chan struct{})}
	s.calls[k] = c
	return c, true
}

// leave ends the leader's call and wakes its followers.
func (s *submitCalls) leave(tc cid.Cid, noCache bool, c *submitCall) {
	s.mu.Lock()
	delete(s.calls, submitKey{tc, noCache})
	s.mu.Unlock()
	close(c.done)
}

// maxRounds bounds how many times Submit walks the candidates again after
// every one refused with a retry-after.
const maxRounds = 5

// place walks candidates until one host returns the result. Candidates come
// from the gossip view through scheduler.Place (cool, idle hosts first);
// hosts the view does not know are found on the DHT. A refusal (busy, too
// hot, paused) moves on to the next candidate; a host that fails mid-task
// is retried elsewhere; when all refused, it waits for the shortest
// retry-after and places again, a bounded number of times.
func (n *Node) place(ctx context.Context, t protocol.Task, tc cid.Cid, noCache bool, start time.Time, progress func(Progress)) (*Result, error) {
	var errs []error
	var dhtHosts []HostInfo
	searched := false
	attempts := 0
	redispatched := false // at most once per Submit, so a task never ping-pongs
	for round := 0; round < maxRounds; round++ {
		tried := map[string]bool{}
		var retryAfter time.Duration
		next := func() (peer.ID, bool) {
			if attempts >= n.cfg.MaxAttempts*maxRounds {
				return "", false
			}
			p, ok := n.nextCandidate(ctx, t, tc, tried, &dhtHosts, &searched, progress)
			if ok {
				tried[p.String()] = true
				attempts++
				progress(Progress{Stage: "trying", Peer: p.String()})
			}
			return p, ok
		}
		for {
			p, ok := next()
			if !ok {
				break
			}
			res, p, err := n.hedged(ctx, p, next, func(ctx context.Context, p peer.ID) (*Result, error) {
				defer n.ledger.start(p)()
				return n.runAt(ctx, p, t, tc, noCache, func(e protocol.Event) bool {
					stage := "running"
					if e.Type == protocol.EventQueued {
						stage = "queued"
						if !redispatched && n.shouldRedispatch(p, t, tc, e.Position, tried) {
							redispatched = true
							progress(Progress{Stage: "redispatch", Peer: p.String(), Event: e})
							return false
						}
					}
					progress(Progress{Stage: stage, Peer: p.String(), Event: e})
					return true
				})
			})
			if err == nil {
				res.Elapsed = time.Since(start)
				progress(Progress{Stage: "done", Peer: p.String()})
				return res, nil
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var re *protocol.RemoteError
			if errors.As(err, &re) {
				if !re.Retryable() {
					return nil, err
				}
				if re.RetryAfter > 0 && (retryAfter == 0 || re.RetryAfter < retryAfter) {
					retryAfter = re.RetryAfter
				}
			}
			n.gossip.forget(p) // until its next beacon says otherwise
			progress(Progress{Stage: "refused", Peer: p.String(), Event: protocol.Event{Message: err.Error()}})
			n.log.Debug("host did not complete the task, trying the next", "peer", p, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		}
		if len(tried) == 0 {
			break // no candidate at all
		}
		wait := min(max(retryAfter, 100*time.Millisecond), 5*time.Second)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("no host serves model %q: none in the gossip view, none found on the DHT within %s (is a `gpunet host` running and connected?)", t.Model, n.cfg.FindTimeout)
	}
	return nil, fmt.Errorf("no host completed the task after %d attempts: %w", attempts, errors.Join(errs...))
}

// errRedispatch means the client left a host's queue for a better place.
var errRedispatch = errors.New("left the host's queue: another host should finish sooner")

// shouldRedispatch decides, when host p reports the task at queue position
// pos, whether to take it elsewhere: when the wait that position implies is
// more than twice, plus a second, the best predicted completion among the
// hosts not yet tried. The margin keeps a client from leaving a queue for
// an estimate that is only slightly better (the view is seconds old).
func (n *Node) shouldRedispatch(p peer.ID, t protocol.Task, tc cid.Cid, pos uint32, tried map[string]bool) bool {
	if pos <= 1 {
		return false
	}
	view := n.View()
	n.ledger.adjust(view, n.viewExpiry())
	slots, serviceMs := 1, n.schedCfg.DefaultServiceMs
	for _, ps := range view {
		if ps.ID == p.String() {
			slots = max(1, ps.Slots)
			if ms, ok := ps.ServiceMs[t.Model]; ok && ms > 0 {
				serviceMs = ms
			}
		}
	}
	wait := float64(pos) / float64(slots) * serviceMs
	exclude := map[string]bool{p.String(): true}
	for id := range tried {
		exclude[id] = true
	}
	cands := scheduler.Place(view, scheduler.Request{Model: t.Model, Key: tc.Bytes(), Exclude: exclude}, time.Now(), nil, n.schedCfg)
	return len(cands) > 0 && wait > 2*cands[0].PredictedMs+1000
}

// hedged runs the task at p. With HedgeAfter set, if p has not answered by
// then it also starts the next candidate, takes whichever succeeds first
// and cancels the other (the cancelled host's stream is reset; a
// computation it already started still completes into its cache). Without
// hedging it is just run(ctx, p). It returns the peer whose answer it used.
func (n *Node) hedged(ctx context.Context, p peer.ID, next func() (peer.ID, bool), run func(context.Context, peer.ID) (*Result, error)) (*Result, peer.ID, error) {
	if n.cfg.HedgeAfter <= 0 {
		res, err := run(ctx, p)
		return res, p, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type outcome struct {
		res *Result
		err error
		p   peer.ID
	}
	ch := make(chan outcome, 2)
	launch := func(p peer.ID) {
		go func() {
			res, err := run(ctx, p)
			ch <- outcome{res, err, p}
		}()
	}
	launch(p)
	inflight, hedged := 1, false
	timer := time.NewTimer(n.cfg.HedgeAfter)
	defer timer.Stop()
	var first *outcome
	for inflight > 0 {
		select {
		case <-timer.C:
			if q, ok := next(); ok && !hedged {
				hedged = true
				inflight++
				launch(q)
			}
		case o := <-ch:
			inflight--
			if o.err == nil {
				return o.res, o.p, nil
			}
			if first == nil {
				first = &o
			}
			if !hedged {
				return nil, o.p, o.err // no second attempt running: let the caller move on
			}
		}
	}
	return nil, first.p, first.err
}

// nextCandidate returns the best host not yet tried: first by placement
// over the gossip view, then from the DHT (searched once per Submit, in
// rendezvous order).
func (n *Node) nextCandidate(ctx context.Context, t protocol.Task, tc cid.Cid, tried map[string]bool, dhtHosts *[]HostInfo, searched *bool, progress func(Progress)) (peer.ID, bool) {
	// A host already running this very task takes a duplicate for free,
	// whatever its load or heat: it joins the running computation.
	if ids := n.gossip.running(protocol.TaskKey(tc), n.host.ID(), tried); len(ids) > 0 {
		return ids[0], true
	}
	req := scheduler.Request{Model: t.Model, Key: tc.Bytes(), Exclude: tried}
	view := n.View()
	n.ledger.adjust(view, n.viewExpiry())
	if cands := scheduler.Place(view, req, time.Now(), n.rng(), n.schedCfg); len(cands) > 0 {
		if id, err := peer.Decode(cands[0].ID); err == nil {
			return id, true
		}
	}
	if !*searched {
		*searched = true
		progress(Progress{Stage: "searching"})
		if hosts, err := n.FindHosts(ctx, t.Model, 20); err == nil {
			rendezvousOrder(hosts, tc)
			*dhtHosts = hosts
		} else {
			n.log.Debug("DHT search for hosts", "model", t.Model, "err", err)
		}
	}
	for _, h := range *dhtHosts {
		if !tried[h.ID.String()] {
			return h.ID, true
		}
	}
	return "", false
}

// rng returns a source of randomness for one placement.
func (n *Node) rng() *rand.Rand { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }

// runAt sends t to one host and reads its events until the result.
//
// onEvent sees every queued and progress event; when it returns false the
// client gives up on this host (errRedispatch) and the host drops the task
// from its queue if nobody else waits for it.
func (n *Node) runAt(ctx context.Context, p peer.ID, t protocol.Task, tc cid.Cid, noCache bool, onEvent func(protocol.Event) bool) (*Result, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.TaskTimeout)
	defer cancel()
	n.ensureAddrs(ctx, p)
	st, err := n.host.NewStream(ctx, p, libp2pProto(protocol.TaskProtocol))
	if err != nil {
		return nil, fmt.Errorf("opening task stream: %w", err)
	}
	defer st.Close()
	// The stream deadline follows ctx, so a host that goes silent cannot
	// hold the client past TaskTimeout.
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	if err := protocol.WriteMsg(st, protocol.TaskRequest{Task: t, NoCache: noCache}); err != nil {
		st.Reset()
		return nil, fmt.Errorf("sending task: %w", err)
	}
	_ = st.CloseWrite()

	r := bufio.NewReader(st)
	var blocks [][]byte
	for i := 0; i < protocol.MaxEventsPerTask; i++ {
		// A host sends something at least every keepaliveEvery; one silent
		// for EventIdleTimeout is gone, and the task moves elsewhere.
		idle := time.Now().Add(n.cfg.EventIdleTimeout)
		if dl, ok := ctx.Deadline(); ok && dl.Before(idle) {
			idle = dl
		}
		_ = st.SetReadDeadline(idle)
		body, err := protocol.ReadFrame(r, protocol.MaxEventBytes)
		if err != nil {
			st.Reset()
			return nil, fmt.Errorf("reading from host: %w", err)
		}
		e, err := protocol.DecodeEvent(body)
		if err != nil {
			st.Reset()
			return nil, fmt.Errorf("host sent a bad event: %w", err)
		}
		switch e.Type {
		case protocol.EventError:
			return nil, e.Err()
		case protocol.EventBlock:
			if len(blocks) == protocol.MaxOutputs {
				st.Reset()
				return nil, errors.New("host sent more blocks than a manifest may name")
			}
			blocks = append(blocks, e.Data)
		case protocol.EventResult:
			res, err := n.acceptResult(ctx, tc, e.Manifest, blocks, p)
			if err != nil {
				return nil, err
			}
			if !e.Cached {
				res.Cache = CacheMiss
			}
			return res, nil
		default:
			if !onEvent(*e) {
				st.Reset()
				return nil, errRedispatch
			}
		}
	}
	st.Reset()
	return nil, errors.New("host sent too many events")
}

// ensureAddrs looks p up on the DHT when the peerstore has no address for
// it: a host known only from its gossip beacon may never have been dialled.
func (n *Node) ensureAddrs(ctx context.Context, p peer.ID) {
	if len(n.host.Peerstore().Addrs(p)) > 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.FindTimeout)
	defer cancel()
	if ai, err := n.dht.FindPeer(ctx, p); err == nil {
		n.host.Peerstore().AddAddrs(p, ai.Addrs, 10*time.Minute)
	}
}

// acceptResult verifies a result received from a peer (manifest signature,
// TaskCID, every block against its CID), stores it and starts providing it.
func (n *Node) acceptResult(ctx context.Context, tc cid.Cid, mbytes []byte, blocks [][]byte, from peer.ID) (*Result, error) {
	m, err := protocol.DecodeManifest(mbytes)
	if err != nil {
		return nil, err
	}
	if !m.TaskCID.Equals(tc) {
		return nil, fmt.Errorf("%w: result is for task %s, asked for %s", protocol.ErrBadManifest, m.TaskCID, tc)
	}
	if len(blocks) != len(m.Outputs) {
		return nil, fmt.Errorf("%w: %d blocks for %d outputs", protocol.ErrBadManifest, len(blocks), len(m.Outputs))
	}
	for i, o := range m.Outputs {
		if err := protocol.VerifyBlock(o.CID.Cid, blocks[i]); err != nil {
			return nil, fmt.Errorf("output %d from %s: %w", i, from, err)
		}
	}
	if _, err := n.store.PutVerified(ctx, m, mbytes, blocks); err != nil {
		return nil, fmt.Errorf("storing result: %w", err)
	}
	n.provideResult(tc)
	res := &Result{TaskCID: tc, ResultCID: protocol.ManifestCID(mbytes), Manifest: m, Blocks: blocks, Provider: from, Cache: CacheNetwork}
	res.Host, _ = peer.Decode(m.Host)
	return res, nil
}

// rendezvousOrder sorts hosts by highest random weight of (TaskCID, peer):
// every client orders the same hosts the same way for a task, so concurrent
// duplicates meet at one host and coalesce, while different tasks spread
// evenly. The gossip scheduler refines this with load and heat.
func rendezvousOrder(hosts []HostInfo, tc cid.Cid) {
	key := scheduler.KeyHash(tc.Bytes())
	weight := func(id peer.ID) uint64 { return scheduler.RendezvousWeight(key, id.String()) }
	sort.SliceStable(hosts, func(i, j int) bool { return weight(hosts[i].ID) > weight(hosts[j].ID) })
}

func resultFrom(r *store.Result, tc cid.Cid, provider peer.ID, cache string) *Result {
	res := &Result{TaskCID: tc, ResultCID: r.CID, Manifest: r.Manifest, Blocks: r.Blocks, Provider: provider, Cache: cache}
	res.Host, _ = peer.Decode(r.Manifest.Host)
	return res
}

// SubmitTo runs task at one given host, skipping the caches and discovery:
// the task protocol's round trip alone, which the bench command measures.
func (n *Node) SubmitTo(ctx context.Context, p peer.ID, task protocol.Task, opts SubmitOptions) (*Result, error) {
	start := time.Now()
	t, err := task.Normalize()
	if err != nil {
		return nil, err
	}
	tc, err := t.CID()
	if err != nil {
		return nil, err
	}
	res, err := n.runAt(ctx, p, t, tc, opts.NoCache, func(protocol.Event) bool { return true })
	if err != nil {
		return nil, err
	}
	res.Elapsed = time.Since(start)
	return res, nil
}
