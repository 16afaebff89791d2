package scheduler

// HeatRuns is how many service times a host's heat prediction
// (PeerState.HeatPerTaskC, a beacon's heat_dc) covers: a long task, 3 mean
// runs being the 95th percentile of an exponential run. Predicting for a
// mean-length task let laptops pass their limits by 6 °C without the
// governor in the simulator (docs/scheduling.md).
const HeatRuns = 3

// HeatHorizon is what a host with tasks running or queued on slots slots
// predicts its heat over when it publishes HeatPerTaskC: one more task,
// started behind those, running at utilisation util until span has passed,
// span in the unit of service (the host's service time for a task). The
// simulator's hosts and the node's use it alike.
func HeatHorizon(tasks, slots int, service float64) (util, span float64) {
	slots = max(slots, 1)
	util = min(float64(tasks+1)/float64(slots), 1)
	ahead := max(tasks-slots+1, 0)
	return util, (float64(ahead)/float64(slots) + HeatRuns) * service
}
