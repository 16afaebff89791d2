package sim

import "math"

// oracleIndex keeps hosts ordered by the oracle's predicted finish for a
// new task, relative to now, so that the oracle policy costs O(log hosts) per
// task instead of a scan. It is exact only for exponential service: the
// expected remaining work of a running task is then the mean whatever it has
// done, so a host's relative prediction changes only when something happens
// on that host, and every such place calls s.changed. Other distributions
// use the scan in dispatchOracle.
type oracleIndex struct {
	key  []float64 // per host; +Inf when the host would refuse
	heap []int32   // host indices, min-heap by (key, index)
	pos  []int32   // host index → position in heap
}

func newOracleIndex(s *sim) *oracleIndex {
	n := len(s.hosts)
	x := &oracleIndex{key: make([]float64, n), heap: make([]int32, n), pos: make([]int32, n)}
	for i := range n {
		x.key[i] = s.oracleKey(&s.hosts[i])
		x.heap[i], x.pos[i] = int32(i), int32(i)
	}
	for i := n/2 - 1; i >= 0; i-- {
		x.down(i)
	}
	return x
}

// oracleKey is what dispatchOracle minimises, less now.
func (s *sim) oracleKey(h *host) float64 {
	if !h.online || (s.cfg.Thermal && h.hot) || (len(h.running) >= h.slots && h.queueFull(s)) {
		return math.Inf(1)
	}
	rate := h.speed * h.clock(s)
	if rate <= 0 {
		return math.Inf(1)
	}
	return s.oracleWait(h, rate) + s.cfg.MeanServiceS/rate
}

func (x *oracleIndex) less(a, b int32) bool {
	return x.key[a] < x.key[b] || (x.key[a] == x.key[b] && a < b)
}

func (x *oracleIndex) update(s *sim, h *host) {
	x.key[h.idx] = s.oracleKey(h)
	i := int(x.pos[h.idx])
	x.up(i)
	x.down(int(x.pos[h.idx]))
}

// best is the host with the least key, or -1 when every host would refuse.
func (x *oracleIndex) best() int32 {
	if len(x.heap) == 0 || math.IsInf(x.key[x.heap[0]], 1) {
		return -1
	}
	return x.heap[0]
}

func (x *oracleIndex) swap(i, j int) {
	x.heap[i], x.heap[j] = x.heap[j], x.heap[i]
	x.pos[x.heap[i]], x.pos[x.heap[j]] = int32(i), int32(j)
}

func (x *oracleIndex) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !x.less(x.heap[i], x.heap[p]) {
			return
		}
		x.swap(i, p)
		i = p
	}
}

func (x *oracleIndex) down(i int) {
	n := len(x.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && x.less(x.heap[r], x.heap[l]) {
			m = r
		}
		if !x.less(x.heap[m], x.heap[i]) {
			return
		}
		x.swap(i, m)
		i = m
	}
}
