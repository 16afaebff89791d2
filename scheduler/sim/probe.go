package sim

import (
	"fmt"
	"math"
	"slices"

	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
)

// Load information by probing (Config.LoadInfo = LoadProbe): the gpunet
// policy with scheduler/probe.go instead of gossiped beacons. Every host and
// every client keeps a Cyclon view; a client probes Probe.D hosts drawn from
// its view for each task and ranks their replies with scheduler.RankProbed.
// The decisions are the scheduler package's functions; this file does what
// the node would do around them: the messages, their round trips and their
// bytes.
//
// What is modelled: a probe reply is the host's state when the probe left
// the client, and the client decides when the slowest reply is in (a round
// trip, two for a host it has no connection to), so the state is a round
// trip old when used; the offer then reaches the host at once and its
// round trip is added to the task's time, as for every offer in the
// simulator. A probe to a host that left fails after Probe.Timeout and the
// entry is forgotten. Shuffles are Cyclon's, between the actual views.

// Model constants of probing's bytes. Each is a count of bytes on the wire
// of one message, in and out together, as a node's load-information
// traffic counts them (GossipModel counts both directions too).
const (
	// ProbeRequestBytes is a probe: a new yamux stream (12-byte frame
	// headers), multistream-select of /gpunet/probe/1.0.0 both ways (about
	// 70 bytes) and a request naming the model (about 30).
	ProbeRequestBytes = 120
	// ProbeReplyBytes is the reply: the beacon's signed fields (about 330
	// bytes, BeaconBytes without the GossipSub envelope; over an
	// authenticated stream the signature could go, 70 bytes fewer) and
	// stream framing and close (about 50).
	ProbeReplyBytes = 380
	// DescriptorBytes is one peer-sampling descriptor: a peer ID (38
	// bytes), two multiaddrs (QUIC and TCP, about 20 each), age and
	// capacity, and CBOR keys.
	DescriptorBytes = 110
	// NoticeBytes is an idle notice: a new stream to the client (about
	// 70 bytes) carrying the host's state as a probe reply does.
	NoticeBytes = 70 + ProbeReplyBytes
	// ShuffleOverheadBytes is one shuffle's stream and framing, both ways.
	ShuffleOverheadBytes = 150
	// ConnSetupBytes is a new libp2p connection: a QUIC handshake with the
	// libp2p TLS certificate (the client's Initial is padded to 1,200
	// bytes; about 2.8 KB in all) and identify both ways (protocols, listen
	// addresses and a signed peer record, about 1.1 KB each way).
	ConnSetupBytes = 5000
	// ConnIdleS is how long a client keeps an unused connection to a host:
	// a probe to a host it contacted less than this ago needs no new one.
	// Hosts are assumed to set up a connection for every shuffle.
	ConnIdleS = 30
)

// hostRef is what a descriptor's ID names: a host and the epoch (identity)
// it had. A host that left and came back is a new peer, so an old ID names
// a host that is gone.
type hostRef struct {
	idx   int32
	epoch uint32
}

// conn is a client's connection to a host: when it was last used, and to
// which identity of the host.
type conn struct {
	t     float64
	epoch uint32
}

// probeRound is one round of probes for one task: the hosts that answered,
// their states as they replied, and the descriptors their replies carried.
type probeRound struct {
	task  int32
	ver   uint32 // the task's version when a hedge round began
	round int
	hedge bool
	// hosts[i] answered with states[i]; dead are IDs of probed hosts that
	// had left.
	hosts   []int32
	states  scheduler.View
	dead    []string
	piggy   []scheduler.Descriptor
	exclude map[string]bool
}

// notice is an idle notice on its way to a client.
type notice struct {
	client int32
	state  scheduler.PeerState
}

// prober is the simulator's state for LoadProbe.
type prober struct {
	cfg   scheduler.ProbeConfig
	views [][]scheduler.Descriptor // each host's Cyclon view
	ids   map[string]hostRef
	// Idle notices: each host's recent probers and announced free slots;
	// the clients' IDs; notices in flight.
	probers    []scheduler.Probers
	announced  []int32
	clientIDs  []string
	clientIdx  map[string]int32
	notices    []notice
	freeNotice []int32
	nNotices   int
	rounds     []probeRound
	free       []int32
	targets    []int
	idx        []int
	ans        []int
	offer      []scheduler.Descriptor
	recv       []scheduler.Descriptor
	every      float64 // shuffle period, s
	timeout    float64 // s

	// Bytes, in and out, summed over hosts and per client (of the host
	// bytes, shuffleHost are shuffles'); counters.
	hostBytes    float64
	shuffleHost  float64
	clientBytes  []float64
	probes       int
	failed       int
	nRounds      int
	connSetups   int
	shuffles     int
	rebootstraps int
	// The counters when the warm-up ended and at the last arrival: rates
	// are taken between the two, like time in system, and not over the
	// drain after the last arrival.
	warm, last probeCount
	// pairRate is each client's expected probe rate to a host per unit of
	// the host's capacity (connect).
	pairRate []float64
}

// probeCount is a snapshot of the prober's counters.
type probeCount struct {
	t                 float64
	host, shuffleHost float64
	client            []float64
	tasks, probes     int
	connSetups        int
	beacons           int
	set               bool
}

// newProber builds every host's and client's view: ViewSize hosts drawn
// uniformly, as a node bootstrapping from the DHT would find them, and
// schedules each node's shuffles at a random phase.
func newProber(s *sim) *prober {
	cfg := s.cfg.Probe
	p := &prober{
		cfg:         cfg,
		views:       make([][]scheduler.Descriptor, len(s.hosts)),
		ids:         make(map[string]hostRef, len(s.hosts)),
		clientBytes: make([]float64, len(s.clients)),
		every:       cfg.ShuffleEvery.Seconds(),
		timeout:     cfg.Timeout.Seconds(),
	}
	if cfg.Notify > 0 {
		p.probers = make([]scheduler.Probers, len(s.hosts))
		for i := range p.probers {
			p.probers[i] = scheduler.NewProbers(cfg.Notify)
		}
		p.announced = make([]int32, len(s.hosts))
	}
	p.clientIdx = make(map[string]int32, len(s.clients))
	for ci := range s.clients {
		id := fmt.Sprintf("c%d", ci)
		p.clientIDs = append(p.clientIDs, id)
		p.clientIdx[id] = int32(ci)
	}
	rng := stream(s.cfg.Seed, 7)
	// sample draws a bootstrap view: n distinct hosts other than self.
	var picked []int
	sample := func(n, self int) []scheduler.Descriptor {
		v := make([]scheduler.Descriptor, 0, cfg.ViewSize)
		picked = picked[:0]
		for len(v) < n {
			j := rng.IntN(len(s.hosts))
			if j == self || slices.Contains(picked, j) {
				continue
			}
			picked = append(picked, j)
			v = append(v, s.hosts[j].descriptor(s))
		}
		return v
	}
	capacity := 0.0
	for i := range s.hosts {
		p.ids[s.hosts[i].id] = hostRef{idx: int32(i)}
		p.views[i] = sample(min(cfg.ViewSize, len(s.hosts)-1), i)
		s.q.push(rng.Float64()*p.every, evShuffle, int32(i), 0)
		capacity += s.hosts[i].descriptor(s).Capacity
	}
	for ci := range s.clients {
		cl := &s.clients[ci]
		cl.conns = map[int32]conn{}
		cl.mem = scheduler.NewProbeMemory(cfg.Memory)
		cl.pview = sample(min(cfg.ViewSize, len(s.hosts)), -1)
		s.q.push(rng.Float64()*p.every, evShuffle, clientNode(ci), 0)
		share := 1 / float64(len(s.clients))
		if f := s.cfg.HeavyClient; f > 0 {
			share = (1 - f) / float64(len(s.clients)-1)
			if ci == 0 {
				share = f
			}
		}
		p.pairRate = append(p.pairRate, s.rate*share*float64(cfg.D)/capacity)
	}
	return p
}

// clientNode encodes client c as an evShuffle node; hosts are ≥ 0.
func clientNode(c int) int32 { return -1 - int32(c) }

// descriptor is what host h says of itself in a shuffle: its capacity
// for the model, from the service time its beacon reports.
func (h *host) descriptor(s *sim) scheduler.Descriptor {
	if h.capacity == 0 {
		h.capacity = float64(h.slots) * 1000 / h.svcMs[protocol.DefaultModel]
	}
	return scheduler.Descriptor{ID: h.id, Capacity: h.capacity}
}

// resolve is the host a descriptor names, and whether it is still that
// peer (online, same identity).
func (s *sim) resolve(id string) (int32, bool) {
	ref, ok := s.pr.ids[id]
	if !ok {
		return -1, false
	}
	h := &s.hosts[ref.idx]
	return ref.idx, h.online && h.epoch == ref.epoch
}

// connect is the cost, in round trips, of reaching host hi from client cl
// now: 0 over a connection used less than ConnIdleS ago, else 1 (a QUIC
// handshake), whose bytes it books on both ends.
//
// The swarm was running before the simulation starts (as beacons and
// temperatures are), so a pair first contacted at time t < ConnIdleS may
// still hold a connection from before: the last contact before the run is
// an exponential time back with the pair's expected probe rate r (the
// client's probes spread by capacity), and the connection is there with
// probability 1 − exp(−r·(ConnIdleS − t)). Without this, a short run of a
// large swarm would count every pair's first connection, a start-up cost
// a running swarm does not pay.
func (s *sim) connect(ci int32, hi int32) float64 {
	cl := &s.clients[ci]
	h := &s.hosts[hi]
	c, ok := cl.conns[hi]
	cl.conns[hi] = conn{t: s.now, epoch: h.epoch}
	switch {
	case ok && c.epoch == h.epoch && s.now-c.t <= ConnIdleS:
		return 0
	case !ok && h.epoch == 0 && s.now < ConnIdleS:
		r := s.pr.pairRate[ci] * h.descriptor(s).Capacity
		if s.rngProbe.Float64() < 1-math.Exp(-r*(ConnIdleS-s.now)) {
			return 0
		}
	}
	if len(cl.conns) > max(cl.connPrune, 1024) {
		// The connection manager closed the idle ones (amortised: the
		// next sweep waits until the map has doubled again).
		for k, c := range cl.conns {
			if s.now-c.t > ConnIdleS {
				delete(cl.conns, k)
			}
		}
		cl.connPrune = 2 * len(cl.conns)
	}
	s.pr.connSetups++
	s.pr.hostBytes += ConnSetupBytes
	s.pr.clientBytes[ci] += ConnSetupBytes
	return 1
}

func (p *prober) alloc() int32 {
	if n := len(p.free); n > 0 {
		ri := p.free[n-1]
		p.free = p.free[:n-1]
		return ri
	}
	p.rounds = append(p.rounds, probeRound{})
	return int32(len(p.rounds) - 1)
}

func (p *prober) release(ri int32) {
	r := &p.rounds[ri]
	r.hosts, r.states, r.dead, r.piggy = r.hosts[:0], r.states[:0], r.dead[:0], r.piggy[:0]
	r.exclude = nil
	p.free = append(p.free, ri)
}

// probe starts a probe round for task ti: Probe.D hosts of its client's
// view (scheduler.ProbeTargets), each replying with its state now. The
// round ends (evProbed) when the slowest reply is in. It reports false
// when the client's view has nobody to probe.
func (s *sim) probe(ti int32, hedge bool, round int, exclude map[string]bool) bool {
	t := &s.tasks[ti]
	cl := &s.clients[t.client]
	p := s.pr
	if p.cfg.Rebootstrap(len(cl.pview)) {
		s.rebootstrap(t.client)
	}
	p.targets = scheduler.ProbeTargets(p.targets[:0], cl.pview, p.cfg.D, exclude, cl.rng)
	if len(p.targets) == 0 {
		return false
	}
	ri := p.alloc()
	r := &p.rounds[ri]
	r.task, r.ver, r.round, r.hedge, r.exclude = ti, t.ver, round, hedge, exclude
	p.nRounds++
	wait := 0.0
	for _, vi := range p.targets {
		id := cl.pview[vi].ID
		hi, live := s.resolve(id)
		p.probes++
		p.clientBytes[t.client] += ProbeRequestBytes
		if !live {
			// The dial fails or the peer does not answer: the round waits
			// out the timeout.
			p.failed++
			r.dead = append(r.dead, id)
			wait = max(wait, p.timeout)
			continue
		}
		h := &s.hosts[hi]
		if p.probers != nil {
			p.probers[hi].Add(p.clientIDs[t.client])
		}
		rtts := 1 + s.connect(t.client, hi)
		wait = max(wait, rtts*h.rtt)
		h.advance(s, s.now)
		r.hosts = append(r.hosts, hi)
		r.states = append(r.states, h.beacon(s))
		p.idx = scheduler.ShuffleAnswer(p.idx[:0], p.views[hi], p.cfg.Piggyback, s.rngProbe)
		for _, j := range p.idx {
			r.piggy = append(r.piggy, p.views[hi][j])
		}
		b := float64(ProbeRequestBytes + ProbeReplyBytes + len(p.idx)*DescriptorBytes)
		p.hostBytes += b
		p.clientBytes[t.client] += b - ProbeRequestBytes
	}
	s.q.push(s.now+wait, evProbed, ri, 0)
	return true
}

// rebootstrap refills client ci's view with ViewSize random hosts online
// now, as a DHT random walk would find them; the walk's bytes are booked
// as one shuffle's answer per entry.
func (s *sim) rebootstrap(ci int32) {
	p := s.pr
	cl := &s.clients[ci]
	for range 4 * p.cfg.ViewSize {
		if len(cl.pview) >= p.cfg.ViewSize {
			break
		}
		h := &s.hosts[s.rngProbe.IntN(len(s.hosts))]
		if !h.online {
			continue
		}
		cl.pview = scheduler.Absorb(cl.pview, []scheduler.Descriptor{h.descriptor(s)}, "", p.cfg.ViewSize, s.rngProbe)
	}
	b := float64(ShuffleOverheadBytes + p.cfg.ViewSize*DescriptorBytes)
	p.clientBytes[ci] += b
	p.hostBytes += b
	p.rebootstraps++
}

// probed handles the end of probe round ri: the client learns the
// descriptors the replies carried and forgets the hosts that did not
// answer, then places the task, or decides on a hedge.
func (s *sim) probed(ri int32) {
	p := s.pr
	r := &p.rounds[ri]
	t := &s.tasks[r.task]
	cl := &s.clients[t.client]
	for _, id := range r.dead {
		cl.pview = scheduler.Forget(cl.pview, id)
		cl.mem.Forget(id)
	}
	for i := range r.states {
		cl.mem.Add(r.states[i])
	}
	cl.pview = scheduler.Absorb(cl.pview, r.piggy, "", p.cfg.ViewSize, cl.rng)
	if r.hedge {
		s.probedHedge(r)
	} else {
		s.probedPlace(r)
	}
	p.release(ri)
}

// probedPlace ranks the replies and offers the task down the ranking; when
// nobody takes it, it probes other hosts (scheduler.ProbeConfig.ProbeAgain)
// or waits RetryS.
func (s *sim) probedPlace(r *probeRound) {
	ti := r.task
	t := &s.tasks[ti]
	if t.done {
		return
	}
	cl := &s.clients[t.client]
	req := s.probeRequest(t, r.exclude)
	view, hosts := s.rankView(cl, r)
	cl.cands = scheduler.RankProbed(cl.cands[:0], view, req, s.viewNow(), s.place)
	if s.offerProbed(ti, cl.cands, hosts) {
		return
	}
	if s.pr.cfg.ProbeAgain(r.round) {
		ex := make(map[string]bool, len(r.exclude)+len(r.hosts))
		for id := range r.exclude {
			ex[id] = true
		}
		for _, hi := range r.hosts {
			ex[s.hosts[hi].id] = true
		}
		if s.probe(ti, false, r.round+1, ex) {
			return
		}
	}
	s.res.Retries++
	s.q.push(s.now+s.cfg.RetryS, evRetry, ti, 0)
}

func (s *sim) probeRequest(t *task, exclude map[string]bool) scheduler.Request {
	sum := promptCID(t.prompt)
	return scheduler.Request{Model: protocol.DefaultModel, MemMB: 4096, Key: sum[:], Exclude: exclude}
}

// rankView is what client cl ranks after round r: its probe memory and the
// round's replies (ProbeMemory.ViewWith), or with no memory the replies
// alone, whose hosts are r.hosts.
func (s *sim) rankView(cl *client, r *probeRound) (scheduler.View, []int32) {
	if s.pr.cfg.Memory > 0 {
		return cl.mem.ViewWith(r.states), nil
	}
	return r.states, r.hosts
}

// offerProbed walks the ranked candidates of a probe round as offerAll
// does a view's: the first that accepts gets the task. hosts maps a
// candidate's Index to its host; nil means the candidates come from the
// client's memory and are found by ID. The memory learns the outcome: a
// charge for a placement, the host's state from a refusal (as
// Config.RefusalState), and that a host that left is gone.
func (s *sim) offerProbed(ti int32, cands []scheduler.Candidate, hosts []int32) bool {
	mem := s.clients[s.tasks[ti].client].mem
	for i, c := range cands {
		if i == maxAttempts {
			break
		}
		var hi int32
		if hosts != nil {
			hi = hosts[c.Index]
		} else {
			h, live := s.resolve(c.ID)
			if !live {
				s.res.Attempts++
				s.res.RefusedGone++
				s.tasks[ti].rtt += s.hosts[h].rtt
				mem.Forget(c.ID)
				continue
			}
			hi = h
		}
		switch s.offer(ti, hi) {
		case accepted:
			mem.Charge(c.ID)
			s.queuedHedge(ti, hi, c.WaitMs)
			return true
		case joined:
			return true
		case refusedGone:
			mem.Forget(c.ID)
		default:
			mem.Add(s.hosts[hi].beacon(s))
		}
	}
	return false
}

// queuedHedge schedules the first hedge look at task ti if host hi queued
// it.
func (s *sim) queuedHedge(ti, hi int32, waitMs float64) {
	if h := &s.hosts[hi]; s.cfg.Hedge && len(h.queue) > 0 && h.queue[len(h.queue)-1] == ti {
		s.q.push(s.now+s.hedgeAfter(waitMs/1000), evHedge, ti, s.tasks[ti].ver)
	}
}

// probedHedge is the hedge's decision on a probe round that left out the
// task's host: if the task is still queued where it was, the best reply is
// compared with the host's ETA (scheduler.Config.ShouldMove) as in hedge.
func (s *sim) probedHedge(r *probeRound) {
	ti := r.task
	t := &s.tasks[ti]
	h, i, ok := s.stillQueued(ti, r.ver)
	if !ok {
		return
	}
	cl := &s.clients[t.client]
	req := s.probeRequest(t, r.exclude)
	view, hosts := s.rankView(cl, r)
	cl.cands = scheduler.RankProbed(cl.cands[:0], view, req, s.viewNow(), s.place)
	s.moveQueued(ti, h, i, cl.cands, func(c []scheduler.Candidate) bool { return s.offerProbed(ti, c, hosts) })
}

// shuffle is node a's periodic Cyclon shuffle (a ≥ 0: a host; otherwise a
// client, clientNode): it sends part of its view to its oldest neighbour,
// which answers with part of its own, and both merge what they got.
func (s *sim) shuffle(a int32, epoch uint32) {
	p := s.pr
	var (
		view *[]scheduler.Descriptor
		self scheduler.Descriptor
		ci   int32 = -1
	)
	if a >= 0 {
		h := &s.hosts[a]
		if !h.online || h.epoch != epoch {
			return
		}
		view, self = &p.views[a], h.descriptor(s)
	} else {
		ci = -1 - a
		view = &s.clients[ci].pview
	}
	if s.arrivalsDone {
		return // nobody measures the drain's views
	}
	s.q.push(s.now+p.every, evShuffle, a, epoch)
	partner, rest, offer, sent, ok := scheduler.ShuffleStart(*view, self, p.cfg.ShuffleLen, p.offer, p.idx, s.rngProbe)
	p.offer, p.idx = offer, sent
	if !ok {
		return
	}
	*view = rest
	p.shuffles++
	qi, live := s.resolve(partner.ID)
	b := float64(ShuffleOverheadBytes + len(offer)*DescriptorBytes)
	if !live {
		// Nobody answers: the partner is forgotten (it was taken out of
		// the view), and what was offered stays. Only the initiator sent.
		if ci >= 0 {
			p.clientBytes[ci] += b
		} else {
			p.hostBytes += b
			p.shuffleHost += b
		}
		return
	}
	if ci >= 0 {
		s.connect(ci, qi)
	} else {
		b += ConnSetupBytes
	}
	q := &s.hosts[qi]
	qv := p.views[qi]
	p.ans = scheduler.ShuffleAnswer(p.ans[:0], qv, p.cfg.ShuffleLen, s.rngProbe)
	ans := p.ans
	p.recv = p.recv[:0]
	for _, j := range ans {
		p.recv = append(p.recv, qv[j])
	}
	p.views[qi] = scheduler.ShuffleMerge(qv, ans, offer, q.id, p.cfg.ViewSize)
	*view = scheduler.ShuffleMerge(*view, sent, p.recv, self.ID, p.cfg.ViewSize)
	b += float64(len(p.recv) * DescriptorBytes)
	s.bookShuffle(ci, b)
}

// bookShuffle counts b bytes of a shuffle at both ends: the partner is a
// host, the initiator client ci or, when ci < 0, a host.
func (s *sim) bookShuffle(ci int32, b float64) {
	p := s.pr
	p.hostBytes += b
	p.shuffleHost += b
	if ci >= 0 {
		p.clientBytes[ci] += b
		return
	}
	p.hostBytes += b
	p.shuffleHost += b
}

// probeJoined registers host h's new identity and makes it known as
// Cyclon's join does: ViewSize random walks from an introducer each end at
// a random host, which takes the newcomer's descriptor in place of a random
// entry of its view (scheduler.Absorb); the walks' bytes are booked (one
// connection and a descriptor each way per walk, TTL hops ignored). Its old
// view is kept (the machine remembers its peers); nobody has probed the
// new peer yet. Without this a new host would enter one view per shuffle
// period and sit idle, unknown, for most of its first minutes.
func (s *sim) probeJoined(h *host) {
	p := s.pr
	p.ids[h.id] = hostRef{idx: h.idx, epoch: h.epoch}
	if p.probers != nil {
		p.probers[h.idx] = scheduler.NewProbers(p.cfg.Notify)
		p.announced[h.idx] = 0
	}
	self := []scheduler.Descriptor{h.descriptor(s)}
	for range p.cfg.ViewSize {
		j := s.rngProbe.IntN(len(s.hosts))
		if q := &s.hosts[j]; int32(j) == h.idx || !q.online {
			continue
		}
		p.views[j] = scheduler.Absorb(p.views[j], self, s.hosts[j].id, p.cfg.ViewSize, s.rngProbe)
		b := float64(ShuffleOverheadBytes + 2*DescriptorBytes + ConnSetupBytes)
		p.hostBytes += 2 * b
		p.shuffleHost += 2 * b
	}
	s.q.push(s.now+p.every, evShuffle, h.idx, h.epoch)
}

// notify sends the idle notices host h owes (scheduler.NoticesDue) to
// clients that probed it (scheduler.Probers.Pick): its state now, which
// reaches the client half a round trip later (plus one for a new
// connection).
func (s *sim) notify(h *host) {
	p := s.pr
	if !h.online {
		return
	}
	send, now := scheduler.NoticesDue(h.slots-len(h.running), len(h.queue), h.accepting(s), int(p.announced[h.idx]))
	p.announced[h.idx] = int32(now)
	for range send {
		id, ok := p.probers[h.idx].Pick(s.rngProbe)
		if !ok {
			return
		}
		ci := p.clientIdx[id]
		h.advance(s, s.now)
		var ni int32
		if n := len(p.freeNotice); n > 0 {
			ni = p.freeNotice[n-1]
			p.freeNotice = p.freeNotice[:n-1]
		} else {
			p.notices = append(p.notices, notice{})
			ni = int32(len(p.notices) - 1)
		}
		p.notices[ni] = notice{client: ci, state: h.beacon(s)}
		p.nNotices++
		p.hostBytes += NoticeBytes
		p.clientBytes[ci] += NoticeBytes
		lat := (0.5 + s.connect(ci, h.idx)) * h.rtt
		s.q.push(s.now+lat, evNotice, ni, 0)
	}
}

// noticed delivers idle notice ni to its client's memory.
func (s *sim) noticed(ni int32) {
	p := s.pr
	n := &p.notices[ni]
	cl := &s.clients[n.client]
	cl.mem.Add(n.state)
	p.freeNotice = append(p.freeNotice, ni)
}

// snapshot records the counters in c (warm-up end or last arrival).
func (p *prober) snapshot(s *sim, c *probeCount) {
	*c = probeCount{
		t:           s.now,
		host:        p.hostBytes,
		shuffleHost: p.shuffleHost,
		client:      slices.Clone(p.clientBytes),
		tasks:       len(s.tasks) - s.prefill,
		probes:      p.probes,
		connSetups:  p.connSetups,
		beacons:     s.res.Beacons,
		set:         true,
	}
}

// summarise fills the load-information figures of LoadProbe, as rates
// between the end of the warm-up and the last arrival.
func (p *prober) summarise(s *sim) {
	r := &s.res
	r.Probes, r.ProbesFailed, r.ProbeRounds = p.probes, p.failed, p.nRounds
	r.ConnSetups, r.Shuffles, r.IdleNotices, r.Rebootstraps = p.connSetups, p.shuffles, p.nNotices, p.rebootstraps
	if !p.last.set {
		p.snapshot(s, &p.last)
	}
	w, l := &p.warm, &p.last
	if !w.set {
		w.client = make([]float64, len(l.client))
	}
	T, tasks := l.t-w.t, l.tasks-w.tasks
	if !(T > 0) || tasks <= 0 {
		return
	}
	hosts := float64(len(s.hosts))
	// Beacons that gossip would carry, over the same span (in this mode
	// they stop with the arrivals).
	r.BeaconsPerHostS = float64(l.beacons-w.beacons) / hosts / T
	r.GossipBytesPerNodeS = GossipModel(len(s.hosts), r.BeaconsPerHostS)
	r.ProbesPerTask = float64(l.probes-w.probes) / float64(tasks)
	r.ConnSetupsPerTask = float64(l.connSetups-w.connSetups) / float64(tasks)
	host := l.host - w.host
	r.ProbeBytesPerHostS = host / hosts / T
	r.ShuffleBytesPerHostS = (l.shuffleHost - w.shuffleHost) / hosts / T
	sum := 0.0
	for i := range l.client {
		b := l.client[i] - w.client[i]
		sum += b
		r.ProbeBytesPerClientSMax = max(r.ProbeBytesPerClientSMax, b/T)
	}
	r.ProbeBytesPerClientS = sum / float64(len(l.client)) / T
	r.ProbeBytesPerTask = sum / float64(tasks)
	// Per node: every byte, both ends, spread over the hosts, as if the
	// clients were hosts submitting their even share.
	r.LoadInfoBytesPerNodeS = (host + sum) / hosts / T
}
