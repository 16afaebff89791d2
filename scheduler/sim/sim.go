package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
)

// task is one submitted task. A task that joined another (a cache-less
// duplicate of one in flight) is a waiter of its primary and finishes with it.
type task struct {
	arrival   float64
	work      float64 // seconds on a speed-1 host at full clock
	remaining float64 // work left, as of the host's tLast
	started   float64
	rtt       float64 // round trips spent on attempts
	prompt    uint64
	key       uint64
	host      int32 // -1 when not on a host
	epoch     uint32
	ver       uint32 // bumped to cancel a scheduled completion
	client    int32
	avoid     int32 // host a hedge moved the task from, -1 if none
	waiters   []int32
	done      bool
	measured  bool
}

// client is one independent scheduler.
type client struct {
	rng   *rand.Rand
	fixed int // ViewFixed: the first host of this client's window
	// view is, with a full view, this client's copy of every host's last
	// beacon, charged with its own placements since; with a sampled view it
	// is the buffer one decision's sample is built in, vidx its host indices.
	view  scheduler.View
	vidx  []int32
	own   []ownMark // sampled view: own placements since each host's beacon
	cands []scheduler.Candidate
	rr    int
	// inflight maps a key to this client's task for it, so an identical
	// submission joins it (node-side coalescing).
	inflight map[uint64]int32
	// LoadProbe: the client's peer-sampling view, its connections to
	// hosts, and the size of conns above which idle ones are closed.
	pview     []scheduler.Descriptor
	mem       *scheduler.ProbeMemory
	conns     map[int32]conn
	connPrune int
}

type ownMark struct {
	seq     uint32
	n       uint32
	refused bool
}

type cacheEntry struct {
	prompt uint64
	gpuS   float64
}

// lognormalSigma is σ of the lognormal service distribution (coefficient of
// variation ≈ 0.53): generation time varies with steps and size.
const lognormalSigma = 0.5

// maxAttempts bounds the hosts one dispatch round offers a task to before
// the client backs off for RetryS.
const maxAttempts = 16

type sim struct {
	cfg   Config
	place scheduler.Config
	q     eventQueue
	now   float64
	base  time.Time

	profs      []Profile
	hosts      []host
	tasks      []task
	clients    []client
	models     []string
	lastBeacon []float64             // time of each host's last beacon
	beaconSeq  []uint32              // beacons each host has published; 0: none yet
	beacons    []scheduler.PeerState // sampled views: each host's last beacon
	fullView   bool
	staleness  float64
	// exact: BeaconInterval 0, clients see every host as it is when they
	// decide.
	exact bool
	// prefill is the number of tasks the hosts started with (Steady), the
	// first of s.tasks; prefillDone how many of them completed.
	prefill, prefillDone int

	rate             float64
	arrivalsDone     bool
	lastArrival      float64
	completed        int
	times            []float64
	cache            map[uint64]cacheEntry
	running          map[uint64]int // key → primaries admitted on hosts
	prompts          uint64
	warmupIdx        int
	rngArr, rngWork  *rand.Rand
	rngPop, rngChurn *rand.Rand
	rngBeacon        *rand.Rand
	oracleFree       []float64
	oracle           *oracleIndex // exponential service only
	pr               *prober      // LoadProbe only
	rngProbe         *rand.Rand   // hosts' and clients' draws of LoadProbe
	waitSum, runSum  float64
	runs             int

	res Result
}

// stream derives an independent random stream from the seed, so that every
// policy sees the same hosts, arrivals and sizes (common random numbers).
func stream(seed uint64, id uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15*(id+1)))
}

// Run simulates cfg and returns its result. It is deterministic in cfg
// (WallS aside).
func Run(cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	s := newSim(cfg)
	s.loop()
	s.summarise()
	s.res.WallS = time.Since(start).Seconds()
	if s.res.Completed != s.res.Tasks {
		return &s.res, fmt.Errorf("simulation lost tasks: %d arrived, %d completed", s.res.Tasks, s.res.Completed)
	}
	return &s.res, nil
}

func newSim(cfg Config) *sim {
	s := &sim{
		cfg:       cfg,
		place:     cfg.Place,
		base:      time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		models:    []string{protocol.DefaultModel},
		rngArr:    stream(cfg.Seed, 1),
		rngWork:   stream(cfg.Seed, 2),
		rngPop:    stream(cfg.Seed, 3),
		rngChurn:  stream(cfg.Seed, 4),
		rngBeacon: stream(cfg.Seed, 5),
		rngProbe:  stream(cfg.Seed, 8),
		cache:     map[uint64]cacheEntry{},
		running:   map[uint64]int{},
	}
	if floor := time.Duration(3 * cfg.BeaconInterval * float64(time.Second)); s.place.MaxStaleness < floor {
		s.place.MaxStaleness = floor
	}
	s.staleness = s.place.MaxStaleness.Seconds()
	s.exact = cfg.BeaconInterval == 0
	if s.exact {
		s.staleness = math.Inf(1)
	}
	s.res.Policy, s.res.Hosts, s.res.Clients = cfg.Policy, cfg.Hosts, cfg.Clients

	s.buildHosts()
	capacity := 0.0
	for i := range s.hosts {
		capacity += float64(s.hosts[i].slots) * s.hosts[i].speed / cfg.MeanServiceS
	}
	s.rate = cfg.Rate
	if s.rate == 0 {
		s.rate = cfg.Load * capacity
	}
	s.res.Load = s.rate / capacity
	s.res.RatePerS = s.rate
	if cfg.Tasks > 0 {
		s.tasks = make([]task, 0, cfg.Tasks)
	}

	s.fullView = cfg.ViewSize == 0 || cfg.Hosts <= cfg.ViewSize
	s.lastBeacon = make([]float64, cfg.Hosts)
	s.beaconSeq = make([]uint32, cfg.Hosts)
	probing := cfg.Policy == Gpunet && cfg.LoadInfo == LoadProbe
	if cfg.Policy == Gpunet && !s.fullView && !probing {
		s.beacons = make([]scheduler.PeerState, cfg.Hosts)
	}
	s.clients = make([]client, cfg.Clients)
	for c := range s.clients {
		cl := &s.clients[c]
		cl.rng = stream(cfg.Seed, 100+uint64(c))
		if cfg.Hosts > 0 {
			cl.fixed = c * cfg.ViewSize % cfg.Hosts
		}
		cl.inflight = map[uint64]int32{}
		if cfg.Policy != Gpunet || probing {
			continue
		}
		if s.fullView {
			cl.view = make(scheduler.View, cfg.Hosts)
		} else {
			cl.view = make(scheduler.View, 0, cfg.ViewSize)
			cl.vidx = make([]int32, 0, cfg.ViewSize)
			cl.own = make([]ownMark, cfg.Hosts)
		}
	}
	if cfg.Policy == Oracle {
		s.oracleFree = make([]float64, 0, 16)
	}
	if probing {
		s.pr = newProber(s)
	}

	if cfg.Steady {
		s.prefillQueues()
	}
	if cfg.Tasks > 0 {
		s.warmupIdx = s.prefill + int(cfg.Warmup*float64(cfg.Tasks))
	}

	// Every host beacons at time 0 (the swarm was running before the
	// simulation starts), then on its own jittered schedule.
	for i := range s.hosts {
		s.publish(int32(i))
		if !s.exact {
			s.q.push(s.rngBeacon.Float64()*cfg.BeaconInterval, evBeacon, int32(i), 0)
		}
		if cfg.Churn > 0 {
			s.q.push(s.rngChurn.ExpFloat64()*60/cfg.Churn, evLeave, int32(i), 0)
		}
		s.hosts[i].rethermal(s, 0)
	}
	if cfg.Policy == Oracle && cfg.Service == ServiceExp && !oracleScan {
		s.oracle = newOracleIndex(s)
	}
	s.q.push(s.rngArr.ExpFloat64()/s.rate, evArrival, 0, 0)
	return s
}

// prefillQueues starts each host with as many tasks as the policy's steady
// state draws (Config.Steady): the first running, with all its work ahead
// of it (exact: exponential service is memoryless), the rest queued.
func (s *sim) prefillQueues() {
	rng := stream(s.cfg.Seed, 6)
	d := 1
	if s.cfg.Policy == Pod {
		d = s.cfg.D
	}
	for i := range s.hosts {
		h := &s.hosts[i]
		u := rng.Float64()
		for n := 1; u < SteadyTail(s.cfg.Load, d, n); n++ {
			ti := int32(len(s.tasks))
			s.tasks = append(s.tasks, task{host: -1, avoid: -1, work: rng.ExpFloat64() * s.cfg.MeanServiceS})
			h.admit(s, ti, false)
			if len(h.running) < h.slots {
				h.start(s, 0, ti)
			} else {
				h.queue = append(h.queue, ti)
			}
		}
	}
	s.prefill = len(s.tasks)
}

// oracleScan forces the oracle's linear scan; a test compares the two.
var oracleScan = false

// textbookProfile is every host of a Textbook run: one slot at speed 1.
// Its thermal figures are a desktop's, unused with the heat model off.
var textbookProfile = Profile{Name: "textbook", Share: 1, Slots: 1, Speed: 1, MemMB: 24 << 10,
	IdleW: 25, MaxW: 350, RthCPerW: 0.14, TauS: 60,
	SlowdownC: 88, LimitC: 83, LimitSpreadC: 5, AmbientC: [2]float64{20, 32}}

func (s *sim) buildHosts() {
	rng := stream(s.cfg.Seed, 0)
	s.profs = Profiles()
	if s.cfg.Textbook {
		s.profs = []Profile{textbookProfile}
	}
	profs := s.profs
	s.hosts = make([]host, s.cfg.Hosts)
	for i := range s.hosts {
		pi := pickProfile(profs, rng.Float64())
		p := &profs[pi]
		h := &s.hosts[i]
		h.idx, h.prof, h.online = int32(i), p, true
		h.id = fmt.Sprintf("h%d.0", i)
		h.slots = p.Slots
		m := 1.0
		if s.cfg.Hetero > 0 {
			m = math.Exp(s.cfg.Hetero * rng.NormFloat64())
			if rng.Float64() < 0.05 {
				m /= 4
			}
		}
		h.speed = p.Speed * m
		h.rtt = (5 + 75*rng.Float64()) / 1000
		if s.cfg.Textbook {
			h.rtt = 0
		}
		// The host's own measurement of its mean service time, as its beacon
		// would report it.
		h.svcMs = map[string]float64{protocol.DefaultModel: 1000 * s.cfg.MeanServiceS / h.speed}
		h.memMB = p.MemMB - 2048
		h.amb = p.AmbientC[0] + (p.AmbientC[1]-p.AmbientC[0])*rng.Float64()
		h.rth, h.tau = p.RthCPerW, p.TauS
		h.limit = p.LimitC - p.LimitSpreadC*rng.Float64()
		h.inflight = nil
		// Start warm, as if the swarm had been running at the offered load,
		// but below the thresholds.
		h.temp = min(h.tinfAt(min(s.cfg.Load, 1)), h.limit-GovHystC-1)
		h.peak = h.temp
	}
}

// wall turns simulated seconds into the time.Time Place works with.
func (s *sim) wall(t float64) time.Time { return s.base.Add(time.Duration(t * float64(time.Second))) }

func (s *sim) loop() {
	for s.q.len() > 0 {
		e := s.q.pop()
		s.now = e.t
		s.res.Events++
		switch e.kind {
		case evArrival:
			s.arrive()
		case evComplete:
			t := &s.tasks[e.a]
			if t.ver != e.ver || t.host < 0 {
				continue
			}
			h := &s.hosts[t.host]
			if !h.online || h.epoch != t.epoch {
				continue
			}
			h.complete(s, s.now, e.a)
		case evThermal:
			h := &s.hosts[e.a]
			if h.online && h.thermVer == e.ver {
				h.onThermal(s, s.now)
			}
		case evBeacon:
			h := &s.hosts[e.a]
			if !h.online || h.epoch != e.ver || (s.pr != nil && s.arrivalsDone) {
				// Probing does not read beacons; they are only counted,
				// over the arrivals, for what gossip would cost.
				continue
			}
			s.publish(e.a)
			jitter := 0.75 + 0.5*s.rngBeacon.Float64()
			s.q.push(s.now+s.cfg.BeaconInterval*jitter, evBeacon, e.a, e.ver)
		case evRetry:
			if !s.tasks[e.a].done {
				s.dispatch(e.a)
			}
		case evLeave:
			h := &s.hosts[e.a]
			if !h.online || h.epoch != e.ver {
				continue
			}
			h.leave(s, s.now)
			s.changed(h)
			s.res.HostsLeft++
			s.q.push(s.now+s.rngChurn.ExpFloat64()*s.cfg.RejoinS, evJoin, e.a, 0)
		case evJoin:
			s.join(e.a)
		case evHedge:
			s.hedge(e.a, e.ver)
		case evChange:
			h := &s.hosts[e.a]
			if h.online && h.epoch == e.ver && h.changePending {
				h.changePending = false
				s.changed(h)
			}
		case evHit:
			s.complete(e.a, 0)
		case evProbed:
			s.probed(e.a)
		case evShuffle:
			s.shuffle(e.a, e.ver)
		case evNotice:
			s.noticed(e.a)
		}
		if s.arrivalsDone && (s.completed == len(s.tasks) || s.now > s.lastArrival+drainLimit*s.cfg.MeanServiceS) {
			break
		}
	}
}

// drainLimit bounds, in mean service times, how long the run goes on after
// the last arrival: a swarm that cannot finish its tasks by then (every
// host too hot for good, say) ends the run, and Run reports the tasks lost.
// A test lowers it to see a lost task fail fast.
var drainLimit = 100000.0

// join brings host i back as a new peer: a new ID, cold, empty.
func (s *sim) join(i int32) {
	h := &s.hosts[i]
	h.epoch++
	h.id = fmt.Sprintf("h%d.%d", i, h.epoch)
	h.online = true
	h.tLast = s.now
	h.temp = h.tinfAt(0)
	h.hot, h.hw = false, false
	h.inflight = nil
	s.publish(i)
	if !s.exact {
		s.q.push(s.now+s.cfg.BeaconInterval*(0.75+0.5*s.rngBeacon.Float64()), evBeacon, i, h.epoch)
	}
	s.q.push(s.now+s.rngChurn.ExpFloat64()*60/s.cfg.Churn, evLeave, i, h.epoch)
	h.rethermal(s, s.now)
	s.changed(h)
	if s.pr != nil {
		s.probeJoined(h)
	}
}

// publish is host i's beacon reaching every client. Propagation delay is
// not modelled: staleness comes from the interval (none in exact state).
func (s *sim) publish(i int32) {
	h := &s.hosts[i]
	h.advance(s, s.now)
	s.lastBeacon[i] = s.now
	s.beaconSeq[i]++
	s.res.Beacons++
	h.pubFree, h.pubAccepting = h.signature(s)
	if s.cfg.Policy != Gpunet || s.pr != nil {
		return
	}
	ps := h.beacon(s)
	if s.fullView {
		for c := range s.clients {
			s.clients[c].view[i] = ps
		}
	} else {
		s.beacons[i] = ps
	}
}

// changed is called after anything that may change what host h would
// beacon. With ChangeBeacons, a change of its free slots or of whether it
// accepts is published at once, or MinBeaconGapS after its last beacon,
// whichever is later: the "on significant change" beacons of the design.
func (s *sim) changed(h *host) {
	if s.oracle != nil {
		s.oracle.update(s, h)
	}
	if s.pr != nil && s.pr.probers != nil {
		s.notify(h)
	}
	if s.exact {
		return // clients read hosts as they are when they decide (exactView)
	}
	if !s.cfg.ChangeBeacons || !h.online || h.changePending {
		return
	}
	if f, a := h.signature(s); f == h.pubFree && a == h.pubAccepting {
		return
	}
	if at := s.lastBeacon[h.idx] + s.cfg.MinBeaconGapS; at > s.now {
		h.changePending = true
		s.q.push(at, evChange, h.idx, h.epoch)
		return
	}
	s.publish(h.idx)
}

// signature is what makes a beacon worth sending early.
func (h *host) signature(s *sim) (free int, accepting bool) {
	return max(h.slots-len(h.running)-len(h.queue), 0), h.accepting(s)
}

func (h *host) accepting(s *sim) bool {
	return !(s.cfg.Thermal && h.hot) && !h.queueFull(s)
}

// queueFull reports whether the host's queue refuses another task.
func (h *host) queueFull(s *sim) bool {
	return s.cfg.QueueCap != Unbounded && len(h.queue) >= s.cfg.QueueCap
}

// viewNow is the time clients see: now, or in exact state a fixed time
// that every beacon also carries, so that Place sees every beacon as
// fresh (age 0: nothing to drain, nothing stale) however long ago the
// host last changed.
func (s *sim) viewNow() time.Time {
	if s.exact {
		return s.base
	}
	return s.wall(s.now)
}

// beacon is what host h publishes about itself now.
func (h *host) beacon(s *sim) scheduler.PeerState {
	ps := scheduler.PeerState{
		ID:        h.id,
		Models:    s.models,
		FreeMemMB: h.memMB,
		Accepting: h.accepting(s),
		Slots:     h.slots,
		Busy:      len(h.running),
		QueueLen:  len(h.queue),
		ServiceMs: h.svcMs,
		Speed:     1,
		RTTMs:     h.rtt * 1000,
		Updated:   s.viewNow(),
	}
	if s.cfg.Thermal {
		ps.TempC, ps.SlowdownC, ps.LimitC = h.temp, h.prof.SlowdownC, h.limit
		if c := h.clock(s); c < 1 {
			ps.Throttled, ps.Speed = true, 0.5
		}
		ps.HeatPerTaskC = h.heatPerTask(s)
	}
	return ps
}

// heatPerTask is the host's own prediction of how much warmer it will be
// when one more task, started behind its queue, has run for a long time.
func (h *host) heatPerTask(s *sim) float64 {
	u1, d := scheduler.HeatHorizon(len(h.running)+len(h.queue), h.slots, s.cfg.MeanServiceS/h.speed)
	ti := h.tinfAt(u1)
	end := ti + (h.temp-ti)*math.Exp(-d/h.tau)
	// Positive means "predicted": a prediction of no rise is sent as a
	// small one rather than as 0, which means "unknown".
	return max(end-h.temp, 0.05)
}

func (s *sim) arrive() {
	ti := int32(len(s.tasks))
	cfg := &s.cfg
	t := task{arrival: s.now, host: -1, avoid: -1, client: s.submitter()}
	switch cfg.Service {
	case ServiceExp:
		t.work = s.rngWork.ExpFloat64() * cfg.MeanServiceS
	case ServiceFixed:
		t.work = cfg.MeanServiceS
	case ServiceLognormal:
		const sigma = lognormalSigma
		t.work = cfg.MeanServiceS * math.Exp(sigma*s.rngWork.NormFloat64()-sigma*sigma/2)
	}
	// Prompt: a repeat of an earlier one (Zipf by age) or a new one.
	if cfg.Repeat > 0 && s.prompts > 0 && s.rngPop.Float64() < cfg.Repeat {
		t.prompt = uint64(zipfRank(s.rngPop, cfg.Zipf, int(s.prompts)))
	} else {
		s.prompts++
		t.prompt = s.prompts
	}
	t.key = keyOf(t.prompt)
	if cfg.Tasks > 0 {
		t.measured = int(ti) >= s.warmupIdx
	} else {
		t.measured = s.now >= cfg.Warmup*cfg.Duration
	}
	if s.pr != nil && t.measured && !s.pr.warm.set {
		s.pr.snapshot(s, &s.pr.warm)
	}
	s.tasks = append(s.tasks, t)

	s.lastArrival = s.now
	next := s.now + s.rngArr.ExpFloat64()/s.rate
	if (cfg.Tasks > 0 && len(s.tasks)-s.prefill >= cfg.Tasks) || (cfg.Duration > 0 && next > cfg.Duration) {
		s.arrivalsDone = true
		if s.pr != nil {
			s.pr.snapshot(s, &s.pr.last)
		}
	} else {
		s.q.push(next, evArrival, 0, 0)
	}

	if cfg.Repeat > 0 {
		tp := &s.tasks[ti]
		if e, ok := s.cache[tp.key]; ok {
			if e.prompt == tp.prompt {
				s.res.CacheHits++
				s.res.GPUSSaved += e.gpuS
				s.q.push(s.now+cfg.HitLatencyS, evHit, ti, 0)
				return
			}
			s.res.WrongHits++
		}
		cl := &s.clients[tp.client]
		if p, ok := cl.inflight[tp.key]; ok {
			if s.tasks[p].prompt == tp.prompt {
				s.coalesce(p, ti)
				return
			}
			s.res.WrongHits++
		} else {
			cl.inflight[tp.key] = ti
		}
	}
	s.dispatch(ti)
}

// submitter draws the client of a new task: uniformly, or with HeavyClient
// client 0 takes that share and the others split the rest evenly.
func (s *sim) submitter() int32 {
	f, n := s.cfg.HeavyClient, s.cfg.Clients
	if f <= 0 {
		return int32(s.rngArr.IntN(n))
	}
	u := s.rngArr.Float64()
	if u < f {
		return 0
	}
	return int32(min(1+int((u-f)/(1-f)*float64(n-1)), n-1))
}

// coalesce makes task w wait for primary p's result.
func (s *sim) coalesce(p, w int32) {
	s.tasks[p].waiters = append(s.tasks[p].waiters, w)
	s.res.Coalesced++
}

// finish records primary ti's run and completes it and its waiters.
func (s *sim) finish(now float64, ti int32) {
	t := &s.tasks[ti]
	ran := now - t.started
	if t.measured {
		s.waitSum += t.started - t.arrival
		s.runSum += ran
		s.runs++
	}
	if s.cfg.Repeat > 0 {
		s.cache[t.key] = cacheEntry{prompt: t.prompt, gpuS: ran}
	}
	s.complete(ti, ran)
}

// complete finishes task ti at s.now; ran is the GPU time of the run whose
// result it gets, counted as saved for every waiter.
func (s *sim) complete(ti int32, ran float64) {
	t := &s.tasks[ti]
	if t.done {
		s.res.DoubleFinish++
		return
	}
	t.done = true
	s.completed++
	if int(ti) < s.prefill {
		s.prefillDone++
	}
	if t.measured {
		s.times = append(s.times, s.now-t.arrival+t.rtt)
	}
	if cl := &s.clients[t.client]; cl.inflight[t.key] == ti {
		delete(cl.inflight, t.key)
	}
	for _, w := range t.waiters {
		s.res.GPUSSaved += ran
		s.complete(w, ran)
	}
	t.waiters = nil
}

// offer hands task ti to host hi and books the outcome.
func (s *sim) offer(ti, hi int32) int {
	h := &s.hosts[hi]
	s.res.Attempts++
	s.tasks[ti].rtt += h.rtt
	out := h.offer(s, s.now, ti)
	switch out {
	case refusedBusy:
		s.res.RefusedBusy++
	case refusedHot:
		s.res.RefusedHot++
	case refusedGone:
		s.res.RefusedGone++
	}
	return out
}

func placed(out int) bool { return out == accepted || out == joined }

// dispatch runs the policy for task ti; when every choice refuses, the
// client tries again after RetryS.
func (s *sim) dispatch(ti int32) {
	var ok bool
	switch s.cfg.Policy {
	case Gpunet:
		if s.pr != nil {
			ok = s.probe(ti, false, 1, nil) // decided when the replies are in
		} else {
			ok = s.dispatchGpunet(ti)
		}
	case Random:
		ok = s.dispatchRandom(ti)
	case RoundRobin:
		ok = s.dispatchRoundRobin(ti)
	case Pod:
		ok = s.dispatchPod(ti)
	case Oracle:
		ok = s.dispatchOracle(ti)
	}
	if !ok {
		s.res.Retries++
		s.q.push(s.now+s.cfg.RetryS, evRetry, ti, 0)
	}
}

func (s *sim) known(hi int) bool {
	return s.beaconSeq[hi] > 0 && s.now-s.lastBeacon[hi] <= s.staleness
}

func (s *sim) dispatchGpunet(ti int32) bool {
	if s.offerAll(ti, s.placeGpunet(ti)) {
		return true
	}
	// A fixed view that refused everything: the node looks beyond its
	// shard on the DHT, which knows no load, so any host will do.
	return s.cfg.ViewFixed && !s.fullView && s.dispatchRandom(ti)
}

// placeGpunet runs scheduler.Place for task ti on its client's view. The
// candidates live in the client's buffer until its next call.
func (s *sim) placeGpunet(ti int32) []scheduler.Candidate {
	t := &s.tasks[ti]
	cl := &s.clients[t.client]
	sum := promptCID(t.prompt)
	req := scheduler.Request{Model: protocol.DefaultModel, MemMB: 4096, Key: sum[:]}
	if t.avoid >= 0 {
		req.Exclude = map[string]bool{s.hosts[t.avoid].id: true}
	}
	view := cl.view
	switch {
	case !s.fullView:
		view = s.sampleView(cl)
	case s.exact:
		s.exactView(cl)
	}
	cl.cands = scheduler.AppendPlace(cl.cands[:0], view, req, s.viewNow(), cl.rng, s.place)
	return cl.cands
}

// exactView sets client cl's full view to every host as it is now, for
// exact state (BeaconInterval 0). Publishing on every change is not enough:
// a host's temperature changes between events, and an idle host that was
// too hot when it last changed would stay too hot in every view. A host
// that left is not accepting.
func (s *sim) exactView(cl *client) {
	for i := range s.hosts {
		h := &s.hosts[i]
		if !h.online {
			cl.view[i].Accepting = false
			continue
		}
		h.advance(s, s.now)
		cl.view[i] = h.beacon(s)
	}
}

// offerAll walks the candidates as the node's dispatcher does: the first
// that accepts gets the task; a refusal moves to the next.
func (s *sim) offerAll(ti int32, cands []scheduler.Candidate) bool {
	t := &s.tasks[ti]
	cl := &s.clients[t.client]
	for i, c := range cands {
		if i == maxAttempts {
			break
		}
		hi := s.hostOf(cl, c)
		out := s.offer(ti, hi)
		switch out {
		case accepted:
			// Count our own placement until the host's next beacon does
			// (in exact state, that beacon has already come).
			switch {
			case s.exact:
			case s.fullView:
				cl.view[hi].Charge()
			default:
				s.mark(cl, hi).n++
			}
			s.queuedHedge(ti, hi, c.WaitMs)
			return true
		case joined:
			return true
		}
		s.refused(cl, hi, out)
	}
	return false
}

// refused records in client cl's view what a refusal from host hi said.
// A busy host is full now: its refusal carries its queue, and the client
// keeps that as a fresh observation, which ages like a beacon (a host that
// refused is likely to have room again a service time later). A host too
// hot or gone takes nothing until its next beacon says otherwise. With a
// sampled view the client only keeps that the host refused.
func (s *sim) refused(cl *client, hi int32, out int) {
	if !s.fullView {
		s.mark(cl, hi).refused = true
		return
	}
	v := &cl.view[hi]
	if out != refusedBusy || !s.cfg.RefusalState {
		v.Accepting = false
		return
	}
	h := &s.hosts[hi]
	v.Busy, v.QueueLen, v.Pending = len(h.running), len(h.queue), 0
	v.Updated = s.viewNow()
}

func (s *sim) hostOf(cl *client, c scheduler.Candidate) int32 {
	if s.fullView {
		return int32(c.Index)
	}
	return cl.vidx[c.Index]
}

// mark is client cl's record of what it did at host hi since the host's
// last beacon (sampled views).
func (s *sim) mark(cl *client, hi int32) *ownMark {
	o := &cl.own[hi]
	if o.seq != s.beaconSeq[hi] {
		*o = ownMark{seq: s.beaconSeq[hi]}
	}
	return o
}

// hedgeAfter is how long a queued task waits before its client looks at it
// again, the node's scheduler.Config.HedgeDelay.
func (s *sim) hedgeAfter(waitS float64) float64 {
	return s.place.HedgeDelay(1000 * waitS).Seconds()
}

// hedge is the dispatcher's look at task ti, still queued where it was
// placed, when its deadline passed: the queue hedge of scheduler/hedge.go.
// With a view, Place's best other host is known at once; with LoadProbe
// it is the best of a probe round that leaves this host out (probedHedge).
func (s *sim) hedge(ti int32, ver uint32) {
	h, i, ok := s.stillQueued(ti, ver)
	if !ok {
		return
	}
	if s.pr != nil {
		if !s.probe(ti, true, 1, map[string]bool{h.id: true}) {
			s.q.push(s.now+s.place.HedgeMin.Seconds(), evHedge, ti, ver)
		}
		return
	}
	s.tasks[ti].avoid = h.idx
	cands := s.placeGpunet(ti)
	s.moveQueued(ti, h, i, cands, func(c []scheduler.Candidate) bool { return s.offerAll(ti, c) })
}

// stillQueued finds task ti in the queue of the host it was placed on, if
// it is still there as of version ver (not started, moved or lost).
func (s *sim) stillQueued(ti int32, ver uint32) (*host, int, bool) {
	t := &s.tasks[ti]
	if t.done || t.ver != ver || t.host < 0 {
		return nil, 0, false
	}
	h := &s.hosts[t.host]
	i := slices.Index(h.queue, ti)
	if !h.online || h.epoch != t.epoch || i < 0 {
		return nil, 0, false
	}
	return h, i, true
}

// moveQueued decides on task ti, at position i of host h's queue, given
// the best other hosts cands. The host's ETA for it is what its queued
// events carry (scheduler.QueuedETAMs of its place in the queue); if
// ShouldMove says cands[0] finishes it sooner, the client offers it down
// cands (offer) and, once accepted, cancels it here. Otherwise it looks
// again later.
func (s *sim) moveQueued(ti int32, h *host, i int, cands []scheduler.Candidate, offer func([]scheduler.Candidate) bool) {
	t := &s.tasks[ti]
	ver := t.ver
	h.advance(s, s.now)
	runMs := 1000 * s.cfg.MeanServiceS / (h.speed * max(h.clock(s), 0.1))
	etaMs := scheduler.QueuedETAMs(i+1, h.slots, runMs)
	again := s.now + s.hedgeAfter(scheduler.QueuedWaitMs(etaMs, i+1, h.slots)/1000)
	if len(cands) == 0 || !s.place.ShouldMove(etaMs, cands[0]) {
		s.q.push(again, evHedge, ti, ver)
		return
	}
	// Take it out of the queue while it is offered elsewhere; if nobody
	// takes it, it goes back where it was, at the same instant.
	h.queue = slices.Delete(h.queue, i, i+1)
	h.release(s, ti)
	if offer(cands[:min(len(cands), s.cfg.HedgeAttempts)]) {
		s.res.Hedges++
		t.rtt += h.rtt // the cancel
		s.changed(h)
		return
	}
	h.queue = slices.Insert(h.queue, i, ti)
	h.admit(s, ti, true)
	s.q.push(again, evHedge, ti, ver)
}

// sampleView fills cl.view with ViewSize hosts, each as of its last beacon
// plus this client's placements and refusals since. The sample is a window
// of consecutive host indices at a random offset: hosts' attributes are
// drawn independently of their index, so a window is as good a sample as
// any, and reading it is cache-friendly where random indices were three
// times slower at 100,000 hosts.
func (s *sim) sampleView(cl *client) scheduler.View {
	cl.view, cl.vidx = cl.view[:0], cl.vidx[:0]
	n := len(s.hosts)
	start := cl.rng.IntN(n)
	if s.cfg.ViewFixed {
		start = cl.fixed
	}
	for i := range s.cfg.ViewSize {
		hi := start + i
		if hi >= n {
			hi -= n
		}
		if s.beaconSeq[hi] == 0 {
			continue
		}
		if s.exact { // the host as it is now (see exactView)
			h := &s.hosts[hi]
			if !h.online {
				continue
			}
			h.advance(s, s.now)
			cl.view = append(cl.view, h.beacon(s))
			cl.vidx = append(cl.vidx, int32(hi))
			continue
		}
		cl.view = append(cl.view, s.beacons[hi])
		ps := &cl.view[len(cl.view)-1]
		if o := cl.own[hi]; o.seq == s.beaconSeq[hi] {
			for range o.n {
				ps.Charge()
			}
			if o.refused {
				ps.Accepting = false
			}
		}
		cl.vidx = append(cl.vidx, int32(hi))
	}
	return cl.view
}

// pickKnown draws a uniformly random host among those with a fresh beacon.
func (s *sim) pickKnown(rng *rand.Rand) (int32, bool) {
	for range 64 {
		if hi := rng.IntN(len(s.hosts)); s.known(hi) {
			return int32(hi), true
		}
	}
	return 0, false
}

func (s *sim) dispatchRandom(ti int32) bool {
	rng := s.clients[s.tasks[ti].client].rng
	for range maxAttempts {
		hi, ok := s.pickKnown(rng)
		if !ok {
			return false
		}
		if placed(s.offer(ti, hi)) {
			return true
		}
	}
	return false
}

func (s *sim) dispatchRoundRobin(ti int32) bool {
	cl := &s.clients[s.tasks[ti].client]
	n := len(s.hosts)
	for a, scanned := 0, 0; a < maxAttempts && scanned < n; scanned++ {
		hi := cl.rr % n
		cl.rr++
		if !s.known(hi) {
			continue
		}
		a++
		if placed(s.offer(ti, int32(hi))) {
			return true
		}
	}
	return false
}

// dispatchPod probes D random known hosts for their current queue (one
// round trip, exact) and offers the task to the least loaded per slot (per
// slot and unit of speed with PodSpeed).
func (s *sim) dispatchPod(ti int32) bool {
	t := &s.tasks[ti]
	rng := s.clients[t.client].rng
	for range maxAttempts {
		best, bestLoad := int32(-1), math.Inf(1)
		probeRTT := 0.0
		for range s.cfg.D {
			hi, ok := s.pickKnown(rng)
			if !ok {
				break
			}
			h := &s.hosts[hi]
			probeRTT = max(probeRTT, h.rtt)
			if !h.online {
				s.res.RefusedGone++ // the probe fails
				continue
			}
			load := float64(len(h.running)+len(h.queue)+1) / float64(h.slots)
			if s.cfg.PodSpeed {
				load /= h.speed * h.clock(s) // +Inf while paused
			}
			if load < bestLoad {
				best, bestLoad = hi, load
			}
		}
		t.rtt += probeRTT
		if best < 0 {
			continue
		}
		if placed(s.offer(ti, best)) {
			return true
		}
	}
	return false
}

// dispatchOracle sends the task where it is predicted to finish first,
// from perfect, instant knowledge of the present: every host's queue, the
// work already done on each running task, its clock. Work not yet done is
// predicted by its expectation under the service distribution; nobody knows
// a task's size before it runs. Hosts that would refuse are skipped, so the
// oracle is never refused.
func (s *sim) dispatchOracle(ti int32) bool {
	if s.oracle != nil {
		best := s.oracle.best()
		return best >= 0 && placed(s.offer(ti, best))
	}
	best, bestT := int32(-1), math.Inf(1)
	mean := s.cfg.MeanServiceS
	for i := range s.hosts {
		h := &s.hosts[i]
		if !h.online || (s.cfg.Thermal && h.hot) || (len(h.running) >= h.slots && h.queueFull(s)) {
			continue
		}
		rate := h.speed * h.clock(s)
		if rate <= 0 {
			continue
		}
		if f := s.oracleWait(h, rate) + mean/rate; f < bestT {
			best, bestT = int32(i), f
		}
	}
	if best < 0 {
		return false
	}
	return placed(s.offer(ti, best))
}

// oracleWait is how long a task offered to h now is expected to wait: each
// running task's expected remaining work given the work it has done, then
// the queue, each task its mean, on the earliest free slot.
func (s *sim) oracleWait(h *host, rate float64) float64 {
	if len(h.running) < h.slots {
		return 0
	}
	free := s.oracleFree[:0]
	for _, ti := range h.running {
		t := &s.tasks[ti]
		done := t.work - (t.remaining - rate*(s.now-h.tLast))
		free = append(free, s.expectedRemaining(done)/rate)
	}
	for range h.queue {
		m := 0
		for j := range free {
			if free[j] < free[m] {
				m = j
			}
		}
		free[m] += s.cfg.MeanServiceS / rate
	}
	s.oracleFree = free
	return slices.Min(free)
}

// expectedRemaining is E[W − done | W > done] for a task's work W.
func (s *sim) expectedRemaining(done float64) float64 {
	mean := s.cfg.MeanServiceS
	done = max(done, 0)
	switch s.cfg.Service {
	case ServiceFixed:
		return max(mean-done, 0)
	case ServiceLognormal:
		if done <= 0 {
			return mean
		}
		// W = exp(μ + σZ): E[W; W > e] = e^(μ+σ²/2) Φ((μ+σ²−ln e)/σ),
		// P(W > e) = Φ((μ−ln e)/σ).
		const sigma = lognormalSigma
		mu := math.Log(mean) - sigma*sigma/2
		phi := func(x float64) float64 { return 0.5 * math.Erfc(-x/math.Sqrt2) }
		z := math.Log(done)
		den := phi((mu - z) / sigma)
		if den < 1e-12 {
			// Far in the tail the conditional excess tends to e·σ²/(ln e − μ).
			return done * sigma * sigma / max(z-mu, 1e-9)
		}
		return max(mean*phi((mu+sigma*sigma-z)/sigma)/den-done, 0)
	}
	return mean // exponential: memoryless
}

func (s *sim) summarise() {
	r := &s.res
	r.Tasks = len(s.tasks) - s.prefill
	r.Completed = s.completed - s.prefillDone
	r.SimS = s.now
	r.Refusals = r.RefusedBusy + r.RefusedHot + r.RefusedGone
	if s.now > 0 {
		r.BeaconsPerHostS = float64(r.Beacons) / float64(s.cfg.Hosts) / s.now
	}
	r.GossipBytesPerNodeS = GossipModel(s.cfg.Hosts, r.BeaconsPerHostS)
	switch {
	case s.pr != nil:
		r.LoadInfo = LoadProbe
		s.pr.summarise(s)
	case s.cfg.Policy == Gpunet:
		r.LoadInfo, r.LoadInfoBytesPerNodeS = LoadGossip, r.GossipBytesPerNodeS
	}
	if r.Tasks > 0 {
		r.CacheHitRatio = float64(r.CacheHits+r.Coalesced) / float64(r.Tasks)
	}
	if n := len(s.times); n > 0 {
		slices.Sort(s.times)
		sum := 0.0
		for _, x := range s.times {
			sum += x
		}
		r.MeanS = sum / float64(n)
		q := func(p float64) float64 { return s.times[min(int(p*float64(n)), n-1)] }
		r.P50S, r.P99S, r.P999S = q(0.5), q(0.99), q(0.999)
	}
	if s.runs > 0 {
		r.MeanWaitS, r.MeanRunS = s.waitSum/float64(s.runs), s.runSum/float64(s.runs)
	}
	if m, ok := Analytic(s.cfg); ok {
		r.AnalyticMeanS = m
	}
	byName := map[string]*ProfileStats{}
	for _, p := range s.profs {
		r.ByProfile = append(r.ByProfile, ProfileStats{Name: p.Name})
	}
	for i := range r.ByProfile {
		byName[r.ByProfile[i].Name] = &r.ByProfile[i]
	}
	busy := 0.0
	for i := range s.hosts {
		h := &s.hosts[i]
		if h.online {
			h.advance(s, s.now)
		}
		busy += h.busyS
		r.ThrottledGPUS += h.throttledS
		ps := byName[h.prof.Name]
		ps.Hosts++
		ps.TasksRun += h.tasksRun
		ps.Utilisation += h.busyS
		ps.ThrottledGPUS += h.throttledS
		if s.cfg.Thermal {
			margin := h.prof.SlowdownC - h.peak
			if i == 0 || margin < r.MinSlowdownMarginC {
				r.MinSlowdownMarginC = margin
			}
			r.PeakTempC = max(r.PeakTempC, h.peak)
			ps.PeakTempC = max(ps.PeakTempC, h.peak)
			if over := h.peak - h.limit; over > 1e-9 {
				r.HostsOverLimit++
				r.MaxOverLimitC = max(r.MaxOverLimitC, over)
			}
		}
	}
	if s.now > 0 {
		r.Utilisation = busy / (float64(len(s.hosts)) * s.now)
		for i := range r.ByProfile {
			if ps := &r.ByProfile[i]; ps.Hosts > 0 {
				ps.Utilisation /= float64(ps.Hosts) * s.now
			}
		}
	}
}

// pickProfile is the profile x (uniform in [0, 1)) falls in, by their
// shares of the swarm; the last one takes what rounding leaves.
func pickProfile(profs []Profile, x float64) int {
	for j := range profs {
		if x < profs[j].Share {
			return j
		}
		x -= profs[j].Share
	}
	return len(profs) - 1
}
