package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gpunet/gpunet/node/reach"
	"github.com/gpunet/gpunet/node/sampling"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
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
	// Submitter names the person or program this node submits for, when it
	// forwards for several (a daemon's API callers): hosts and this node's
	// own waiting room share their slots fairly between submitters, not
	// just between nodes. Empty means the node itself.
	Submitter string
	// Previews asks for up to protocol.MaxPreviews partial images of the
	// task as it runs (stage "preview", Progress.Preview), from hosts and
	// kernels that can make them; 0 asks for none.
	Previews int
	// Progress, if set, receives events as the task travels. It is called
	// from Submit's goroutine and must not block for long.
	Progress func(Progress)
}

// Progress is one step of a task's journey, for people watching it.
type Progress struct {
	Stage string `json:"stage"` // lookup, joined, searching, trying, queued, running, preview, hedge, suspect, moved, refused, waiting, verifying, done
	Peer  string `json:"peer,omitempty"`
	protocol.Event
	// Preview is a partial image of the task so far (a PNG), at stage
	// "preview", with Step and Total saying where the run was.
	Preview []byte `json:"preview,omitempty"`
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
func (n *Node) Submit(ctx context.Context, task protocol.Task, opts SubmitOptions) (res *Result, err error) {
	start := time.Now()
	n.stats.submitted.Add(1)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.cfg.SubmitTimeout)
		defer cancel()
	}
	progress := func(p Progress) {
		if opts.Progress != nil {
			opts.Progress(p)
		}
	}
	if task, err = n.resolveModel(ctx, task); err != nil {
		return nil, err
	}
	t, tc, err := task.NormalizeCID()
	if err != nil {
		return nil, err
	}
	if err := n.checkInputs(t); err != nil {
		return nil, err
	}
	ev := SubmitEvent{TaskCID: tc, Task: t, Submitter: opts.Submitter, Started: start}
	if len(n.cfg.Observers) > 0 {
		caller := progress
		progress = func(p Progress) {
			caller(p)
			e := ev
			e.Progress = p
			n.observe(func(o Observer) { o.SubmitProgress(e) })
		}
	}
	defer func() {
		e := ev
		e.Result, e.Err, e.Elapsed = res, err, time.Since(start)
		n.observe(func(o Observer) { o.SubmitDone(e) })
		if err != nil {
			n.log.Info("submission failed", "task", tc, "submitter", opts.Submitter, "ms", e.Elapsed.Milliseconds(), "err", err)
		} else {
			n.log.Info("submission done", "task", tc, "submitter", opts.Submitter, "cache", res.Cache, "host", res.Host, "ms", e.Elapsed.Milliseconds())
		}
	}()
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
		joined := *c.res
		joined.Elapsed = time.Since(start)
		return &joined, nil
	}
	c.res, c.err = n.submit(ctx, t, tc, opts, start, progress)
	if c.err == nil && n.verify != nil {
		c.res, c.err = n.verify.judge(ctx, c.res, progress)
		if errors.Is(c.err, errShunned) {
			// A cached result of a host caught lying: computed again, by
			// a host placement may use.
			c.res, c.err = n.place(ctx, t, tc, true, opts.Submitter, opts.Previews, start, progress)
		}
		if c.err == nil {
			c.res.Elapsed = time.Since(start)
		}
	}
	n.submits.leave(tc, opts.NoCache, c)
	return c.res, c.err
}

// submit is Submit's journey for the first of identical submissions.
func (n *Node) submit(ctx context.Context, t protocol.Task, tc cid.Cid, opts SubmitOptions, start time.Time, progress func(Progress)) (*Result, error) {
	if !opts.NoCache {
		progress(Progress{Stage: "lookup"})
		if r, err := n.servable(ctx, tc); err == nil {
			res := resultFrom(r, tc, n.host.ID(), CacheLocal)
			res.Elapsed = time.Since(start)
			progress(Progress{Stage: "done"})
			return res, nil
		}
		// A miss must cost little: the lookup is bounded, and on a miss
		// (ErrNoProvider) or any other failure the task is scheduled.
		// The host rendezvous hashing names is asked as the lookup starts.
		if res, err := n.fetchFromNetwork(ctx, tc, DefaultNetworkCacheBound, n.rendezvousHolder(t, tc)); err == nil {
			res.Elapsed = time.Since(start)
			progress(Progress{Stage: "done", Peer: res.Provider.String()})
			return res, nil
		} else if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return n.place(ctx, t, tc, opts.NoCache, opts.Submitter, opts.Previews, start, progress)
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

// maxRounds, times MaxAttempts, bounds how many hosts may fail one task
// (a kernel error, a broken stream, a bad result) before Submit gives up on
// it. Refusals for load are not failures: a task waits them out until its
// deadline.
const maxRounds = 5

// candidate is a host to try, with Place's prediction for it; pred is zero
// for a host Place did not rank (found on the DHT, running the task
// already, or this host itself as a last resort).
type candidate struct {
	p    peer.ID
	pred scheduler.Candidate
}

// id is c's peer ID as text: the view's, when placement chose c, which
// saves encoding it again.
func (c candidate) id() string {
	if c.pred.ID != "" {
		return c.pred.ID
	}
	return c.p.String()
}

// journey is one Submit's search for a host, from the first candidate to
// the result. Its methods run on Submit's goroutine; only the attempts it
// starts (follow) run beside it.
type journey struct {
	n         *Node
	t         protocol.Task
	tc        cid.Cid
	noCache   bool
	submitter string
	previews  int // partial images asked of the host (TaskRequest.Previews)
	progress  func(Progress)

	tried    map[string]bool // this round's hosts
	failures int             // attempts that failed other than by a refusal for load
	// When probing (probe.go): the latest probe round's ranking, not yet
	// tried, and the rounds taken since the task last waited.
	choices  []sampling.Choice
	rounds   int
	dhtHosts []HostInfo
	searched bool
}

// place walks candidates until one host returns the result. Candidates come
// from the gossip view through scheduler.Place (cool, idle hosts first);
// hosts the view does not know are found on the DHT. A refusal (busy, too
// hot, paused, rate limited) moves on to the next candidate; a host that
// fails mid-task is retried elsewhere. When every candidate refused, the
// task waits in the node's waiting room (waitroom.go) until the swarm has
// room for it, then is placed afresh: a surge is queued, never refused,
// until the caller's deadline. While the task waits in a host's queue, or
// its host goes silent, follow may move it (the queue hedge).
func (n *Node) place(ctx context.Context, t protocol.Task, tc cid.Cid, noCache bool, submitter string, previews int, start time.Time, progress func(Progress)) (*Result, error) {
	j := &journey{n: n, t: t, tc: tc, noCache: noCache, submitter: submitter, previews: previews, progress: progress}
	// Whatever place this task held at a host is free once it ends: the
	// next waiting task may have it.
	defer n.waiting.release(1)
	// A task arriving while others of its model wait joins the line
	// rather than jumping it.
	if n.waiting.waiting(t.Model) > 0 {
		if err := j.wait(ctx, 0, false); err != nil {
			return nil, j.deadline(ctx, nil)
		}
	}
	var last error // the latest host's error, for the message
	everCandidate := false
	for {
		j.tried, j.choices, j.rounds = map[string]bool{}, nil, 0
		var retryAfter time.Duration
		for {
			c, ok := j.next(ctx)
			if !ok {
				break
			}
			everCandidate = true
			res, p, err := j.follow(ctx, c)
			if err == nil {
				res.Elapsed = time.Since(start)
				progress(Progress{Stage: "done", Peer: p.String()})
				return res, nil
			}
			if ctx.Err() != nil {
				return nil, j.deadline(ctx, last)
			}
			var re *protocol.RemoteError
			switch {
			case errors.As(err, &re) && !re.Retryable():
				return nil, err
			case errors.As(err, &re) && backPressure(re.Code):
				if re.RetryAfter > 0 && (retryAfter == 0 || re.RetryAfter < retryAfter) {
					retryAfter = re.RetryAfter
				}
			default:
				j.failures++
			}
			j.failed(p, err)
			last = fmt.Errorf("%s: %w", p, err)
			if j.exhausted() {
				return nil, fmt.Errorf("no host completed the task: %d attempts failed, the last: %w", j.failures, last)
			}
		}
		if !everCandidate && !j.anyHost() {
			return nil, j.noHost()
		}
		// Every candidate refused for load, or failed: the swarm is full.
		// Wait for room instead of asking again at once.
		if err := j.wait(ctx, retryAfter, true); err != nil {
			return nil, j.deadline(ctx, last)
		}
	}
}

// backPressure reports whether a refusal code says "not now" (the host is
// loaded, hot or paused), which a task waits out, rather than a failure.
func backPressure(code string) bool {
	switch code {
	case protocol.CodeBusy, protocol.CodeTooHot, protocol.CodePaused, protocol.CodeRateLimited:
		return true
	}
	return false
}

// wait holds the task in the node's waiting room until it may try the
// hosts again, telling the submitter its place in line and the swarm's
// ETA for it as they change. back puts it at the head of its submitter's
// line: it was waiting already.
func (j *journey) wait(ctx context.Context, hint time.Duration, back bool) error {
	n := j.n
	tk := n.waiting.enter(j.submitter, j.t.Model, hint, back)
	defer n.waiting.leave(tk)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := 0
	for {
		if pos := n.waiting.position(tk); pos > 0 && pos != last {
			last = pos
			eta, _ := scheduler.SwarmETAMs(n.View(), j.t.Model, pos-1, n.schedCfg.DefaultServiceMs)
			j.progress(Progress{Stage: "waiting", Event: protocol.Event{Position: uint32(pos), EtaMs: uint64(eta)}})
		}
		select {
		case <-tk.ready:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// deadline is the error for a task whose caller gave up or whose deadline
// passed, with the last host's word.
func (j *journey) deadline(ctx context.Context, last error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		if last != nil {
			return fmt.Errorf("task not done before its deadline (raise it with submit --timeout or timeout_ms); the last host said %v: %w", last, ctx.Err())
		}
		return fmt.Errorf("task not done before its deadline (raise it with submit --timeout or timeout_ms): %w", ctx.Err())
	}
	return ctx.Err()
}

// anyHost reports whether any host for the task's model is known, in the
// view (full or not) or from the DHT.
func (j *journey) anyHost() bool {
	if len(j.dhtHosts) > 0 {
		return true
	}
	view := j.n.View()
	if b := j.n.own.Load(); b != nil {
		view = append(view, peerState(j.n.host.ID(), b))
	}
	for _, p := range view {
		if slices.Contains(p.Models, j.t.Model) {
			return true
		}
	}
	return false
}

// noHost is the error for a model no host was found for: it names the
// models the swarm does serve.
func (j *journey) noHost() error {
	n := j.n
	seen := map[string]bool{}
	var models []string
	add := func(ms []string) {
		for _, m := range ms {
			if !seen[m] {
				seen[m] = true
				models = append(models, m)
			}
		}
	}
	for _, p := range n.View() {
		add(p.Models)
	}
	add(n.Models())
	if len(models) == 0 {
		return fmt.Errorf("no host serves model %q: none in the gossip view, none found on the DHT within %s (is a `gpunet host` running and connected?)", j.t.Model, n.cfg.FindTimeout)
	}
	sort.Strings(models)
	return fmt.Errorf("no host serves model %q; the swarm serves %s (pick one with --model)", j.t.Model, strings.Join(models, ", "))
}

// failed notes that p refused or failed the task: the view shuns it until
// its next beacon says otherwise.
func (j *journey) failed(p peer.ID, err error) {
	j.n.gossip.forget(p)
	if j.n.probing() {
		j.n.sampling.Forget(p)
	}
	j.progress(Progress{Stage: "refused", Peer: p.String(), Event: protocol.Event{Message: err.Error()}})
	j.n.log.Debug("host did not complete the task, trying the next", "peer", p, "err", err)
}

// try records c as tried in this round.
func (j *journey) try(c candidate, stage string) {
	id := c.id()
	j.tried[id] = true
	if j.n.probing() {
		j.n.sampling.Charge(c.p)
	}
	j.progress(Progress{Stage: stage, Peer: id})
}

func (j *journey) exhausted() bool { return j.failures >= j.n.cfg.MaxAttempts*maxRounds }

// next returns the best host not yet tried, marked as tried: a host already
// running this very task, then placement over the gossip view, then the
// DHT (searched once per Submit, in rendezvous order).
func (j *journey) next(ctx context.Context) (candidate, bool) {
	if j.exhausted() {
		return candidate{}, false
	}
	for {
		c, ok := j.pick(ctx)
		if ok && j.n.verify != nil && j.n.verify.book.Excluded(c.key()) {
			j.tried[c.key()] = true // caught lying: never asked again
			continue
		}
		if ok {
			j.try(c, "trying")
		}
		return c, ok
	}
}

func (j *journey) pick(ctx context.Context) (candidate, bool) {
	n := j.n
	// A host already running this very task takes a duplicate for free,
	// whatever its load or heat: it joins the running computation.
	if ids := n.gossip.running(protocol.TaskKey(j.tc), n.host.ID(), j.tried); len(ids) > 0 {
		return candidate{p: ids[0]}, true
	}
	if n.probing() {
		if c, ok := j.fromProbes(ctx); ok {
			return c, true
		}
	} else if c, ok := j.placeInView(j.tried, n.rng()); ok {
		return c, true
	}
	// This host itself, if it has no beacon yet for Place to rank: a lone
	// host serves its own submissions.
	if self := n.host.ID(); n.serve != nil && n.own.Load() == nil && canRun(n.cfg.Kernel, j.t) == nil && !j.tried[self.String()] {
		return candidate{p: self}, true
	}
	if !j.searched {
		j.searched = true
		j.progress(Progress{Stage: "searching"})
		if hosts, err := n.FindHosts(ctx, providerModel(j.t), 20); err == nil {
			rendezvousOrder(hosts, j.tc)
			j.dhtHosts = hosts
		} else {
			n.log.Debug("DHT search for hosts", "model", j.t.Model, "err", err)
		}
	}
	return j.fromDHT(j.tried)
}

// fromDHT is the first host the DHT named that is not excluded and that
// the view does not show full or refusing (a host the view does not know
// may be tried: it is beyond this node's beacon shards, or quiet).
func (j *journey) fromDHT(exclude map[string]bool) (candidate, bool) {
	if len(j.dhtHosts) == 0 {
		return candidate{}, false
	}
	d := j.n.viewDeps()
	for _, h := range j.dhtHosts {
		id := h.ID.String()
		if exclude[id] {
			continue
		}
		if p, ok := j.n.gossip.pv.lookup(d, id); ok && h.ID != j.n.host.ID() && !p.Available() {
			continue
		}
		return candidate{p: h.ID}, true
	}
	return candidate{}, false
}

// placeInView runs scheduler.Place over the gossip view, corrected by this
// node's own placements since each beacon, and returns the first
// candidate not excluded, with its prediction.
func (j *journey) placeInView(exclude map[string]bool, rng *rand.Rand) (candidate, bool) {
	n := j.n
	req := scheduler.Request{Model: viewModel(j.t), Key: j.tc.Bytes(), Exclude: exclude}
	// The placement view (view.go) holds the gossip view corrected by the
	// ledger and, on a host, its own GPU, ranked like any other (with no
	// link to cross). Place reads it in place, into a pooled buffer.
	buf := candPool.Get().(*[]scheduler.Candidate)
	defer candPool.Put(buf)
	var c candidate
	ok := false
	d := n.viewDeps()
	n.gossip.pv.read(d, func(v scheduler.View, ids []peer.ID) {
		// Only the best candidate is used: AppendPlaceTop finds it without
		// ordering the rest. Round(0) drops the monotonic reading (the
		// view's times are wall-clock, from beacons), which its staleness
		// check then compares without time.Time's slower path.
		*buf = scheduler.AppendPlaceTop((*buf)[:0], v, req, d.now.Round(0), rng, n.schedCfg, 1)
		if len(*buf) > 0 {
			c, ok = candidate{p: ids[(*buf)[0].Index], pred: (*buf)[0]}, true
		}
	})
	clear(*buf) // so the pool holds no peer's strings
	return c, ok
}

// attempt is the task at one host: runAt on its own goroutine, reporting
// on the journey's channel.
type attempt struct {
	c        candidate
	cancel   context.CancelFunc
	accepted bool    // the host sent a queued or progress event
	running  bool    // its latest event was progress: the task started
	etaMs    float64 // from its latest queued event
	pos      int     // its latest queue position
	// heard is when the host last said anything (or the attempt began);
	// suspected is set once it has been silent for SuspectAfter.
	heard     time.Time
	suspected bool
}

type attemptNews struct {
	a    *attempt
	e    protocol.Event // an event, when !done
	done bool
	res  *Result
	err  error
}

// follow runs the task at c until a host returns the result, applying the
// queue hedge of scheduler/hedge.go while it waits in a queue: HedgeDelay
// after the host queued it, if it has not started, the client compares
// the host's ETA for it with Place's best other host; if ShouldMove, it
// offers the task there as well and, as soon as that host accepts it (its
// first queued or progress event), cancels it where it waited by resetting
// the stream, which makes that host drop it. A second host that refuses is
// forgotten and the next is tried; one that accepts after the first host
// started the task is cancelled instead. It returns the host whose answer
// it used, or the last host's error.
//
// A host silent for SuspectAfter (frozen, or its link gone: a live host
// sends a keepalive every protocol.KeepaliveInterval) is suspected: the
// task is offered to the best other host the same way, and moves there as
// soon as that host accepts, even if the silent one had started it. Should
// the silent host speak first, it is trusted again and the usual rules
// apply.
func (j *journey) follow(ctx context.Context, c candidate) (*Result, peer.ID, error) {
	n := j.n
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // whatever attempt is still running
	news := make(chan attemptNews, 4)
	start := func(c candidate) *attempt {
		actx, acancel := context.WithCancel(ctx)
		a := &attempt{c: c, cancel: acancel, heard: time.Now()}
		n.jobs.do(func() {
			defer n.placed(c)()
			req := protocol.TaskRequest{Task: j.t, NoCache: j.noCache, Submitter: j.submitter, Previews: uint32(j.previews)}
			res, err := n.runAt(actx, c.p, req, j.tc, func(e protocol.Event) {
				select {
				case news <- attemptNews{a: a, e: e}:
				case <-actx.Done():
				}
			})
			select {
			case news <- attemptNews{a: a, done: true, res: res, err: err}:
			case <-ctx.Done():
			}
		})
		return a
	}
	cur, alt := start(c), (*attempt)(nil)
	var timer *time.Timer
	var check <-chan time.Time
	arm := func(waitMs float64) {
		if !n.cfg.QueueHedge {
			return
		}
		if timer != nil {
			timer.Stop()
		}
		timer = time.NewTimer(n.schedCfg.HedgeDelay(waitMs))
		check = timer.C
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// waitAt is how long the task queued at a should wait before it starts:
	// Place's prediction, or for a host Place did not rank, what its queued
	// event implies.
	waitAt := func(a *attempt) float64 {
		if a.c.pred.ID != "" {
			return a.c.pred.WaitMs
		}
		slots, _ := j.peerLoad(a.c.p)
		return scheduler.QueuedWaitMs(a.etaMs, a.pos, slots)
	}
	// hedge looks for a better host for the task queued at cur, and offers
	// it there; otherwise it looks again later.
	hedge := func() {
		if alt != nil || cur.running || !cur.accepted {
			return
		}
		exclude := map[string]bool{cur.c.p.String(): true}
		for id := range j.tried {
			exclude[id] = true
		}
		if b, ok := j.placeInView(exclude, n.rng()); ok && !j.exhausted() && n.schedCfg.ShouldMove(cur.etaMs, b.pred) {
			j.try(b, "hedge")
			alt = start(b)
			return
		}
		slots, _ := j.peerLoad(cur.c.p)
		arm(scheduler.QueuedWaitMs(cur.etaMs, cur.pos, slots))
	}
	// suspect offers the task elsewhere when cur has been silent too long.
	suspect := func() {
		if alt != nil || cur.suspected || cur.c.p == n.host.ID() || time.Since(cur.heard) < n.cfg.SuspectAfter || j.exhausted() {
			return
		}
		b, ok := j.elsewhere(cur.c.p)
		if !ok {
			return // nowhere else: EventIdleTimeout decides
		}
		cur.suspected = true
		n.log.Info("host silent: offering the task elsewhere too", "peer", cur.c.p, "task", j.tc, "silent_ms", time.Since(cur.heard).Milliseconds(), "to", b.p)
		j.try(b, "suspect")
		alt = start(b)
	}
	watch := time.NewTicker(max(n.cfg.SuspectAfter/4, 10*time.Millisecond))
	defer watch.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, cur.c.p, ctx.Err()
		case <-watch.C:
			suspect()
		case <-check:
			check = nil
			hedge()
		case m := <-news:
			if m.a != cur && m.a != alt {
				continue // an attempt cancelled earlier
			}
			if m.done {
				switch {
				case m.err == nil:
					return m.res, m.a.c.p, nil
				case m.a == cur && alt == nil:
					return nil, cur.c.p, m.err
				case m.a == alt:
					// The other host refused (an alt that accepted would
					// be cur by now): stay, and look again.
					alt = nil
					j.failed(m.a.c.p, m.err)
					hedge()
				default:
					// cur failed while alt was being offered: alt carries on.
					j.failed(cur.c.p, m.err)
					cur, alt = alt, nil
					if cur.accepted && !cur.running {
						arm(waitAt(cur))
					}
				}
				continue
			}
			a := m.a
			if m.e.Type == protocol.EventPreview {
				// A picture for the caller, not news about where the task
				// stands: the attempt's state (accepted, running, ETA) and
				// the hedge are the business of queued and progress events.
				j.progress(Progress{Stage: "preview", Peer: a.c.key(),
					Event: protocol.Event{Step: m.e.Step, Total: m.e.Total}, Preview: m.e.Data})
				continue
			}
			a.heard, a.suspected = time.Now(), false
			first := !a.accepted
			a.accepted = true
			a.running = m.e.Type == protocol.EventProgress
			stage := "running"
			if !a.running {
				stage = "queued"
				a.pos, a.etaMs = int(m.e.Position), float64(m.e.EtaMs)
				if a.etaMs == 0 {
					// A host that sends no ETA: estimate it from its beacon.
					slots, serviceMs := j.peerLoad(a.c.p)
					a.etaMs = scheduler.QueuedETAMs(a.pos, slots, serviceMs)
				}
			}
			j.progress(Progress{Stage: stage, Peer: a.c.key(), Event: m.e})
			switch {
			case a == cur && a.running && alt != nil:
				// It started here while another host was being asked.
				alt.cancel()
				alt = nil
			case a == cur && first && !a.running:
				arm(waitAt(a))
			case a == alt && first:
				if cur.running && !cur.suspected {
					alt.cancel()
					alt = nil
					continue
				}
				j.progress(Progress{Stage: "moved", Peer: alt.c.key(), Event: protocol.Event{Message: "left the queue at " + cur.c.key()}})
				cur.cancel()
				cur, alt = alt, nil
				n.stats.moved.Add(1)
				if !cur.running {
					arm(waitAt(cur))
				}
			}
		}
	}
}

// elsewhere is the best host for the task other than p and this round's
// tried ones, without a new DHT search: Place over the view, then hosts
// the DHT already named, then this host itself.
func (j *journey) elsewhere(p peer.ID) (candidate, bool) {
	exclude := map[string]bool{p.String(): true}
	for id := range j.tried {
		exclude[id] = true
	}
	if c, ok := j.placeInView(exclude, j.n.rng()); ok {
		return c, true
	}
	if c, ok := j.fromDHT(exclude); ok {
		return c, true
	}
	if self := j.n.host.ID(); j.n.serve != nil && j.n.own.Load() == nil && serves(j.n.cfg.Kernel, j.t.Model) && !exclude[self.String()] {
		return candidate{p: self}, true
	}
	return candidate{}, false
}

// peerLoad returns p's slots and service time for the task's model, as its
// beacon says (1 slot and the default service time when unknown).
func (j *journey) peerLoad(p peer.ID) (slots int, serviceMs float64) {
	slots, serviceMs = 1, j.n.schedCfg.DefaultServiceMs
	if p == j.n.host.ID() {
		return slots, serviceMs // the view's own entry is placement's alone
	}
	if ps, ok := j.n.gossip.pv.lookup(j.n.viewDeps(), p.String()); ok {
		slots = max(1, ps.Slots)
		if ms, ok := ps.ServiceMs[j.t.Model]; ok && ms > 0 {
			serviceMs = ms
		}
	}
	return slots, serviceMs
}

// rng returns a source of randomness for one placement.
func (n *Node) rng() *rand.Rand { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }

// runAt sends t to one host and reads its events until the result.
//
// onEvent sees every queued, progress and preview event; previews (at most
// protocol.MaxPreviews) are asked for with the task. Cancelling ctx resets the
// stream, which tells the host that this client no longer waits: it drops
// the task from its queue if nobody else waits for it.
func (n *Node) runAt(ctx context.Context, p peer.ID, req protocol.TaskRequest, tc cid.Cid, onEvent func(protocol.Event)) (*Result, error) {
	req.Previews = min(req.Previews, protocol.MaxPreviews)
	req.NoCache = req.NoCache || req.Verify
	ctx, cancel := context.WithTimeout(ctx, n.cfg.TaskTimeout)
	defer cancel()
	if p == n.host.ID() && n.serve != nil {
		r, err := n.serve.local(ctx, req, tc, onEvent)
		if err != nil {
			return nil, err
		}
		return resultFrom(r, tc, p, CacheMiss), nil
	}
	n.ensureAddrs(ctx, p)
	// The connection manager spares the host's connection while the task
	// runs on it.
	tag := taskTag()
	n.host.ConnManager().Protect(p, tag)
	defer n.host.ConnManager().Unprotect(p, tag)
	if cs := n.session(ctx, p); cs != nil {
		res, err := cs.run(ctx, req, tc, onEvent)
		if !errors.Is(err, errNoSession) {
			return res, err
		}
		// The host's protocols changed since identify said it served
		// sessions: this task, and the next ones, on streams of their own.
	}
	// Through a relay too, when that is how the host is reached (node/reach).
	st, err := n.host.NewStream(reach.AllowRelayed(ctx), p, libp2pProto(protocol.TaskProtocol))
	if err != nil && n.host.Network().Connectedness(p) != network.Connected && n.refreshAddrs(ctx, p) {
		// The addresses this node had may be stale or only the direct ones
		// (a host behind a NAT gets its relay address later): with fresh
		// ones from the DHT, once more.
		st, err = n.host.NewStream(reach.AllowRelayed(ctx), p, libp2pProto(protocol.TaskProtocol))
	}
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
	// The write side stays open: a reset, not a half-close, is how the host
	// learns at once that the client has gone (see the protocol spec).
	// A 1.0 host rejects the previews key as it does submitter; both are
	// omitted when empty, so a plain request still reaches it.
	if err := protocol.WriteMsg(st, req); err != nil {
		st.Reset()
		return nil, fmt.Errorf("sending task: %w", err)
	}
	r := eventReaders.Get().(*bufio.Reader)
	r.Reset(st)
	defer func() {
		r.Reset(nil) // no reference to the stream stays in the pool
		eventReaders.Put(r)
	}()
	res, err := n.readAnswer(ctx, p, p.String(), tc, func(idle time.Time) (*protocol.Event, error) {
		_ = st.SetReadDeadline(idle)
		body, err := protocol.ReadFrame(r, protocol.MaxEventBytes)
		if err != nil {
			return nil, err
		}
		e, err := protocol.DecodeEvent(body)
		if err != nil {
			return nil, fmt.Errorf("host sent a bad event: %w", err)
		}
		return e, nil
	}, onEvent)
	if err != nil {
		st.Reset()
	}
	return res, err
}

// readAnswer reads a host's answer to one request, its events one at a time
// from next, which waits for one at most until the time it is given: a host
// sends something at least every keepaliveEvery, and one silent for
// EventIdleTimeout is gone (the task moves elsewhere). onEvent sees the
// queued, progress and preview events; the answer is the verified result,
// or the host's error.
// sender is p as a string, as manifests name hosts.
func (n *Node) readAnswer(ctx context.Context, p peer.ID, sender string, tc cid.Cid, next func(idle time.Time) (*protocol.Event, error), onEvent func(protocol.Event)) (*Result, error) {
	sent := time.Now()
	var blocks [][]byte
	for i := 0; i < protocol.MaxEventsPerTask; i++ {
		idle := time.Now().Add(n.cfg.EventIdleTimeout)
		if dl, ok := ctx.Deadline(); ok && dl.Before(idle) {
			idle = dl
		}
		e, err := next(idle)
		if err != nil {
			return nil, fmt.Errorf("reading from host: %w", err)
		}
		if i == 0 && e.Type != protocol.EventBlock {
			// A host answers a request at once (queued, first step, or a
			// refusal): about one round trip, which placement counts.
			n.host.Peerstore().RecordLatency(p, time.Since(sent))
		}
		switch e.Type {
		case protocol.EventError:
			return nil, e.Err()
		case protocol.EventBlock:
			if len(blocks) == protocol.MaxOutputs {
				return nil, errors.New("host sent more blocks than a manifest may name")
			}
			blocks = append(blocks, e.Data)
		case protocol.EventResult:
			res, err := n.acceptResult(ctx, tc, e.Manifest, blocks, p, sender)
			if err != nil {
				return nil, err
			}
			if !e.Cached {
				res.Cache = CacheMiss
			}
			return res, nil
		default:
			onEvent(*e)
		}
	}
	return nil, errors.New("host sent too many events")
}

// eventReaders holds the readers runAt reads a host's events with: one a
// task, only until its result.
var eventReaders = sync.Pool{New: func() any { return bufio.NewReader(nil) }}

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

// refreshAddrs looks p up on the DHT and reports whether that gave an
// address this node did not have; the swarm's dial backoff is cleared for
// p so the new ones are tried at once.
// It asks at most once a minute per peer, and waits at most a second: a
// host that is gone must not slow the move to the next.
func (n *Node) refreshAddrs(ctx context.Context, p peer.ID) bool {
	now := time.Now()
	if last, ok := n.refreshed.Load(p); ok && now.Sub(last.(time.Time)) < time.Minute {
		return false
	}
	n.refreshed.Store(p, now)
	ctx, cancel := context.WithTimeout(ctx, min(n.cfg.FindTimeout, time.Second))
	defer cancel()
	ai, err := n.dht.FindPeer(ctx, p)
	if err != nil {
		return false
	}
	known := n.host.Peerstore().Addrs(p)
	fresh := false
	for _, a := range ai.Addrs {
		if !slices.ContainsFunc(known, a.Equal) {
			fresh = true
		}
	}
	if !fresh {
		return false
	}
	n.host.Peerstore().AddAddrs(p, ai.Addrs, 10*time.Minute)
	if sw, ok := n.host.Network().(interface{ Backoff() *swarm.DialBackoff }); ok {
		sw.Backoff().Clear(p)
	}
	return true
}

// acceptResult verifies a result received from a peer (manifest signature,
// TaskCID, every block against its CID) and stores it. It does not provide
// it: its host or provider does, and this node only once it serves it to
// someone (announce.go).
// sender is from as a string.
func (n *Node) acceptResult(ctx context.Context, tc cid.Cid, mbytes []byte, blocks [][]byte, from peer.ID, sender string) (*Result, error) {
	// Straight from its host, the result's maker is known from the
	// secure channel: its signature is checked before the result is
	// served to anyone else (servable), not on this client's hot path.
	m, err := protocol.DecodeManifestFrom(mbytes, sender)
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
	// DecodeManifestFrom checked that mbytes encode m. Not synced: this
	// node announces it only later, if ever, and syncs then (announce).
	if _, err := n.store.PutReceived(ctx, m, mbytes, blocks); err != nil {
		return nil, fmt.Errorf("storing result: %w", err)
	}
	res := &Result{TaskCID: tc, ResultCID: protocol.ManifestCID(mbytes), Manifest: m, Blocks: blocks, Provider: from, Cache: CacheNetwork}
	if m.Host == sender {
		res.Host = from
	} else {
		res.Host, _ = peer.Decode(m.Host)
	}
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
	t, tc, err := task.NormalizeCID()
	if err != nil {
		return nil, err
	}
	req := protocol.TaskRequest{Task: t, NoCache: opts.NoCache, Submitter: opts.Submitter, Previews: uint32(max(opts.Previews, 0))}
	res, err := n.runAt(ctx, p, req, tc, func(e protocol.Event) {
		if e.Type == protocol.EventPreview && opts.Progress != nil {
			opts.Progress(Progress{Stage: "preview", Peer: p.String(), Event: protocol.Event{Step: e.Step, Total: e.Total}, Preview: e.Data})
		}
	})
	if err != nil {
		return nil, err
	}
	res.Elapsed = time.Since(start)
	return res, nil
}
