package node

import "math"

// Governor decides, from one temperature reading, how many tasks a host may
// run at once. It is pure state with no clock or I/O: the host feeds it
// readings (etcd/raft style), so it can be tested exactly.
//
// The rules, in order:
//   - paused by the owner: run nothing new;
//   - hot: once the temperature reaches LimitC − GuardC, run nothing new
//     and pause running tasks between steps, until it falls to
//     LimitC − HysteresisC (hysteresis, so it does not flap at the limit);
//   - otherwise scale concurrency down linearly from Slots at
//     LimitC − RampC to 1 at LimitC − GuardC: a warm GPU takes fewer
//     parallel tasks, and so heats more slowly.
//
// Not safe for concurrent use; the server guards it.
type Governor struct {
	LimitC      float64 // the owner's maximum temperature
	GuardC      float64 // stop this far below the limit (one step's heating)
	HysteresisC float64 // resume this far below the limit
	RampC       float64 // start reducing concurrency this far below the limit
	Slots       int

	paused bool
	hot    bool
}

// NewGovernor returns a governor for limitC with the default margins: stop
// 1 °C short of the limit (a diffusion step heats a GPU by well under a
// degree), resume 5 °C below it, and start shedding concurrency 15 °C below.
func NewGovernor(limitC float64, slots int) *Governor {
	return &Governor{LimitC: limitC, GuardC: 1, HysteresisC: 5, RampC: 15, Slots: max(1, slots)}
}

// Observe feeds a temperature reading (°C; 0 or NaN means unknown, which
// leaves the state as it was) and returns how many tasks may run now.
func (g *Governor) Observe(tempC float64) int {
	if tempC > 0 && !math.IsNaN(tempC) && g.LimitC > 0 {
		switch {
		case tempC >= g.LimitC-g.GuardC:
			g.hot = true
		case tempC <= g.LimitC-g.HysteresisC:
			g.hot = false
		}
	}
	if g.paused || g.hot {
		return 0
	}
	if !(tempC > 0) || g.LimitC <= 0 {
		return g.Slots
	}
	start, stop := g.LimitC-g.RampC, g.LimitC-g.GuardC
	if tempC <= start || stop <= start {
		return g.Slots
	}
	frac := (stop - tempC) / (stop - start) // 1 at start, 0 at stop
	return max(1, int(math.Ceil(frac*float64(g.Slots))))
}

// Hot reports whether the GPU is in its cool-down band.
func (g *Governor) Hot() bool { return g.hot }

// Paused reports whether the owner paused the host.
func (g *Governor) Paused() bool { return g.paused }

// SetPaused pauses or resumes on the owner's word.
func (g *Governor) SetPaused(p bool) { g.paused = p }
