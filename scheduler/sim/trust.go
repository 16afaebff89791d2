package sim

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// This file is the lying-host model (RunTrust): hosts that return wrong
// results, and clients that verify a sample of results by re-running them
// on an independent host. It is a smaller model than Run: hosts of the
// swarm's kinds and speeds with FIFO queues, no heat, no beacons, no churn,
// no cache; clients place a task by the power of two choices on expected
// wait (exact, as pod with PodSpeed), which is enough to see how
// verification load and lost liars' capacity move honest latency. Kernels
// are deterministic, so a re-run settles a result by byte equality.

// Lie is a lying host's strategy.
type Lie string

// The strategies of lying hosts. A liar lies the same way whether it runs
// a task first or verifies another host's result.
const (
	// LieAlways returns a wrong result every time.
	LieAlways Lie = "always"
	// Lie10 returns a wrong result on 10 % of runs.
	Lie10 Lie = "10pct"
	// LieProbation is honest for its first LieAfter runs for each client,
	// then always lies to that client.
	LieProbation Lie = "probation"
	// LieCollude: liars come in pairs that return the same wrong result
	// for a task, so a re-run that lands on the partner agrees, and a
	// partner drawn as arbiter outvotes an honest host.
	LieCollude Lie = "collude"
	// LieRejoin is LieProbation that, once caught, comes back under a new
	// identity (no history) after RejoinS.
	LieRejoin Lie = "rejoin"
)

// Lies lists the strategies, in table order.
func Lies() []Lie { return []Lie{LieAlways, Lie10, LieProbation, LieCollude, LieRejoin} }

// TrustConfig is one run of the lying-host model. Times are seconds.
type TrustConfig struct {
	Hosts, Clients, Tasks int
	// Load is offered load over the capacity of every host, liars
	// included: once liars are shut out the honest hosts carry it all.
	Load         float64
	MeanServiceS float64
	// Hetero spreads host speeds as in Config.
	Hetero float64
	Seed   uint64
	// Warmup is the fraction of tasks, from the start, left out of the
	// latency figures (every host starts unknown, so on probation).
	Warmup float64

	// Liars is the fraction of hosts that lie, with strategy Lie.
	Liars float64
	Lie   Lie
	// DropLiars removes the liars from the swarm (nobody places work on
	// them) while keeping the arrival rate: the swarm of honest hosts
	// alone, the baseline that shows what verification costs apart from
	// the capacity liars only pretended to have.
	DropLiars bool
	// LieAfter is how many runs per client a probation or rejoin liar
	// does honestly before it lies; 0 means Probation (just through it).
	LieAfter int
	// RejoinS is how long a caught rejoin liar takes to come back.
	RejoinS float64

	// Verify turns verification on. A client re-runs every result of an
	// identity it has accepted fewer than Probation results from, and holds
	// it until the re-run agrees. After that it re-runs a sample at rate
	// max(MinRate, Probation/k) for the k-th result (falling with a clean
	// record), raised towards 1 when more than IdleAbove of the swarm's
	// slots are free (idle capacity verifies for nothing); a sampled
	// result is accepted at once and checked in the background.
	Verify    bool
	Probation int
	MinRate   float64
	IdleAbove float64
	// VerdictDelayS is how long a fraud proof takes to reach every other
	// client; the client that caught the liar excludes it at once.
	VerdictDelayS float64
}

// DefaultTrustConfig is the setting of the figures in docs/trust.md: 200
// hosts, 4 clients, 200,000 tasks (1,000 per host) at half load, 20 %
// liars that always lie.
func DefaultTrustConfig() TrustConfig {
	return TrustConfig{
		Hosts: 200, Clients: 4, Tasks: 200_000,
		// Load 0.3 of every host's capacity: once the liars (a fifth of it)
		// are shut out and verification adds a fifth more work, the honest
		// hosts run at about 0.45. Above about 0.6 the power of two choices
		// over these mixed cards queues steeply (mean time in system ×5 from
		// load 0.5 to 0.8), and the comparison would measure that.
		Load: 0.3, MeanServiceS: 4, Hetero: 0.3, Seed: 1, Warmup: 0.1,
		Liars: 0.2, Lie: LieAlways, RejoinS: 60,
		Verify: true,
		// Ten held re-runs per client catch an always-liar on its first
		// result and a 10 % liar with probability 1 − 0.9¹⁰ ≈ 0.65.
		Probation: 10,
		// The floor bounds what a patient liar gets away with per
		// identity: (1 − MinRate)/MinRate ≈ 6 wrong results accepted per client.
		MinRate: 0.15,
		// Only a swarm with most slots free verifies more: at load 0.3 about
		// 60 % of slots are free already.
		IdleAbove:     0.8,
		VerdictDelayS: 10,
	}
}

// ErrBadTrustConfig is wrapped by every TrustConfig validation error.
var ErrBadTrustConfig = errors.New("invalid trust simulation config")

// Validate reports the first setting RunTrust cannot use.
func (c TrustConfig) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadTrustConfig}, a...)...)
	}
	switch {
	case c.Hosts < 3:
		return bad("hosts %d: want ≥ 3 (a result, a re-run and an arbiter)", c.Hosts)
	case c.Clients < 1 || c.Tasks < 1:
		return bad("want clients ≥ 1 and tasks ≥ 1")
	case !(c.Load > 0 && c.Load < 1) || !(c.MeanServiceS > 0) || !(c.Hetero >= 0 && c.Hetero <= 3):
		return bad("want 0 < load < 1, mean service > 0, hetero 0..3")
	case !(c.Liars >= 0 && c.Liars < 0.5):
		return bad("liars %v: want 0 ≤ liars < 0.5 (a majority of liars outvotes any arbitration)", c.Liars)
	case c.Liars > 0 && !slices.Contains(Lies(), c.Lie):
		return bad("lie %q: want one of %v", c.Lie, Lies())
	case c.LieAfter < 0 || c.Probation < 0 || !(c.MinRate >= 0 && c.MinRate <= 1) || !(c.IdleAbove > 0 && c.IdleAbove <= 1):
		return bad("want lie-after ≥ 0, probation ≥ 0, 0 ≤ min-rate ≤ 1, 0 < idle-above ≤ 1")
	case !(c.VerdictDelayS >= 0) || !(c.RejoinS > 0) || !(c.Warmup >= 0 && c.Warmup < 1):
		return bad("want verdict delay ≥ 0, rejoin > 0, 0 ≤ warmup < 1")
	}
	return nil
}

// TrustResult is the outcome of one RunTrust.
type TrustResult struct {
	Lie    Lie     `json:"lie,omitempty"`
	Liars  float64 `json:"liars"`
	Verify bool    `json:"verify"`
	Tasks  int     `json:"tasks"`
	// WrongAccepted counts results users accepted that were wrong;
	// WrongFrac is its share of the Tasks results accepted.
	WrongAccepted int     `json:"wrong_accepted"`
	WrongFrac     float64 `json:"wrong_frac"`
	// Runs counts every kernel run: first runs, runs again after a result
	// was refused, re-runs and arbitrations. Compute is Runs / Tasks, the
	// compute of verification relative to none (1 run per task).
	Runs        int     `json:"runs"`
	FirstRuns   int     `json:"first_runs"`  // Tasks plus first runs done again after a refused result
	ReRuns      int     `json:"reruns"`      // verification re-runs
	Arbitration int     `json:"arbitration"` // third (and later) runs after a disagreement
	Refused     int     `json:"refused"`     // results of an excluded identity, run again elsewhere
	Compute     float64 `json:"compute"`
	// Time in system, arrival to accepted result, of tasks after the
	// warm-up whose first run was on an honest host.
	MeanS float64 `json:"mean_s"`
	P99S  float64 `json:"p99_s"`
	// Identities of liars (more than the liars with rejoin), those caught,
	// honest hosts outvoted by colluders, and re-runs or arbitrations that
	// landed on the liar's colluding partner.
	LiarIdentities int `json:"liar_identities"`
	Caught         int `json:"caught"`
	HonestFramed   int `json:"honest_framed"`
	PartnerDraws   int `json:"partner_draws"`
	// Checks counts verifications started, held those that made the
	// user wait (probation).
	// IdleChecks are those only the idle boost asked for: run on slots that
	// were free anyway.
	Checks     int     `json:"checks"`
	Held       int     `json:"held"`
	IdleChecks int     `json:"idle_checks"`
	WallS      float64 `json:"wall_s"`
}

// Trust event kinds (their own loop: see RunTrust).
const (
	trArrival uint8 = iota
	trDone          // a run finished (a: run)
	trVerdict       // a fraud proof reached every client (a: identity)
	trRejoin        // a caught rejoin liar comes back (a: host)
)

// Run kinds.
const (
	runFirst uint8 = iota
	runCheck
	runArbiter
)

type trHost struct {
	slots   int
	speed   float64
	busy    int
	queue   []int32 // runs waiting, FIFO
	ident   int32   // current identity
	liar    bool
	partner int32 // collude: the other liar of the pair, else -1
}

type trIdent struct {
	host     int32
	caught   bool
	caughtAt float64
	runs     []int // runs done for each client (probation liars count)
}

type trTask struct {
	arrival float64
	work    float64
	client  int32
	honest  bool // its first run was on an honest host
	done    bool
	held    bool
	// votes are the results of this task so far: the accepted one (or
	// held) first, then re-runs and arbitrations.
	votes []trVote
}

type trVote struct {
	ident int32
	value uint64 // 0 is the correct result
}

type trRun struct {
	at    float64 // when it was placed
	task  int32
	host  int32
	ident int32
	kind  uint8
}

type trustSim struct {
	cfg     TrustConfig
	q       eventQueue
	now     float64
	rng     *rand.Rand // placement, verifier draws, 10 % lies
	rngArr  *rand.Rand
	rngWork *rand.Rand
	hosts   []trHost
	idents  []trIdent
	tasks   []trTask
	runs    []trRun
	// excluded[c][i]: client c refuses identity i; accepted[c][i]: results
	// of i that c accepted (its record).
	excluded    [][]bool
	accepted    [][]int
	slots, free int
	times       []float64
	warmupIdx   int
	res         TrustResult
}

// RunTrust simulates cfg. It is deterministic in cfg (WallS aside), and
// every run of a seed sees the same hosts, arrivals and task sizes, so a
// run with liars compares with one without.
func RunTrust(cfg TrustConfig) (*TrustResult, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	s := newTrust(cfg)
	s.run()
	s.res.WallS = time.Since(start).Seconds()
	for i := range s.tasks {
		if !s.tasks[i].done {
			return &s.res, fmt.Errorf("trust simulation lost task %d", i)
		}
	}
	return &s.res, nil
}

func newTrust(cfg TrustConfig) *trustSim {
	s := &trustSim{cfg: cfg, rng: stream(cfg.Seed, 200), rngArr: stream(cfg.Seed, 201), rngWork: stream(cfg.Seed, 202)}
	s.excluded = make([][]bool, cfg.Clients)
	s.accepted = make([][]int, cfg.Clients)
	s.buildHosts()
	s.tasks = make([]trTask, 0, cfg.Tasks)
	s.warmupIdx = int(cfg.Warmup * float64(cfg.Tasks))
	return s
}

func (s *trustSim) run() {
	cfg := &s.cfg
	capacity := 0.0
	for i := range s.hosts {
		capacity += float64(s.hosts[i].slots) * s.hosts[i].speed / cfg.MeanServiceS
	}
	rate := cfg.Load * capacity
	s.q.push(s.rngArr.ExpFloat64()/rate, trArrival, 0, 0)
	for s.q.len() > 0 {
		e := s.q.pop()
		s.now = e.t
		switch e.kind {
		case trArrival:
			s.arrive()
			if len(s.tasks) < cfg.Tasks {
				s.q.push(s.now+s.rngArr.ExpFloat64()/rate, trArrival, 0, 0)
			}
		case trDone:
			s.done(e.a)
		case trVerdict:
			for c := range s.excluded {
				s.excluded[c][e.a] = true
			}
		case trRejoin:
			s.newIdent(e.a)
		}
	}
	s.summarise()
}

func (s *trustSim) buildHosts() {
	// The same kinds of card as Run, drawn from their own stream.
	rng := stream(s.cfg.Seed, 203)
	profs := Profiles()
	s.hosts = make([]trHost, s.cfg.Hosts)
	for i := range s.hosts {
		pi := pickProfile(profs, rng.Float64())
		m := 1.0
		if s.cfg.Hetero > 0 {
			m = math.Exp(s.cfg.Hetero * rng.NormFloat64())
			if rng.Float64() < 0.05 {
				m /= 4
			}
		}
		h := &s.hosts[i]
		h.slots, h.speed, h.partner = profs[pi].Slots, profs[pi].Speed*m, -1
		s.slots += h.slots
	}
	s.free = s.slots
	// Liars are a random set drawn independently of speed; collude pairs
	// them in order of draw.
	nl := int(math.Round(s.cfg.Liars * float64(s.cfg.Hosts)))
	perm := rng.Perm(s.cfg.Hosts)[:nl]
	for j, hi := range perm {
		s.hosts[hi].liar = true
		if s.cfg.Lie == LieCollude && j%2 == 1 {
			s.hosts[hi].partner, s.hosts[perm[j-1]].partner = int32(perm[j-1]), int32(hi)
		}
	}
	for i := range s.hosts {
		s.newIdent(int32(i))
	}
}

// newIdent gives host hi a new identity, with no history anywhere.
func (s *trustSim) newIdent(hi int32) {
	s.hosts[hi].ident = int32(len(s.idents))
	s.idents = append(s.idents, trIdent{host: hi, runs: make([]int, s.cfg.Clients)})
	if s.hosts[hi].liar {
		s.res.LiarIdentities++
	}
	for c := range s.excluded {
		s.excluded[c] = append(s.excluded[c], false)
		s.accepted[c] = append(s.accepted[c], 0)
	}
}

func (s *trustSim) arrive() {
	cfg := &s.cfg
	ti := int32(len(s.tasks))
	s.tasks = append(s.tasks, trTask{arrival: s.now, work: s.rngWork.ExpFloat64() * cfg.MeanServiceS, client: int32(s.rngArr.IntN(cfg.Clients))})
	hi := s.placeFirst(s.tasks[ti].client)
	s.tasks[ti].honest = !s.hosts[hi].liar
	s.startRun(ti, hi, runFirst)
}

// usable reports whether client c would send work to host hi now.
func (s *trustSim) usable(c int32, hi int32) bool {
	if s.cfg.DropLiars && s.hosts[hi].liar {
		return false
	}
	return !s.excluded[c][s.hosts[hi].ident]
}

// place is the power of two choices on expected wait among hosts client c
// does not exclude and that are not in avoid. A verifier is chosen the same
// way as a first host, so a re-run does not queue behind a slow card; its
// two candidates are drawn at random, not from the best-looking hosts, so a
// colluder's partner is one of them with probability about 2/hosts however
// idle it claims to be.
func (s *trustSim) place(c int32, avoid []int32) (int32, bool) {
	best, bestW := int32(-1), math.Inf(1)
	for range 2 {
		hi, ok := s.draw(c, avoid)
		if !ok {
			break
		}
		h := &s.hosts[hi]
		if w := float64(h.busy+len(h.queue)+1) / float64(h.slots) / h.speed; w < bestW {
			best, bestW = hi, w
		}
	}
	return best, best >= 0
}

// placeFirst places a task's first run.
func (s *trustSim) placeFirst(c int32) int32 {
	hi, ok := s.place(c, nil)
	if !ok {
		panic("trust sim: every host excluded") // Validate keeps liars a minority
	}
	return hi
}

// draw picks a uniformly random host that client c does not exclude and
// that is not in avoid.
func (s *trustSim) draw(c int32, avoid []int32) (int32, bool) {
	for range 256 {
		hi := int32(s.rng.IntN(len(s.hosts)))
		if s.usable(c, hi) && !slices.Contains(avoid, hi) {
			return hi, true
		}
	}
	return -1, false
}

func (s *trustSim) startRun(ti, hi int32, kind uint8) {
	ri := int32(len(s.runs))
	s.runs = append(s.runs, trRun{at: s.now, task: ti, host: hi, ident: s.hosts[hi].ident, kind: kind})
	s.res.Runs++
	switch kind {
	case runFirst:
		s.res.FirstRuns++
	case runCheck:
		s.res.ReRuns++
	case runArbiter:
		s.res.Arbitration++
	}
	h := &s.hosts[hi]
	if h.busy < h.slots {
		s.begin(ri)
		return
	}
	h.queue = append(h.queue, ri)
}

func (s *trustSim) begin(ri int32) {
	r := &s.runs[ri]
	h := &s.hosts[r.host]
	h.busy++
	s.free--
	s.q.push(s.now+s.tasks[r.task].work/h.speed, trDone, ri, 0)
}

// value is what identity id's host returns for task ti run for client c.
func (s *trustSim) value(ti, id int32, c int32) uint64 {
	it := &s.idents[id]
	h := &s.hosts[it.host]
	it.runs[c]++
	if !h.liar {
		return 0
	}
	lie := false
	switch s.cfg.Lie {
	case LieAlways, LieCollude:
		lie = true
	case Lie10:
		lie = s.rng.Float64() < 0.1
	case LieProbation, LieRejoin:
		after := s.cfg.LieAfter
		if after == 0 {
			after = s.cfg.Probation
		}
		lie = it.runs[c] > after
	}
	if !lie {
		return 0
	}
	if h.partner >= 0 {
		// The pair's common wrong answer.
		return 1 + uint64(min(it.host, h.partner))
	}
	return 1 + uint64(it.host)<<20 + uint64(ti) // a wrong answer of its own
}

func (s *trustSim) done(ri int32) {
	r := s.runs[ri]
	h := &s.hosts[r.host]
	h.busy--
	s.free++
	if len(h.queue) > 0 {
		next := h.queue[0]
		h.queue = h.queue[1:]
		s.begin(next)
	}
	t := &s.tasks[r.task]
	c := t.client
	v := trVote{ident: r.ident, value: s.value(r.task, r.ident, c)}
	if s.excluded[c][r.ident] {
		// A result signed by an identity the client has a verdict on is not
		// accepted: the run is done again elsewhere.
		s.res.Refused++
		if r.kind == runFirst {
			s.startRun(r.task, s.placeFirst(c), runFirst)
		} else {
			s.check(r.task, r.kind)
		}
		return
	}
	if r.kind == runFirst {
		s.first(r.task, v)
		return
	}
	t.votes = append(t.votes, v)
	s.settle(r.task)
}

func (s *trustSim) hostsOf(t *trTask) []int32 {
	var hs []int32
	for _, v := range t.votes {
		hs = append(hs, s.idents[v.ident].host)
	}
	return hs
}

// first handles task ti's first accepted-or-held result v.
func (s *trustSim) first(ti int32, v trVote) {
	t := &s.tasks[ti]
	c := t.client
	t.votes = append(t.votes[:0], v)
	if !s.cfg.Verify {
		s.accept(ti, v)
		return
	}
	k := s.accepted[c][v.ident]
	if k < s.cfg.Probation {
		t.held = true
		s.res.Held++
		s.res.Checks++
		s.check(ti, runCheck)
		return
	}
	p := max(s.cfg.MinRate, float64(s.cfg.Probation)/float64(k+1))
	pIdle := p
	if idle := float64(s.free) / float64(s.slots); idle > s.cfg.IdleAbove {
		pIdle += (1 - p) * (idle - s.cfg.IdleAbove) / (1 - s.cfg.IdleAbove)
	}
	s.accept(ti, v)
	if u := s.rng.Float64(); u < pIdle {
		s.res.Checks++
		if u >= p {
			s.res.IdleChecks++
		}
		s.check(ti, runCheck)
	}
}

// check starts a re-run (or an arbitration) of task ti on a random host
// that has not run it.
func (s *trustSim) check(ti int32, kind uint8) {
	t := &s.tasks[ti]
	avoid := s.hostsOf(t)
	hi, ok := s.place(t.client, avoid)
	if !ok {
		// Nobody left to ask: leave it as it stands.
		if t.held {
			s.accept(ti, t.votes[0])
		}
		return
	}
	for _, a := range avoid {
		if s.hosts[a].partner == hi {
			s.res.PartnerDraws++
			break
		}
	}
	s.startRun(ti, hi, kind)
}

// maxVotes bounds the runs of one task when no two of them agree. With 20 %
// liars, ten runs without two honest ones happen about once in 10⁵ checks.
const maxVotes = 10

// settle looks at task ti's votes after a re-run or arbitration: all equal
// is clean; otherwise a value two hosts agree on wins and everyone else is
// caught; with no majority yet another host arbitrates.
func (s *trustSim) settle(ti int32) {
	t := &s.tasks[ti]
	c := t.client
	win, n := t.votes[0].value, 0
	for _, a := range t.votes {
		m := 0
		for _, b := range t.votes {
			if a.value == b.value {
				m++
			}
		}
		if m > n {
			win, n = a.value, m
		}
	}
	if n < 2 {
		if len(t.votes) < maxVotes {
			s.check(ti, runArbiter)
			return
		}
		// No two of maxVotes hosts agree (a run of liars, each with its own
		// wrong answer): nobody can be shown wrong. The user keeps the
		// first answer, marked by no verdict.
		if t.held {
			s.accept(ti, t.votes[0])
		}
		return
	}
	if n == len(t.votes) {
		// Clean: the record of the first host grows (the count of results
		// accepted is what the sampling rate falls with).
		if t.held {
			s.accept(ti, t.votes[0])
		}
		return
	}
	for _, v := range t.votes {
		if v.value != win {
			s.catch(c, v.ident)
		}
	}
	if t.held {
		v := trVote{ident: -1, value: win}
		if t.votes[0].value == win {
			v = t.votes[0]
		}
		s.accept(ti, v)
	}
}

// catch marks identity id as a liar for client c now and, by fraud proof,
// for every client after VerdictDelayS.
func (s *trustSim) catch(c int32, id int32) {
	s.excluded[c][id] = true
	it := &s.idents[id]
	if it.caught {
		return
	}
	it.caught, it.caughtAt = true, s.now
	h := &s.hosts[it.host]
	if !h.liar {
		s.res.HonestFramed++
	} else {
		s.res.Caught++
	}
	s.q.push(s.now+s.cfg.VerdictDelayS, trVerdict, id, 0)
	if h.liar && s.cfg.Lie == LieRejoin && h.ident == id {
		s.q.push(s.now+s.cfg.RejoinS, trRejoin, it.host, 0)
	}
}

// accept gives the user task ti's result v.
func (s *trustSim) accept(ti int32, v trVote) {
	t := &s.tasks[ti]
	if t.done {
		return
	}
	t.done, t.held = true, false
	if v.ident >= 0 {
		s.accepted[t.client][v.ident]++
	}
	if v.value != 0 {
		s.res.WrongAccepted++
	}
	if int(ti) >= s.warmupIdx && t.honest {
		s.times = append(s.times, s.now-t.arrival)
	}
}

func (s *trustSim) summarise() {
	r := &s.res
	r.Lie, r.Liars, r.Verify, r.Tasks = s.cfg.Lie, s.cfg.Liars, s.cfg.Verify, len(s.tasks)
	if s.cfg.Liars == 0 {
		r.Lie = ""
	}
	r.WrongFrac = float64(r.WrongAccepted) / float64(r.Tasks)
	r.Compute = float64(r.Runs) / float64(r.Tasks)
	if n := len(s.times); n > 0 {
		slices.Sort(s.times)
		sum := 0.0
		for _, x := range s.times {
			sum += x
		}
		r.MeanS = sum / float64(n)
		r.P99S = s.times[min(int(0.99*float64(n)), n-1)]
	}
}

// TrustReport compares strategies on one workload (TrustCompare).
type TrustReport struct {
	Config TrustConfig `json:"config"`
	// NoLiars is the same workload on the same hosts, all honest, without
	// verification; HonestOnly the liars removed (DropLiars), without
	// verification; Verified all honest, with verification.
	NoLiars    *TrustResult `json:"no_liars"`
	HonestOnly *TrustResult `json:"honest_only"`
	Verified   *TrustResult `json:"verified_no_liars"`
	Rows       []TrustRow   `json:"rows"`
}

// TrustRow is one strategy with verification off and on.
type TrustRow struct {
	Lie Lie          `json:"lie"`
	Off *TrustResult `json:"off"`
	On  *TrustResult `json:"on"`
}

// TrustCompare runs cfg's workload without liars, on its honest hosts
// alone, and with liars of each strategy in lies, verification off and on.
func TrustCompare(cfg TrustConfig, lies []Lie) (*TrustReport, error) {
	rep := &TrustReport{Config: cfg}
	one := func(f func(*TrustConfig)) (*TrustResult, error) {
		c := cfg
		f(&c)
		return RunTrust(c)
	}
	var err error
	if rep.NoLiars, err = one(func(c *TrustConfig) { c.Liars, c.Verify = 0, false }); err != nil {
		return nil, err
	}
	if rep.HonestOnly, err = one(func(c *TrustConfig) { c.DropLiars, c.Verify = true, false }); err != nil {
		return nil, err
	}
	if rep.Verified, err = one(func(c *TrustConfig) { c.Liars, c.Verify = 0, true }); err != nil {
		return nil, err
	}
	for _, lie := range lies {
		row := TrustRow{Lie: lie}
		if row.Off, err = one(func(c *TrustConfig) { c.Lie, c.Verify = lie, false }); err != nil {
			return nil, err
		}
		if row.On, err = one(func(c *TrustConfig) { c.Lie, c.Verify = lie, true }); err != nil {
			return nil, err
		}
		rep.Rows = append(rep.Rows, row)
	}
	return rep, nil
}
