package scheduler

import (
	"math"
	"time"
)

// The queue hedge is the dispatcher's second look at a task that a host
// accepted into its queue. Placement works from a view seconds old, so a
// task sometimes lands behind a queue longer than predicted while another
// host has since gone idle. The dispatcher (node/dispatch.go) and the
// simulator (scheduler/sim) both run it through these functions:
//
//  1. HedgeDelay after the host accepted the task, with Place's predicted
//     wait there, the client looks again if the task has not started;
//  2. it takes the host's ETA for the task (QueuedETAMs, which the host
//     computes from its queue and sends with its queued events) and the
//     best candidate Place now gives among the other hosts;
//  3. if ShouldMove, it offers the task there and, once that host has
//     accepted it, cancels it where it waited (make before break: a task
//     never leaves a queue for a place that refuses it);
//  4. otherwise it looks again HedgeDelay(wait) later, the wait being the
//     part of the ETA still spent queued (QueuedWaitMs).

// QueuedETAMs is a host's prediction of when a task at 1-based position pos
// of its queue finishes: the pos tasks ahead of it (counting the one it
// waits behind) spread over slots, then its own run, each taking runMs.
func QueuedETAMs(pos, slots int, runMs float64) float64 {
	return (float64(max(pos, 0))/float64(max(slots, 1)) + 1) * runMs
}

// QueuedWaitMs inverts QueuedETAMs: the part of etaMs a task at position pos
// on a host with slots slots spends waiting to start.
func QueuedWaitMs(etaMs float64, pos, slots int) float64 {
	q := float64(max(pos, 0)) / float64(max(slots, 1))
	return etaMs * q / (q + 1)
}

// HedgeDelay is how long after it was queued, or last looked at, a task
// waits before the dispatcher looks again: HedgeFactor × waitMs, at least
// HedgeMin.
func (c Config) HedgeDelay(waitMs float64) time.Duration {
	d := time.Duration(c.HedgeFactor * max(waitMs, 0) * float64(time.Millisecond))
	if math.IsNaN(c.HedgeFactor*waitMs) || d < c.HedgeMin {
		return c.HedgeMin
	}
	return d
}

// ShouldMove reports whether a queued task whose host predicts it done in
// etaMs should be offered to best, the first candidate Place gives among the
// other hosts: when best is predicted to finish it sooner than HedgeGain ×
// etaMs.
func (c Config) ShouldMove(etaMs float64, best Candidate) bool {
	return best.PredictedMs < c.HedgeGain*etaMs
}
