package sim

import "math"

// The closed forms of the queueing literature for the textbook case
// (Config.Textbook): N identical single-server FIFO queues with unbounded
// buffers, Poisson arrivals at rate λ per server (Config.Load) and mean
// service time 1, each task sent on arrival to the shortest of d queues
// drawn uniformly at random, seen exactly. TestTextbook holds the
// simulator to them.

// SteadyTail is the fraction of servers with at least i tasks in the steady
// state, with d choices: λ^((dⁱ−1)/(d−1)), and λ^i for d = 1 (M/M/1). For
// d ≥ 2 it is the fixed point of the supermarket model, exact as N → ∞
// (Mitzenmacher, "The power of two choices in randomized load balancing",
// IEEE TPDS 2001, theorem 3.2; Vvedenskaya, Dobrushin and Karpelevich 1996).
func SteadyTail(lambda float64, d, i int) float64 {
	if i <= 0 {
		return 1
	}
	if d <= 1 {
		return math.Pow(lambda, float64(i))
	}
	dd := float64(d)
	return math.Pow(lambda, (math.Pow(dd, float64(i))-1)/(dd-1))
}

// MeanTimeChoices is the mean time in system, in mean service times, with d
// choices and exponential service as N → ∞:
//
//	T_d = Σ_{i≥1} λ^((dⁱ−d)/(d−1)),
//
// that is (Little's law) the mean queue length Σ_{i≥1} s_i over λ; for
// d = 1 it is M/M/1's 1/(1−λ). λ must be in [0, 1).
func MeanTimeChoices(lambda float64, d int) float64 {
	if lambda <= 0 {
		return 1
	}
	if d <= 1 {
		return 1 / (1 - lambda)
	}
	sum := 0.0
	for i := 1; ; i++ {
		s := SteadyTail(lambda, d, i)
		sum += s
		if s < 1e-17*sum {
			break
		}
	}
	return sum / lambda
}

// MeanTimeMD1 is M/D/1's mean time in system, in service times: the service
// plus the Pollaczek–Khinchine mean wait λ/(2(1−λ)), half M/M/1's.
func MeanTimeMD1(lambda float64) float64 {
	return 1 + lambda/(2*(1-lambda))
}

// Analytic is the mean time in system in seconds that the literature gives
// for c, and whether it gives one: textbook runs (exact state, unbounded
// queues) of random or pod at load < 1, with exponential service (any d;
// N → ∞ for pod) or with fixed service for random (M/D/1).
func Analytic(c Config) (meanS float64, ok bool) {
	if !c.Textbook || c.BeaconInterval != 0 || c.QueueCap != Unbounded || c.Rate != 0 || !(c.Load >= 0 && c.Load < 1) {
		return 0, false
	}
	d := 0
	switch c.Policy {
	case Random:
		d = 1
	case Pod:
		d = c.D
	default:
		return 0, false
	}
	switch {
	case c.Service == ServiceExp:
		return c.MeanServiceS * MeanTimeChoices(c.Load, d), true
	case c.Service == ServiceFixed && d == 1:
		return c.MeanServiceS * MeanTimeMD1(c.Load), true
	}
	return 0, false
}
