package scheduler

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func desc(id string, capacity float64) Descriptor { return Descriptor{ID: id, Capacity: capacity} }

func TestProbeConfigValidate(t *testing.T) {
	if err := DefaultProbeConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(c *ProbeConfig){
		func(c *ProbeConfig) { c.D = 0 },
		func(c *ProbeConfig) { c.D = maxChoices + 1 },
		func(c *ProbeConfig) { c.ViewSize = c.D - 1 },
		func(c *ProbeConfig) { c.ViewSize = maxProbeView + 1 },
		func(c *ProbeConfig) { c.ShuffleLen = 0 },
		func(c *ProbeConfig) { c.ShuffleLen = c.ViewSize + 1 },
		func(c *ProbeConfig) { c.ShuffleEvery = 0 },
		func(c *ProbeConfig) { c.Piggyback = -1 },
		func(c *ProbeConfig) { c.Rounds = 0 },
		func(c *ProbeConfig) { c.Memory = -1 },
		func(c *ProbeConfig) { c.Memory = maxProbeMemory + 1 },
		func(c *ProbeConfig) { c.Notify = -1 },
		func(c *ProbeConfig) { c.Memory = 0 }, // notices need a memory
		func(c *ProbeConfig) { c.Timeout = 0 },
	}
	for i, m := range bad {
		c := DefaultProbeConfig()
		m(&c)
		if err := c.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("case %d: got %v, want ErrBadConfig", i, err)
		}
	}
	c := DefaultProbeConfig()
	c.Memory, c.Notify = 0, 0
	if err := c.Validate(); err != nil {
		t.Errorf("no memory and no notices: %v", err)
	}
}

func TestProbeAgain(t *testing.T) {
	c := DefaultProbeConfig()
	c.Rounds, c.D = 3, 3
	for round, want := range map[int]bool{1: true, 2: true, 3: false, 4: false} {
		if got := c.ProbeAgain(round); got != want {
			t.Errorf("ProbeAgain(%d) = %v with 3 rounds", round, got)
		}
	}
	for n, want := range map[int]bool{0: true, 2: true, 3: false, 32: false} {
		if got := c.Rebootstrap(n); got != want {
			t.Errorf("Rebootstrap(%d) = %v with D = 3", n, got)
		}
	}
}

// TestProbeTargetsWeighted: draws are distinct, skip excluded entries and
// come out in proportion to capacity; unknown capacity weighs the mean.
func TestProbeTargetsWeighted(t *testing.T) {
	view := []Descriptor{desc("slow", 1), desc("fast", 4), desc("unknown", 0), desc("mid", 2), desc("gone", 3)}
	exclude := map[string]bool{"gone": true}
	rng := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	const n = 40000
	var dst []int
	for range n {
		dst = ProbeTargets(dst[:0], view, 1, exclude, rng)
		if len(dst) != 1 {
			t.Fatalf("drew %d targets, want 1", len(dst))
		}
		counts[view[dst[0]].ID]++
	}
	if counts["gone"] != 0 {
		t.Fatalf("an excluded entry was drawn %d times", counts["gone"])
	}
	// Weights: slow 1, fast 4, mid 2, unknown the mean of the known
	// capacities, (1+4+2+3)/4 = 2.5 (the excluded entry's capacity still
	// counts: it is known). Total 9.5.
	want := map[string]float64{"slow": 1 / 9.5, "fast": 4 / 9.5, "mid": 2 / 9.5, "unknown": 2.5 / 9.5}
	for id, p := range want {
		got := float64(counts[id]) / n
		if math.Abs(got-p) > 0.01 {
			t.Errorf("%s drawn %.3f of the time, want %.3f", id, got, p)
		}
	}

	// d > the drawable entries: all of them, distinct.
	dst = ProbeTargets(dst[:0], view, 10, exclude, rng)
	if len(dst) != 4 {
		t.Fatalf("drew %d of 4 drawable entries", len(dst))
	}
	seen := map[int]bool{}
	for _, i := range dst {
		if seen[i] || view[i].ID == "gone" {
			t.Fatalf("targets %v: repeated or excluded", dst)
		}
		seen[i] = true
	}
	// Appends to dst.
	dst = ProbeTargets([]int{-7}, view, 2, nil, rng)
	if len(dst) != 3 || dst[0] != -7 {
		t.Fatalf("ProbeTargets did not append: %v", dst)
	}
	if got := ProbeTargets(nil, nil, 3, nil, rng); len(got) != 0 {
		t.Fatalf("empty view gave %v", got)
	}
}

// TestRankProbedBestFirst: among probed states, the best is first whatever
// the task key; Place with the default config draws its first candidate
// from the near-best pool instead, which is right for stale shared views
// but not for exact replies.
func TestRankProbedBestFirst(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var v View
	for i := range 20 {
		p := PeerState{
			ID: fmt.Sprintf("p%02d", i), Models: []string{"m"}, FreeMemMB: 1 << 20, Accepting: true,
			Slots: 1, Busy: 1, QueueLen: i % 3, ServiceMs: map[string]float64{"m": 4000 + 100*float64(i)},
			Speed: 1, Updated: now,
		}
		v = append(v, p)
	}
	v[13].Busy, v[13].QueueLen = 0, 0 // the only idle one
	cfg := DefaultConfig()
	drawn := 0
	for k := range 200 {
		r := Request{Model: "m", Key: []byte(fmt.Sprintf("task-%d", k))}
		c := RankProbed(nil, v, r, now, cfg)
		if len(c) != len(v) || c[0].ID != "p13" {
			t.Fatalf("key %d: first %s of %d, want p13", k, c[0].ID, len(c))
		}
		if !slices.IsSortedFunc(c, func(a, b Candidate) int { return byScore(a, b) }) {
			t.Fatalf("key %d: not in score order", k)
		}
		if Place(v, r, now, nil, cfg)[0].ID != "p13" {
			drawn++
		}
	}
	if drawn == 0 {
		t.Fatal("Place never drew another first: the test does not tell RankProbed from Place")
	}
	if cfg.TopK != DefaultConfig().TopK {
		t.Fatal("RankProbed changed the caller's config")
	}
}

// TestShuffle: one Cyclon exchange between two views, step by step.
func TestShuffle(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	p := []Descriptor{{ID: "a", Age: 1}, {ID: "b", Age: 5}, {ID: "c", Age: 2}, {ID: "d", Age: 0}}
	self := Descriptor{ID: "p", Age: 9, Capacity: 2}
	partner, rest, offer, sent, ok := ShuffleStart(p, self, 3, nil, nil, rng)
	if !ok || partner.ID != "b" || partner.Age != 6 {
		t.Fatalf("partner %+v, want b aged to 6", partner)
	}
	if len(rest) != 3 || indexOf(rest, "b") >= 0 {
		t.Fatalf("rest %v still holds the partner", rest)
	}
	for _, e := range rest {
		if e.ID == "a" && e.Age != 2 || e.ID == "d" && e.Age != 1 {
			t.Fatalf("entries not aged: %v", rest)
		}
	}
	if len(offer) != 3 || offer[0].ID != "p" || offer[0].Age != 0 || offer[0].Capacity != 2 {
		t.Fatalf("offer %v: want self at age 0 first, then 2 entries", offer)
	}
	if len(sent) != 2 {
		t.Fatalf("sent %v", sent)
	}
	for k, i := range sent {
		if rest[i] != offer[k+1] {
			t.Fatalf("sent index %d is %v, offered %v", i, rest[i], offer[k+1])
		}
	}

	// The partner answers with 3 of its entries and merges what it got.
	q := []Descriptor{{ID: "x"}, {ID: "y"}, {ID: "p", Age: 4}, {ID: "z"}}
	ans := ShuffleAnswer(nil, q, 3, rng)
	var recv []Descriptor
	for _, i := range ans {
		recv = append(recv, q[i])
	}
	q = ShuffleMerge(q, ans, offer, "b", 4)
	if i := indexOf(q, "p"); i < 0 || q[i].Age != 0 {
		t.Fatalf("partner's view %v: want p refreshed to age 0", q)
	}
	checkView(t, q, "b", 4)

	// The initiator merges the answer: self dropped, free place filled, then
	// what it sent replaced.
	rest = ShuffleMerge(rest, sent, recv, "p", 4)
	checkView(t, rest, "p", 4)
	if indexOf(rest, "p") >= 0 {
		t.Fatal("a view holds its own node")
	}
	if _, _, _, _, ok := ShuffleStart(nil, self, 3, nil, nil, rng); ok {
		t.Fatal("shuffle from an empty view")
	}
	// A node that is not a host offers l entries and not itself.
	_, _, offer, _, _ = ShuffleStart([]Descriptor{{ID: "a"}, {ID: "b"}, {ID: "c"}, {ID: "d"}}, Descriptor{}, 2, nil, nil, rng)
	if len(offer) != 2 || offer[0].ID == "" {
		t.Fatalf("client offer %v", offer)
	}
}

func checkView(t *testing.T, v []Descriptor, self string, size int) {
	t.Helper()
	if len(v) > size {
		t.Fatalf("view of %d > %d", len(v), size)
	}
	seen := map[string]bool{}
	for _, e := range v {
		if e.ID == self || e.ID == "" || seen[e.ID] {
			t.Fatalf("view %v: self, empty or duplicate entry", v)
		}
		seen[e.ID] = true
	}
}

// TestShuffleOverlay runs Cyclon among 200 nodes from views that know only
// their ring neighbours: views stay valid, every node stays known, and the
// overlay mixes (a node's view ends up far from its ring neighbourhood).
func TestShuffleOverlay(t *testing.T) {
	const n, c, l = 200, 12, 4
	rng := rand.New(rand.NewPCG(5, 6))
	id := func(i int) string { return fmt.Sprintf("n%03d", i) }
	views := make([][]Descriptor, n)
	for i := range views {
		for k := 1; k <= c; k++ {
			views[i] = append(views[i], Descriptor{ID: id((i + k) % n)})
		}
	}
	byID := map[string]int{}
	for i := range n {
		byID[id(i)] = i
	}
	var recv []Descriptor
	for range 50 { // periods
		for i := range n {
			partner, rest, offer, sent, ok := ShuffleStart(views[i], Descriptor{ID: id(i)}, l, nil, nil, rng)
			if !ok {
				t.Fatalf("node %d has an empty view", i)
			}
			j := byID[partner.ID]
			ans := ShuffleAnswer(nil, views[j], l, rng)
			recv = recv[:0]
			for _, k := range ans {
				recv = append(recv, views[j][k])
			}
			views[j] = ShuffleMerge(views[j], ans, offer, id(j), c)
			views[i] = ShuffleMerge(rest, sent, recv, id(i), c)
		}
	}
	indeg := make([]int, n)
	far := 0
	for i, v := range views {
		checkView(t, v, id(i), c)
		for _, e := range v {
			j := byID[e.ID]
			indeg[j]++
			if d := (j - i + n) % n; d > c {
				far++
			}
		}
	}
	if m := slices.Min(indeg); m == 0 {
		t.Fatal("a node is in nobody's view")
	}
	if frac := float64(far) / float64(n*c); frac < 0.8 {
		t.Fatalf("only %.2f of entries left the ring neighbourhood: the overlay did not mix", frac)
	}
}

// TestAbsorbTurnsOver: descriptors that replies bring replace entries at
// random, so a client's bootstrap entries leave however old the incoming
// ones are. (Replacing the oldest by Cyclon age kept the age-0 bootstrap
// entries for ever and left the client probing the same 30 hosts.)
func TestAbsorbTurnsOver(t *testing.T) {
	const c = 32
	rng := rand.New(rand.NewPCG(7, 8))
	var view []Descriptor
	for i := range c {
		view = append(view, Descriptor{ID: fmt.Sprintf("boot%d", i)})
	}
	for k := range 20 * c {
		in := []Descriptor{{ID: fmt.Sprintf("new%d", k), Age: 5}, {ID: "boot0", Age: 9}, {ID: "me"}}
		view = Absorb(view, in, "me", c, rng)
		checkView(t, view, "me", c)
	}
	left := 0
	for _, e := range view {
		if len(e.ID) > 4 && e.ID[:4] == "boot" {
			left++
		}
	}
	if left > 2 {
		t.Fatalf("%d of %d bootstrap entries still there after %d absorbed", left, c, 20*c)
	}
	// Free places fill first.
	if v := Absorb(nil, []Descriptor{{ID: "a"}, {ID: "b"}}, "", 4, rng); len(v) != 2 {
		t.Fatalf("Absorb into an empty view: %v", v)
	}
	if v := Forget([]Descriptor{{ID: "a"}, {ID: "b"}, {ID: "c"}}, "a"); len(v) != 2 || indexOf(v, "a") >= 0 {
		t.Fatalf("Forget: %v", v)
	}
}

// TestAbsorbKeepsMix: a client that draws probe targets by capacity and
// absorbs uniform descriptors keeps a view whose mix of fast and slow hosts
// is the swarm's.
func TestAbsorbKeepsMix(t *testing.T) {
	const c, hosts = 32, 2000
	rng := rand.New(rand.NewPCG(9, 10))
	capacity := func(i int) float64 {
		if i%20 < 3 { // 15 % fast hosts
			return 4
		}
		return 1
	}
	d := func(i int) Descriptor { return Descriptor{ID: fmt.Sprintf("h%d", i), Capacity: capacity(i)} }
	var view []Descriptor
	for range c {
		view = append(view, d(rng.IntN(hosts)))
	}
	fast, total := 0, 0
	var targets []int
	for k := range 20000 {
		targets = ProbeTargets(targets[:0], view, 3, nil, rng)
		var in []Descriptor
		for range 2 * len(targets) {
			in = append(in, d(rng.IntN(hosts)))
		}
		view = Absorb(view, in, "", c, rng)
		if k > 1000 {
			for _, e := range view {
				total++
				if e.Capacity > 1 {
					fast++
				}
			}
		}
	}
	if frac := float64(fast) / float64(total); math.Abs(frac-0.15) > 0.02 {
		t.Fatalf("fast hosts are %.3f of the view, %.2f of the swarm", frac, 0.15)
	}
}

func memState(id string, busy, queue, slots int, at time.Time) PeerState {
	return PeerState{ID: id, Accepting: true, Slots: slots, Busy: busy, QueueLen: queue, Updated: at}
}

func TestProbeMemory(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	m := NewProbeMemory(3)
	m.Add(memState("full", 1, 0, 1, at(0))) // no free slot: not remembered
	m.Add(memState("queued", 0, 1, 1, at(0)))
	m.Add(PeerState{ID: "paused", Slots: 1, Updated: at(0)})
	if len(m.View()) != 0 {
		t.Fatalf("hosts without a free slot remembered: %v", m.View())
	}
	m.Add(memState("idle1", 0, 0, 1, at(1))) // enters
	m.Add(memState("dc", 1, 0, 2, at(2)))    // one of two slots free: enters
	m.Add(memState("idle2", 0, 0, 1, at(3)))
	ids := func() []string {
		var s []string
		for _, p := range m.View() {
			s = append(s, p.ID)
		}
		slices.Sort(s)
		return s
	}
	if got := ids(); !slices.Equal(got, []string{"dc", "idle1", "idle2"}) {
		t.Fatalf("memory %v", got)
	}
	m.Add(memState("idle3", 0, 0, 1, at(4))) // full: the oldest (idle1) goes
	if got := ids(); !slices.Equal(got, []string{"dc", "idle2", "idle3"}) {
		t.Fatalf("after eviction %v", got)
	}
	m.Add(memState("dc", 2, 1, 2, at(5))) // remembered: updated though busy
	if p := m.View()[slices.IndexFunc(m.View(), func(p PeerState) bool { return p.ID == "dc" })]; p.Busy != 2 || p.QueueLen != 1 {
		t.Fatalf("dc not updated: %+v", p)
	}
	m.Charge("idle2")
	m.Charge("nobody")
	if p := m.View()[slices.IndexFunc(m.View(), func(p PeerState) bool { return p.ID == "idle2" })]; p.Pending != 1 {
		t.Fatalf("idle2 not charged: %+v", p)
	}
	replies := View{memState("idle3", 0, 0, 1, at(6)), memState("busy", 1, 2, 1, at(6))}
	w := m.ViewWith(replies)
	if len(w) != 4 || w[3].ID != "busy" {
		t.Fatalf("ViewWith: %v", w)
	}
	m.Forget("idle3")
	m.Forget("nobody")
	if got := ids(); !slices.Equal(got, []string{"dc", "idle2"}) {
		t.Fatalf("after Forget %v", got)
	}
	for i, p := range m.View() { // the index follows the moves
		if m.index[p.ID] != i {
			t.Fatalf("index of %s is %d, at %d", p.ID, m.index[p.ID], i)
		}
	}
	off := NewProbeMemory(0)
	off.Add(memState("idle", 0, 0, 1, at(0)))
	if len(off.View()) != 0 {
		t.Fatal("a memory of size 0 kept a state")
	}
}

func TestProbers(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	var none Probers
	none.Add("c1")
	if _, ok := none.Pick(rng); ok {
		t.Fatal("a zero Probers picked someone")
	}
	p := NewProbers(2)
	if _, ok := p.Pick(rng); ok {
		t.Fatal("picked from an empty record")
	}
	p.Add("c1")
	p.Add("c2")
	p.Add("c3") // c1 goes
	seen := map[string]int{}
	for range 1000 {
		id, ok := p.Pick(rng)
		if !ok {
			t.Fatal("no pick")
		}
		seen[id]++
	}
	if seen["c1"] != 0 || seen["c2"] < 400 || seen["c3"] < 400 {
		t.Fatalf("picks %v: want c2 and c3 evenly", seen)
	}
}

func TestNoticesDue(t *testing.T) {
	for _, c := range []struct {
		free, queued int
		accepting    bool
		announced    int
		send, now    int
	}{
		{free: 1, announced: 0, accepting: true, send: 1, now: 1},  // a slot came free
		{free: 1, announced: 1, accepting: true, send: 0, now: 1},  // already said
		{free: 2, announced: 1, accepting: true, send: 1, now: 2},  // a second slot
		{free: 0, announced: 2, accepting: true, send: 0, now: 0},  // busy again
		{free: 1, queued: 1, accepting: true, send: 0, now: 0},     // the queue takes it
		{free: 1, announced: 0, accepting: false, send: 0, now: 0}, // too hot, paused
		{free: -1, accepting: true, send: 0, now: 0},
	} {
		send, now := NoticesDue(c.free, c.queued, c.accepting, c.announced)
		if send != c.send || now != c.now {
			t.Errorf("NoticesDue(%d, %d, %v, %d) = %d, %d; want %d, %d",
				c.free, c.queued, c.accepting, c.announced, send, now, c.send, c.now)
		}
	}
}
