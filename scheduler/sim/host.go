package sim

import (
	"math"
)

// host is one simulated GPU host. Its state only changes in the methods
// below, each of which first advances it to the current time.
type host struct {
	idx    int32
	epoch  uint32
	id     string
	online bool
	prof   *Profile

	slots int
	speed float64 // work per second per slot at full clock
	rtt   float64 // seconds
	svcMs map[string]float64
	memMB uint64
	// capacity is slots × 1000 / svcMs of the model (LoadProbe's
	// descriptors), set on first use: both are fixed.
	capacity float64

	amb, rth, tau, limit float64

	// Thermal state at tLast. hot: reached the limit and not yet GovHystC
	// below it (refusing; paused when the governor is on). hw: in hardware
	// slowdown.
	temp, tLast float64
	hot, hw     bool
	thermVer    uint32

	running []int32 // task indices, at most slots
	queue   []int32 // FIFO of waiting tasks
	// inflight maps a prompt key to the task running or queued for it here,
	// so an identical task joins it (host-side coalescing).
	inflight map[uint64]int32

	// What the last beacon said, to detect a significant change.
	pubFree       int
	pubAccepting  bool
	changePending bool

	peak              float64
	busyS, throttledS float64 // GPU-seconds (utilisation-weighted)
	tasksRun          int
}

// clock is the current clock factor: 0 while the governor pauses, 0.5 in
// hardware slowdown, else 1.
func (h *host) clock(s *sim) float64 {
	switch {
	case h.hot && s.cfg.Governor:
		return 0
	case h.hw:
		return 0.5
	}
	return 1
}

// tinf is the temperature the host is heading to in its current state.
func (h *host) tinf(s *sim) float64 {
	u := float64(len(h.running)) / float64(h.slots)
	f := 1.0
	switch {
	case h.hot && s.cfg.Governor:
		f = 0
	case h.hw:
		f = SlowPowerFactor
	}
	p := h.prof.IdleW + (h.prof.MaxW-h.prof.IdleW)*u*f
	return h.amb + h.rth*p
}

// tinfAt is the steady temperature at utilisation u, full clock.
func (h *host) tinfAt(u float64) float64 {
	return h.amb + h.rth*(h.prof.IdleW+(h.prof.MaxW-h.prof.IdleW)*u)
}

// advance integrates the host from tLast to now: task progress, busy and
// throttled time, and the exact solution of the thermal model. Between
// events T moves monotonically towards tinf, so the peak over the interval
// is at one of its ends.
func (h *host) advance(s *sim, now float64) {
	dt := now - h.tLast
	if dt <= 0 {
		return
	}
	if n := len(h.running); n > 0 {
		u := float64(n) / float64(h.slots)
		clk := h.clock(s)
		rate := h.speed * clk
		for _, ti := range h.running {
			s.tasks[ti].remaining -= rate * dt
		}
		h.busyS += u * dt
		if s.cfg.Thermal && clk < 1 {
			h.throttledS += u * dt
		}
	}
	if s.cfg.Thermal {
		ti := h.tinf(s)
		h.temp = ti + (h.temp-ti)*math.Exp(-dt/h.tau)
		h.peak = max(h.peak, h.temp)
	}
	h.tLast = now
}

// crossing is how long until T, moving from t0 towards tinf, reaches x; ok
// is false when it never does.
func crossing(t0, tinf, x, tau float64) (float64, bool) {
	switch {
	case t0 < x && tinf > x:
		return tau * math.Log((tinf-t0)/(tinf-x)), true
	case t0 > x && tinf < x:
		return tau * math.Log((t0-tinf)/(x-tinf)), true
	}
	return 0, false
}

// rethermal schedules the next threshold crossing, invalidating any earlier
// one. Call it after every change of utilisation or clock.
func (h *host) rethermal(s *sim, now float64) {
	if !s.cfg.Thermal || !h.online {
		return
	}
	h.thermVer++
	ti := h.tinf(s)
	best := math.Inf(1)
	consider := func(x float64) {
		if d, ok := crossing(h.temp, ti, x, h.tau); ok && d < best {
			best = d
		}
	}
	if h.hot {
		consider(h.limit - GovHystC)
	} else {
		consider(h.limit)
	}
	if h.hw {
		consider(h.prof.SlowdownC - HwHystC)
	} else {
		consider(h.prof.SlowdownC)
	}
	if !math.IsInf(best, 1) {
		s.q.push(now+best, evThermal, h.idx, h.thermVer)
	}
}

// onThermal handles a threshold crossing at now.
func (h *host) onThermal(s *sim, now float64) {
	h.advance(s, now)
	const eps = 1e-6
	oldClock := h.clock(s)
	switch {
	case !h.hot && h.temp >= h.limit-eps:
		h.hot = true
	case h.hot && h.temp <= h.limit-GovHystC+eps:
		h.hot = false
	}
	switch {
	case !h.hw && h.temp >= h.prof.SlowdownC-eps:
		h.hw = true
	case h.hw && h.temp <= h.prof.SlowdownC-HwHystC+eps:
		h.hw = false
	}
	if h.clock(s) != oldClock {
		h.reschedule(s, now)
	}
	h.rethermal(s, now)
	s.changed(h)
}

// reschedule re-issues completion events for every running task after a
// change of clock.
func (h *host) reschedule(s *sim, now float64) {
	rate := h.speed * h.clock(s)
	for _, ti := range h.running {
		t := &s.tasks[ti]
		t.ver++
		if rate > 0 {
			s.q.push(now+max(t.remaining, 0)/rate, evComplete, ti, t.ver)
		}
	}
}

// start puts task ti on a free slot.
func (h *host) start(s *sim, now float64, ti int32) {
	t := &s.tasks[ti]
	t.remaining = t.work
	t.started = now
	h.running = append(h.running, ti)
	h.tasksRun++
	t.ver++
	if rate := h.speed * h.clock(s); rate > 0 {
		s.q.push(now+t.work/rate, evComplete, ti, t.ver)
	}
}

// Offer outcomes.
const (
	accepted = iota
	joined   // coalesced with an identical task in flight here
	refusedBusy
	refusedHot
	refusedGone
)

// offer is a client handing task ti to the host: the host's admission.
func (h *host) offer(s *sim, now float64, ti int32) int {
	if !h.online {
		return refusedGone
	}
	h.advance(s, now)
	t := &s.tasks[ti]
	if h.inflight != nil {
		if p, ok := h.inflight[t.key]; ok {
			if s.tasks[p].prompt != t.prompt {
				s.res.WrongHits++ // two tasks with one key: never join them
			} else {
				s.coalesce(p, ti)
				return joined
			}
		}
	}
	if s.cfg.Thermal && h.hot {
		return refusedHot
	}
	switch {
	case len(h.running) < h.slots:
		h.admit(s, ti, false)
		h.start(s, now, ti)
		h.rethermal(s, now)
	case !h.queueFull(s):
		h.admit(s, ti, false)
		h.queue = append(h.queue, ti)
	default:
		return refusedBusy
	}
	s.changed(h)
	return accepted
}

// admit books task ti on the host. A new admission of a task whose key
// another host is already running counts as a duplicate run; putting back a
// task a hedge could not move (again) does not.
func (h *host) admit(s *sim, ti int32, again bool) {
	t := &s.tasks[ti]
	t.host = h.idx
	t.epoch = h.epoch
	if s.cfg.Repeat > 0 {
		if h.inflight == nil {
			h.inflight = map[uint64]int32{}
		}
		h.inflight[t.key] = ti
		if s.running[t.key] > 0 && !again {
			s.res.DuplicateRuns++
		}
		s.running[t.key]++
	}
}

// complete finishes running task ti and starts the next queued one.
func (h *host) complete(s *sim, now float64, ti int32) {
	h.advance(s, now)
	for i, x := range h.running {
		if x == ti {
			h.running = append(h.running[:i], h.running[i+1:]...)
			break
		}
	}
	h.release(s, ti)
	if len(h.queue) > 0 {
		next := h.queue[0]
		h.queue = h.queue[1:]
		h.start(s, now, next)
	}
	h.rethermal(s, now)
	s.changed(h)
	s.finish(now, ti)
}

func (h *host) release(s *sim, ti int32) {
	t := &s.tasks[ti]
	if h.inflight != nil && h.inflight[t.key] == ti {
		delete(h.inflight, t.key)
	}
	if s.cfg.Repeat > 0 {
		if s.running[t.key]--; s.running[t.key] <= 0 {
			delete(s.running, t.key)
		}
	}
	t.host = -1
}

// leave takes the host offline; its tasks lose their progress and go back
// to their clients, which retry them after DetectS.
func (h *host) leave(s *sim, now float64) {
	h.advance(s, now)
	lost := append(append([]int32(nil), h.running...), h.queue...)
	for _, ti := range h.running {
		t := &s.tasks[ti]
		t.ver++ // cancels its completion event
		s.res.GPUSLost += (now - t.started)
	}
	h.running, h.queue = h.running[:0], h.queue[:0]
	for _, ti := range lost {
		h.release(s, ti)
		s.res.Requeued++
		s.q.push(now+s.cfg.DetectS, evRetry, ti, 0)
	}
	h.online = false
	h.hot, h.hw = false, false
	h.thermVer++
	h.changePending = false
}
