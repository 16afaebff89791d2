package scheduler

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// Load information by probing (issue 14; docs/scheduling.md, "Load
// information at scale"). Gossiping every host's beacon to every node costs
// each node bytes in proportion to the swarm: 4.8 MB/s at 1,000 hosts. A
// client needs the load of a few hosts per task, not of all of them, so:
//
//  1. Every node keeps a peer-sampling view: ViewSize descriptors of other
//     hosts (who they are and their nominal capacity; no load), kept a
//     fresh random sample by a Cyclon shuffle with one neighbour every
//     ShuffleEvery (ShuffleStart, ShuffleAnswer, ShuffleMerge) and, on a
//     client, by the descriptors each probe reply carries (Absorb).
//  2. To place a task a client draws D hosts from its view, each with
//     probability proportional to its capacity (ProbeTargets), and probes
//     them; each answers with its current beacon, exact but for the round
//     trip, and Piggyback descriptors of its own view.
//  3. A host whose slot comes free with nobody queued tells one of the
//     clients that probed it last (Probers, NoticesDue): an idle notice.
//  4. The client ranks the replies with what it remembers of hosts it
//     heard of with a free slot (ProbeMemory, fed by replies and notices)
//     using Place (RankProbed), offers the task to the best, and on a
//     refusal to the next. When none takes it, it probes again with other
//     hosts, up to Rounds rounds (ProbeAgain), then waits. A view too small
//     to draw from is refilled (Rebootstrap).
//  5. The queue hedge (hedge.go) works as before; its "best elsewhere" is a
//     probe round that leaves out the task's host.
//
// A node's load-information bytes are then the probes of the tasks it
// submits (D each), the probes it answers (D per task placed anywhere,
// shared by the hosts in proportion to their capacity), an idle notice per
// slot of its own that comes free with nobody queued, and one shuffle per
// period. None of them grows with the number of hosts.
//
// Everything here is pure: the node and the simulator (scheduler/sim) do
// the I/O, keep the time and give the random source.

// Descriptor is one entry of a peer-sampling view: a host a node has heard
// of, without its load.
type Descriptor struct {
	ID string
	// Age counts the shuffle periods since the host itself issued the
	// descriptor (Cyclon's age). A host's own descriptor enters the swarm
	// with age 0 each time it shuffles, so an entry for a host that left
	// only grows older and is the first to be shuffled away.
	Age int
	// Capacity is the host's nominal throughput in tasks per second at full
	// clock, slots × 1000 / its service time in ms; it weighs the probe
	// draw. ≤ 0 means unknown.
	Capacity float64
}

// ProbeConfig tunes load information by probing. The zero value is not
// useful; start from DefaultProbeConfig. The defaults were chosen in the
// simulator (gpunet sim --load-info probe) against the targets of issue 14.
type ProbeConfig struct {
	// D is how many hosts a client probes for one task. Default 3: probes
	// alone would need about 16 to match the oracle at 90 % load; with idle
	// notices and the memory, 1 to 4 are within 4 % of each other at 1,000
	// hosts, and at 30,000 hosts 3 had a 4 % lower p99 than 2. Each probe a
	// task costs about 0.45 kB/s per node (docs/scheduling.md, "Load
	// information at scale").
	D int
	// ViewSize is the number of descriptors a node's view holds (Cyclon's
	// c). Default 32: enough that a capacity-weighted draw of D has real
	// choice, small enough to keep the view in every reply's shadow
	// (Cyclon's evaluation uses 20–50).
	ViewSize int
	// ShuffleLen is how many descriptors one shuffle exchanges each way
	// (Cyclon's l). Default 8, a quarter of the view, so a view turns over
	// in a few periods.
	ShuffleLen int
	// ShuffleEvery is the shuffle period. Default 30 s: shuffles keep the
	// hosts' views random and drop hosts that left (an entry that fails a
	// shuffle or a probe is forgotten); a busy client's view is renewed
	// much faster by the descriptors its probes bring back, so the period
	// need only follow churn. Each shuffle costs a connection to a new
	// neighbour, which dominates a host's load-information bytes at 10 s.
	ShuffleEvery time.Duration
	// Piggyback is how many descriptors of its view a host returns with a
	// probe reply. Default 2: a client then learns 2·D new hosts per task,
	// more than the D it uses, so its view stays a fresh sample however
	// fast it submits, at about 40 % of a probe's bytes.
	Piggyback int
	// Rounds is how many probe rounds one placement may take before the
	// client waits and tries again. Default 3: a round in which every
	// probed host refuses means the probed part of the swarm is full or
	// too hot, and fresh hosts are likelier to take the task than the same
	// ones a moment later; three rounds of D hosts is as many offers as
	// the gossip dispatcher makes before it waits.
	Rounds int
	// Memory is how many host states a client keeps (ProbeMemory) and
	// ranks with each new round's replies. Default 256: see ProbeMemory;
	// ranking 256 states costs a quarter of Place over 1,000 peers
	// (BenchmarkPlace1000), 10–15 µs.
	Memory int
	// Notify is how many of the clients that probed it last a host
	// remembers (Probers), to tell one of them when a slot comes free with
	// nobody queued (NoticesDue). 0 turns idle notices off. Default 4.
	Notify int
	// Timeout is how long a client waits for probe replies before ranking
	// those it has. Default 500 ms: well above a round trip plus a new
	// connection on the slowest links (2 × 80 ms in the simulator); only a
	// host that left holds a round that long.
	Timeout time.Duration
}

// DefaultProbeConfig returns the defaults described on ProbeConfig.
func DefaultProbeConfig() ProbeConfig {
	return ProbeConfig{
		D:            3,
		ViewSize:     32,
		ShuffleLen:   8,
		ShuffleEvery: 30 * time.Second,
		Piggyback:    2,
		Rounds:       3,
		Memory:       256,
		Notify:       4,
		Timeout:      500 * time.Millisecond,
	}
}

// maxProbeView bounds ViewSize so the draw's weights fit on the stack;
// maxProbeMemory bounds Memory, which is ranked for every task.
const (
	maxProbeView   = 512
	maxProbeMemory = 4096
)

// Validate reports the first setting probing cannot work with.
func (c ProbeConfig) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadConfig}, a...)...)
	}
	switch {
	case c.D < 1 || c.D > maxChoices:
		return bad("probe D %d must be in 1..%d", c.D, maxChoices)
	case c.ViewSize < c.D || c.ViewSize > maxProbeView:
		return bad("probe ViewSize %d must be in D..%d", c.ViewSize, maxProbeView)
	case c.ShuffleLen < 1 || c.ShuffleLen > c.ViewSize:
		return bad("probe ShuffleLen %d must be in 1..ViewSize", c.ShuffleLen)
	case c.ShuffleEvery <= 0:
		return bad("probe ShuffleEvery %v must be positive", c.ShuffleEvery)
	case c.Piggyback < 0 || c.Piggyback > c.ViewSize:
		return bad("probe Piggyback %d must be in 0..ViewSize", c.Piggyback)
	case c.Rounds < 1:
		return bad("probe Rounds %d must be ≥ 1", c.Rounds)
	case c.Memory < 0 || c.Memory > maxProbeMemory:
		return bad("probe Memory %d must be in 0..%d", c.Memory, maxProbeMemory)
	case c.Notify < 0 || c.Notify > maxProbers:
		return bad("probe Notify %d must be in 0..%d", c.Notify, maxProbers)
	case c.Notify > 0 && c.Memory == 0:
		return bad("probe Notify needs a Memory to keep the notices in")
	case c.Timeout <= 0:
		return bad("probe Timeout %v must be positive", c.Timeout)
	}
	return nil
}

// ProbeAgain reports whether a placement whose round-th probe round (from
// 1) placed nothing should probe other hosts at once; otherwise the client
// waits and tries again later.
func (c ProbeConfig) ProbeAgain(round int) bool { return round < c.Rounds }

// Rebootstrap reports whether a client's view of n entries is too small
// to draw D hosts from: it has forgotten most of it to hosts that left and
// heard of too few new ones (a client that has submitted nothing for a
// long time while the swarm churned). It should then fetch a fresh sample,
// as it did on start (random peers from the DHT).
func (c ProbeConfig) Rebootstrap(n int) bool { return n < c.D }

// ProbeTargets appends to dst the indices of up to d distinct entries of
// view to probe, drawn without replacement, each with probability
// proportional to its Capacity; an entry of unknown capacity weighs the
// mean of the known ones (a new host is taken as average). Entries whose ID
// is in exclude are not drawn. rng must not be nil.
//
// Why weighted: in a swarm of mixed cards a uniform draw finds the fast
// ones too rarely. In the simulator's default swarm the data-centre cards
// are 15 % of hosts but 46 % of the capacity, and two uniform probes miss
// them both half the time, which leaves the power of d choices near
// random (docs/scheduling.md, "The textbook case"). Weighted by capacity,
// each host is probed in proportion to the work it can do, and the choice
// among the probed compares like with like.
func ProbeTargets(dst []int, view []Descriptor, d int, exclude map[string]bool, rng *rand.Rand) []int {
	var buf [maxProbeView]float64
	w := buf[:0]
	if len(view) > maxProbeView {
		w = make([]float64, 0, len(view))
	}
	known, sum := 0, 0.0
	for _, e := range view {
		if e.Capacity > 0 && !math.IsInf(e.Capacity, 1) {
			known++
			sum += e.Capacity
		}
	}
	unknown := 1.0
	if known > 0 {
		unknown = sum / float64(known)
	}
	total := 0.0
	for _, e := range view {
		x := e.Capacity
		switch {
		case exclude[e.ID]:
			x = 0
		case !(x > 0) || math.IsInf(x, 1):
			x = unknown
		}
		w = append(w, x)
		total += x
	}
	base := len(dst)
	for len(dst)-base < d && total > 0 {
		x := rng.Float64() * total
		pick := -1
		for i, wi := range w {
			if wi == 0 {
				continue
			}
			pick = i // the last positive weight takes what rounding leaves
			if x < wi {
				break
			}
			x -= wi
		}
		if pick < 0 {
			break
		}
		dst = append(dst, pick)
		total -= w[pick]
		w[pick] = 0
		if total <= 0 {
			// Rounding: sum what is left rather than trust the difference.
			total = 0
			for _, wi := range w {
				total += wi
			}
		}
	}
	return dst
}

// RankProbed ranks the states probed hosts replied with, best first: Place
// with cfg over just them, but without Place's anti-herding draw. The draw
// exists because a gossiped view is seconds old and every client shares
// it; probed states are exact but for a round trip and each decision has
// its own random hosts, so among them the draw would only pick a worse one
// at random. The heat, thermal-limit, speed and service-time logic is
// Place's own.
func RankProbed(dst []Candidate, probed View, r Request, now time.Time, cfg Config) []Candidate {
	cfg.TopK = 1
	return AppendPlace(dst, probed, r, now, nil, cfg)
}

// ShuffleStart begins a shuffle on the initiating node (Cyclon's steps 1–4):
// it ages every entry of view by one period, takes the oldest out as the
// partner (ties: the first), and picks up to l−1 other entries at random to
// send along with self at age 0. A node that is not a host (self.ID empty)
// sends up to l entries and not itself. It returns the partner, the view
// without it (the same backing array), the offer (appended to offer[:0])
// and sent, the indices in rest of the entries offered, which
// ShuffleMerge may replace with what the partner answers. ok is false
// when view is empty.
func ShuffleStart(view []Descriptor, self Descriptor, l int, offer []Descriptor, sent []int, rng *rand.Rand) (partner Descriptor, rest, offerOut []Descriptor, sentOut []int, ok bool) {
	if len(view) == 0 {
		return Descriptor{}, view, offer[:0], sent[:0], false
	}
	oldest := 0
	for i := range view {
		view[i].Age++
		if view[i].Age > view[oldest].Age {
			oldest = i
		}
	}
	partner = view[oldest]
	last := len(view) - 1
	view[oldest] = view[last]
	rest = view[:last]
	offer = offer[:0]
	n := l
	if self.ID != "" {
		self.Age = 0
		offer = append(offer, self)
		n--
	}
	sent = ShuffleAnswer(sent[:0], rest, n, rng)
	for _, i := range sent {
		offer = append(offer, rest[i])
	}
	return partner, rest, offer, sent, true
}

// ShuffleAnswer appends to dst the indices of up to l distinct entries of
// view chosen uniformly at random: what the partner of a shuffle sends back
// (Cyclon's step 5, the receiving side), and what a host returns with a
// probe reply.
func ShuffleAnswer(dst []int, view []Descriptor, l int, rng *rand.Rand) []int {
	base := len(dst)
	n := len(view)
	if l >= n {
		for i := range n {
			dst = append(dst, i)
		}
		return dst
	}
	// Floyd's algorithm: l distinct draws from n without a permutation of n.
	for j := n - l; j < n; j++ {
		x := rng.IntN(j + 1)
		for _, y := range dst[base:] {
			if y == x {
				x = j
				break
			}
		}
		dst = append(dst, x)
	}
	return dst
}

// ShuffleMerge adds what a shuffle brought to a node's view (Cyclon's steps
// 6–7): received entries for self or already in view are dropped (a
// duplicate keeps the younger age, and if it was among those sent its
// place is no longer given up); the rest fill free places up to size, then
// replace the entries at the indices sent (those the node gave away in this
// shuffle), in order; what still does not fit is dropped. It returns the
// view, which may share received's entries but not its array.
func ShuffleMerge(view []Descriptor, sent []int, received []Descriptor, self string, size int) []Descriptor {
	var keepBuf [maxProbeView]bool
	keep := keepBuf[:0]
	if len(sent) <= maxProbeView {
		keep = keepBuf[:len(sent)]
	} else {
		keep = make([]bool, len(sent))
	}
	for _, e := range received {
		if j := indexOf(view, e.ID); j >= 0 {
			view[j].Age = min(view[j].Age, e.Age)
			if k := slices.Index(sent, j); k >= 0 {
				keep[k] = true
			}
		}
	}
	k := 0
	for _, e := range received {
		if e.ID == "" || e.ID == self || indexOf(view, e.ID) >= 0 {
			continue
		}
		for k < len(sent) && keep[k] {
			k++
		}
		switch {
		case len(view) < size:
			view = append(view, e)
		case k < len(sent):
			view[sent[k]] = e
			k++
		}
	}
	return view
}

// Absorb adds descriptors a probe reply carried to a client's view: those
// for self or already there are dropped, the rest fill free places up to
// size, then each replaces an entry chosen uniformly at random.
//
// Why at random: the entries just probed would be the obvious ones to
// replace, but the capacity-weighted draw probes the fast hosts most, and
// the view would drain of them. Nor the oldest by Cyclon age: the ages
// that replies carry are older than the client's own bootstrap entries,
// which would then never leave. A random victim keeps the view a uniform
// sample whatever was probed; an entry for a host that left goes when a
// probe to it fails (Forget).
func Absorb(view []Descriptor, received []Descriptor, self string, size int, rng *rand.Rand) []Descriptor {
	for _, e := range received {
		if e.ID == "" || e.ID == self || indexOf(view, e.ID) >= 0 {
			continue
		}
		if len(view) < size {
			view = append(view, e)
			continue
		}
		if len(view) == 0 {
			return view
		}
		view[rng.IntN(len(view))] = e
	}
	return view
}

// Forget removes the entry for id from view, as when a probe or a shuffle
// to it failed: the host has most likely left. Order is not kept.
func Forget(view []Descriptor, id string) []Descriptor {
	if i := indexOf(view, id); i >= 0 {
		last := len(view) - 1
		view[i] = view[last]
		view = view[:last]
	}
	return view
}

// ProbeMemory is a client's memory of the hosts its probes and idle
// notices found with a free slot: their last states, charged with the
// client's own placements since (PeerState.Charge) and updated by what
// later replies and refusals said. A client ranks it, the new round's
// replies included, instead of the replies alone.
//
// Why: D fresh replies are a small choice; a busy client probes hundreds
// or thousands of hosts a second, and a host it found idle a fraction of a
// second ago most likely still is. Place ages the states (AgeDrain) and
// drops them past MaxStaleness, as it does beacons, and the client's own
// charges keep it from sending two tasks to the one host it saw idle. A
// refused offer costs a round trip, after which the next candidate is
// tried.
//
// Only a host with a free slot enters (one already remembered is updated
// whatever its state): most probed hosts of a busy swarm are full, and a
// memory of them would push out the few worth a task. In the simulator
// at 30,000 hosts that took the mean from 3.32 to 3.20 s, and a memory of
// 256 beat one of 64 by 5 % of the mean and p99 for clients placing
// thousands of tasks a second, whose 64 last replies span a few
// milliseconds. The memory is bounded (ranking it is O(size) per task,
// never O(hosts)) and costs no bytes. It is not safe for concurrent use.
type ProbeMemory struct {
	size  int
	view  View
	index map[string]int
}

// NewProbeMemory returns an empty memory of at most size states.
func NewProbeMemory(size int) *ProbeMemory {
	size = max(size, 0)
	// The spare capacity holds a round's replies for ViewWith.
	return &ProbeMemory{size: size, view: make(View, 0, size+maxChoices), index: make(map[string]int, size)}
}

// Add records a host's state from a probe reply, an idle notice or a
// refusal: it replaces what the memory held for that host; a host not
// remembered enters only with a free slot, in place of the entry with the
// oldest Updated when the memory is full.
func (m *ProbeMemory) Add(p PeerState) {
	if i, ok := m.index[p.ID]; ok {
		m.view[i] = p
		return
	}
	if !p.Accepting || p.Busy+p.QueueLen+p.Pending >= max(p.Slots, 1) {
		return // no free slot: not worth a place
	}
	if m.size == 0 {
		return
	}
	if len(m.view) < m.size {
		m.index[p.ID] = len(m.view)
		m.view = append(m.view, p)
		return
	}
	old := 0
	for i := range m.view {
		if m.view[i].Updated.Before(m.view[old].Updated) {
			old = i
		}
	}
	delete(m.index, m.view[old].ID)
	m.index[p.ID] = old
	m.view[old] = p
}

// Charge records that the client placed a task on host id (PeerState.Charge).
func (m *ProbeMemory) Charge(id string) {
	if i, ok := m.index[id]; ok {
		m.view[i].Charge()
	}
}

// Forget drops host id, as when it left.
func (m *ProbeMemory) Forget(id string) {
	i, ok := m.index[id]
	if !ok {
		return
	}
	last := len(m.view) - 1
	delete(m.index, id)
	if i != last {
		m.view[i] = m.view[last]
		m.index[m.view[i].ID] = i
	}
	m.view = m.view[:last]
}

// View is the remembered states, for RankProbed; a Candidate's Index is a
// position in it. It is valid until the next Add, Forget or ViewWith, and
// the caller must not modify it.
func (m *ProbeMemory) View() View { return m.view }

// ViewWith is View followed by those states of replies (a probe round's,
// already given to Add) whose hosts the memory does not hold: a round's
// busy hosts stay candidates, so a task can still queue at the best of
// them when nobody known is idle. It is valid as View is.
func (m *ProbeMemory) ViewWith(replies View) View {
	v := m.view
	for i := range replies {
		if _, ok := m.index[replies[i].ID]; !ok {
			v = append(v, replies[i])
		}
	}
	return v
}

// Idle notices are the pull half of probing. In a busy swarm a free slot
// is rare and brief, and D random probes seldom find one: the host itself
// is the first to know. So when a slot comes free with nobody queued, the
// host sends its state, as a probe reply, to one of the clients that
// probed it last, picked at random (so each client hears in proportion to
// how much it probes); the client adds it to its ProbeMemory, where Place
// ranks it first. This is join-the-idle-queue (Lu et al., 2011) with the
// probing clients as the idle queues: at most one message per task that
// completes, and none when every slot is busy.

// maxProbers bounds ProbeConfig.Notify.
const maxProbers = 64

// Probers is a host's record of the last clients that probed it.
type Probers struct {
	ids  []string
	next int
}

// NewProbers returns a record of the last n probers.
func NewProbers(n int) Probers { return Probers{ids: make([]string, 0, max(n, 0))} }

// Add records a probe from client id; the oldest record goes when full.
func (p *Probers) Add(id string) {
	if cap(p.ids) == 0 {
		return
	}
	if len(p.ids) < cap(p.ids) {
		p.ids = append(p.ids, id)
		return
	}
	p.ids[p.next] = id
	p.next = (p.next + 1) % len(p.ids)
}

// Pick is the client to send an idle notice to: one of the records,
// uniformly. ok is false when there is none.
func (p *Probers) Pick(rng *rand.Rand) (id string, ok bool) {
	if len(p.ids) == 0 {
		return "", false
	}
	return p.ids[rng.IntN(len(p.ids))], true
}

// NoticesDue is how many idle notices a host owes, given its free slots,
// the tasks queued, whether it accepts work, and how many free slots it
// has already announced: one for each slot that came free, with nobody
// queued, since it last announced. It returns the notices to send and the
// count of announced slots to keep for next time.
func NoticesDue(free, queued int, accepting bool, announced int) (send, nowAnnounced int) {
	idle := max(free, 0)
	if queued > 0 || !accepting {
		idle = 0
	}
	return max(idle-announced, 0), idle
}

func indexOf(view []Descriptor, id string) int {
	for i := range view {
		if view[i].ID == id {
			return i
		}
	}
	return -1
}
