package scheduler

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Config tunes Place. The zero value is not useful; start from DefaultConfig.
// The defaults were tuned in the simulator (scheduler/sim) against the targets
// in docs/scheduling.md; each one says why it has its value.
type Config struct {
	// MaxStaleness drops peers whose last beacon is older than this. Default
	// 10 s: five beacon intervals at the node's 2 s default, so one or two lost
	// beacons do not hide a peer, while a peer that left is ignored well before
	// the view expires it. A node that beacons less often must raise it (the
	// simulator uses max(10 s, 3 × its beacon interval)).
	MaxStaleness time.Duration

	// MinHeadroomC is the thermal margin a peer must have below its limit to
	// be a candidate at all: TempC < limit − MinHeadroomC. Default 5 °C: a
	// task adds heat for its whole run and beacons are seconds old, so a
	// peer closer than that would likely reach its limit (and refuse or
	// pause) before our task finished. In the simulator, 5 °C with
	// conservative heat predictions kept every host under its limit with the
	// host governor off; 3 °C let laptops pass theirs by about 1 °C.
	MinHeadroomC float64

	// DefaultServiceMs is the service time assumed for a model a peer has not
	// reported yet. Default 4000 ms: a 20-step 512×512 generation on a
	// consumer GPU, the median host; a new peer is ranked as average rather
	// than as the best or the worst.
	DefaultServiceMs float64

	// DefaultHeatPerTaskC is the temperature rise assumed for one more task
	// when the peer does not predict it (HeatPerTaskC = 0). Default 5 °C:
	// about what a desktop card gains over a long task from a warm start,
	// and a third of what a laptop does; a peer that cannot predict its heat
	// is treated as warming like a desktop.
	DefaultHeatPerTaskC float64

	// SlowdownSpeed is the clock factor assumed when the predicted temperature
	// reaches the peer's hardware slowdown temperature. Default 0.5: NVML
	// defines hardware slowdown as clocks cut by half or more.
	SlowdownSpeed float64

	// QueuePenalty weighs predicted waiting time more than running time in
	// the score: cost = wait × (1 + QueuePenalty) + run + RTT. Default 2: a
	// task queued on a busy peer also delays every task after it there, and
	// a view seconds old underestimates queues. Ranking by the plain
	// prediction (0) queued behind fast peers while slower ones sat idle; in
	// the simulator 2 cut mean time in system by 5 % against 1, on two
	// seeds, at the same p99.
	QueuePenalty float64

	// AgeDrain ages a beacon's Busy and QueueLen: the estimate relaxes from
	// what the beacon said towards the view's mean tasks per slot, with the
	// peer's own service time as time constant, because since the beacon the
	// peer has finished tasks and other clients have sent it new ones.
	// Default on: a view seconds old otherwise believes busy peers busy and
	// idle peers idle, and every client sends work to the same "idle" ones
	// (in the simulator with 4 s beacons and 10 clients, ageing towards
	// empty instead made mean time in system 3.6 times worse).
	AgeDrain bool

	// HeadroomWeight and HeadroomScaleC shape the thermal preference:
	// score = predicted × (1 + HeadroomWeight × exp(−headroom / HeadroomScaleC)),
	// where headroom is the limit minus the predicted temperature after this
	// task. Defaults 2 and 3 °C: with 15 °C of headroom or more the term is
	// under 1.5 % (speed decides); at 6 °C it costs 27 %, so a cooler peer
	// that is up to a quarter slower wins; at 0 °C it triples the cost and
	// below zero it grows fast, so a peer predicted to pass its limit is
	// chosen only when nothing else can take the task. It is smooth so that
	// a degree of temperature never flips the ranking abruptly.
	HeadroomWeight float64
	HeadroomScaleC float64

	// TrustWeight scales how much a peer's Distrust raises its score:
	// score × (1 + TrustWeight × Distrust). Default 0.5: a peer on probation
	// from the start (node/trust gives it 0.2) costs 10 % more than one with
	// a clean record, enough to win a close call, not to leave it idle.
	TrustWeight float64

	// UnknownHeadroomC is the headroom assumed for a peer that reports no
	// temperature limit at all (no GPU telemetry, e.g. a CPU kernel). Default
	// 15 °C: ranked as comfortably cool, so such peers are used, but a GPU
	// that reports plenty of headroom is still preferred at equal speed.
	UnknownHeadroomC float64

	// Choices (d) and TopK (k) are the anti-herding sampler: d peers are
	// drawn from the best k and put first, best score first. Defaults d=4,
	// k=256: clients that share a view which is seconds old otherwise fill
	// peers in the same order, and each peer gets one task from every client
	// (in the simulator, 4 clients with 2 s beacons queued 80 % of tasks).
	// The pool must hold about as many peers as all clients place within
	// one beacon's age, hundreds at 1,000 peers and 90 % load; the best of
	// 4 keeps the choice near the top of it. Choices ≥ TopK disables it.
	Choices int
	TopK    int

	// SampleSlack cuts the pool to candidates whose score is within this
	// factor of the best: cost ≤ best × (1 + SampleSlack). Default 3: a
	// peer predicted four times slower than the best is never sampled while
	// better ones are left, which bounds what spreading can cost a task.
	SampleSlack float64

	// Rendezvous makes the draw for a request with a Key deterministic: the
	// d pool members with the highest rendezvous weight hash(Key, ID)
	// instead of random ones. Identical tasks from clients with similar
	// views then draw the same peers, pick the same one and coalesce there
	// (issue 4), while distinct keys spread like random draws. Default on.
	// (Putting the single highest-weight peer first, without the best-of-d
	// step, spread tasks uniformly over the near-best peers and cost 30 % of
	// mean time in the simulator.)
	Rendezvous bool

	// HedgeFactor, HedgeMin and HedgeGain tune the queue hedge (hedge.go).
	// A task still queued HedgeFactor × its predicted wait after a host
	// accepted it, and at least HedgeMin, moves to another host when Place
	// predicts that one finishes it in under HedgeGain × the host's ETA.
	// Defaults 2, 1 s and 1: twice the prediction is a clear sign the view
	// was wrong rather than noise in the service time, and any predicted
	// gain is worth a move because the task leaves its queue only once the
	// other host has accepted it. In the simulator the hedge brings p99 from
	// 1.43× the oracle's to within 1.1× (docs/scheduling.md).
	HedgeFactor float64
	HedgeMin    time.Duration
	HedgeGain   float64
}

// maxTopK and maxChoices bound TopK and Choices so the sampler can use
// fixed-size arrays.
const (
	maxTopK    = 256
	maxChoices = 16
)

// DefaultConfig returns the tuned defaults described on Config.
func DefaultConfig() Config {
	return Config{
		MaxStaleness:        10 * time.Second,
		MinHeadroomC:        5,
		DefaultServiceMs:    4000,
		DefaultHeatPerTaskC: 5,
		SlowdownSpeed:       0.5,
		QueuePenalty:        2,
		AgeDrain:            true,
		HeadroomWeight:      2,
		HeadroomScaleC:      3,
		TrustWeight:         0.5,
		UnknownHeadroomC:    15,
		Choices:             4,
		TopK:                256,
		SampleSlack:         3,
		Rendezvous:          true,
		HedgeFactor:         2,
		HedgeMin:            time.Second,
		HedgeGain:           1,
	}
}

// ErrBadConfig is wrapped by every Config validation error.
var ErrBadConfig = errors.New("invalid scheduler config")

// Validate reports the first setting that Place cannot work with.
func (c Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadConfig}, a...)...)
	}
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case c.MaxStaleness <= 0:
		return bad("MaxStaleness %v must be positive", c.MaxStaleness)
	case !finite(c.MinHeadroomC) || c.MinHeadroomC < 0:
		return bad("MinHeadroomC %v must be ≥ 0", c.MinHeadroomC)
	case !finite(c.DefaultServiceMs) || c.DefaultServiceMs <= 0:
		return bad("DefaultServiceMs %v must be positive", c.DefaultServiceMs)
	case !finite(c.DefaultHeatPerTaskC) || c.DefaultHeatPerTaskC < 0:
		return bad("DefaultHeatPerTaskC %v must be ≥ 0", c.DefaultHeatPerTaskC)
	case !finite(c.SlowdownSpeed) || c.SlowdownSpeed <= 0 || c.SlowdownSpeed > 1:
		return bad("SlowdownSpeed %v must be in (0, 1]", c.SlowdownSpeed)
	case !finite(c.QueuePenalty) || c.QueuePenalty < 0:
		return bad("QueuePenalty %v must be ≥ 0", c.QueuePenalty)
	case !finite(c.HeadroomWeight) || c.HeadroomWeight < 0:
		return bad("HeadroomWeight %v must be ≥ 0", c.HeadroomWeight)
	case !finite(c.TrustWeight) || c.TrustWeight < 0:
		return bad("TrustWeight %v must be ≥ 0", c.TrustWeight)
	case !finite(c.HeadroomScaleC) || c.HeadroomScaleC <= 0:
		return bad("HeadroomScaleC %v must be positive", c.HeadroomScaleC)
	case !finite(c.UnknownHeadroomC):
		return bad("UnknownHeadroomC %v must be finite", c.UnknownHeadroomC)
	case c.Choices < 1 || c.Choices > maxChoices:
		return bad("Choices %d must be in 1..%d", c.Choices, maxChoices)
	case c.TopK < 1 || c.TopK > maxTopK:
		return bad("TopK %d must be in 1..%d", c.TopK, maxTopK)
	case !finite(c.SampleSlack) || c.SampleSlack < 0:
		return bad("SampleSlack %v must be ≥ 0", c.SampleSlack)
	case !finite(c.HedgeFactor) || c.HedgeFactor <= 0:
		return bad("HedgeFactor %v must be positive", c.HedgeFactor)
	case c.HedgeMin < 0:
		return bad("HedgeMin %v must be ≥ 0", c.HedgeMin)
	case !finite(c.HedgeGain) || c.HedgeGain <= 0 || c.HedgeGain > 1:
		return bad("HedgeGain %v must be in (0, 1]", c.HedgeGain)
	}
	return nil
}
