package scheduler

// When every host a client could use has refused a task for load, the
// client keeps it in its own waiting room (node/waitroom.go) instead of
// asking again at once. These functions read the view for that room: how
// many of its tasks the swarm could take now, and when a task with a given
// number of tasks ahead of it should finish.

// serving reports whether p serves model ("" serves as any model).
func serving(p PeerState, model string) bool {
	if model == "" {
		return true
	}
	for _, m := range p.Models {
		if m == model {
			return true
		}
	}
	return false
}

// FreeCapacity is how many more tasks of model the peers of v would take
// now, counting this client's own placements since each beacon: the free
// slots and queue places of each accepting peer, or for a peer that does
// not say how long its queue is, its idle slots and at least one.
func FreeCapacity(v View, model string) int {
	n := 0
	for _, p := range v {
		if !p.Accepting || !serving(p, model) {
			continue
		}
		if r := p.room(); r >= 0 {
			n += r
		} else {
			n += max(1, max(p.Slots, 1)-p.Busy-p.Pending)
		}
	}
	return n
}

// SwarmETAMs predicts when a task with ahead tasks before it in a client's
// waiting room finishes: every task queued or running on the peers that
// serve model, the ones ahead of it and itself, spread over their slots at
// their mean service time. ok is false when no peer of v serves model.
func SwarmETAMs(v View, model string, ahead int, defaultServiceMs float64) (etaMs float64, ok bool) {
	slots, work, svc := 0, 0, 0.0
	for _, p := range v {
		if !serving(p, model) {
			continue
		}
		s := max(p.Slots, 1)
		slots += s
		work += p.Busy + p.QueueLen + p.Pending
		ms := p.ServiceMs[model]
		if ms <= 0 {
			ms = defaultServiceMs
		}
		svc += ms * float64(s)
	}
	if slots == 0 {
		return 0, false
	}
	mean := svc / float64(slots)
	return QueuedETAMs(work+max(ahead, 0), slots, mean), true
}

// IdleShare is the share of the slots of v's accepting peers serving model
// that are idle now (0 when there are none), counting this client's own
// placements since each beacon: how much of the swarm a check of a result
// would take from nobody (node/trust re-runs every result above a share).
func IdleShare(v View, model string) float64 {
	slots, idle := 0, 0
	for _, p := range v {
		if !p.Accepting || !serving(p, model) {
			continue
		}
		s := max(p.Slots, 1)
		slots += s
		idle += max(0, s-p.Busy-p.QueueLen-p.Pending)
	}
	if slots == 0 {
		return 0
	}
	return float64(idle) / float64(slots)
}
