package sim

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/gpunet/gpunet/scheduler"
)

// Policy names a placement policy.
type Policy string

// The policies. Every one of them faces the same hosts, which refuse a task
// when their queue is full or they are at their thermal limit; a refused
// task goes to the policy's next choice.
const (
	// Gpunet is scheduler.Place over each client's stale view.
	Gpunet Policy = "gpunet"
	// Random sends each task to a uniformly random known host.
	Random Policy = "random"
	// RoundRobin cycles each client through the known hosts.
	RoundRobin Policy = "roundrobin"
	// Pod samples D known hosts, probes their current queue length
	// (instant, exact) and picks the shortest per slot: the power of d
	// choices on queue length alone, as in Sparrow.
	Pod Policy = "pod"
	// Oracle knows every host's exact state and every task's size the
	// moment it changes and sends each task where it would finish first.
	// It knows heat only through its effect on speed and refusals.
	Oracle Policy = "oracle"
)

// Policies lists every policy, in the order of comparison tables.
func Policies() []Policy { return []Policy{Gpunet, Oracle, Pod, Random, RoundRobin} }

// Service time distributions of a task's work.
const (
	ServiceExp       = "exp"
	ServiceFixed     = "fixed"
	ServiceLognormal = "lognormal"
)

// Config is one simulation. Times are in seconds.
type Config struct {
	Policy Policy
	Hosts  int
	// Load is the offered load as a fraction of nominal capacity (every
	// slot of every host busy at full clock); Rate, if > 0, is the arrival
	// rate in tasks per second instead.
	Load, Rate float64
	// Tasks stops arrivals after that many tasks, Duration after that many
	// simulated seconds; at least one must be set. The run then drains.
	Tasks    int
	Duration float64
	// Service is the distribution of a task's work: exp, fixed or lognormal
	// (σ = 0.5), with mean MeanServiceS on a speed-1 host.
	Service      string
	MeanServiceS float64
	// Hetero is the spread of host speeds: each host's speed is its card's
	// times exp(Hetero × N(0,1)), and 5 % of hosts (when Hetero > 0) are
	// slow outliers at a quarter of that.
	Hetero float64
	// Thermal turns the heat model on (temperatures, hardware slowdown,
	// refusals at the limit); Governor adds the gpunet host governor, which
	// pauses work at the owner's limit and resumes 2 °C below it.
	Thermal, Governor bool
	// BeaconInterval is the mean time between a host's beacons (each one
	// jittered ±25 %); clients see a host as of its last beacon plus their
	// own placements since. 0 means exact state: no beacons, and each
	// decision sees every host as it is at that instant, queue and
	// temperature (the queueing literature's assumption).
	BeaconInterval float64
	// ChangeBeacons adds a beacon whenever a host's free slots or its
	// accepting flag change, at most one per MinBeaconGapS per host.
	ChangeBeacons bool
	MinBeaconGapS float64
	// Clients is the number of independent schedulers; arrivals are spread
	// evenly over them.
	Clients int
	// Churn is the fraction of hosts that leave per minute. A host that
	// leaves comes back after RejoinS on average as a new peer (new ID, cold);
	// its tasks are retried elsewhere after DetectS.
	Churn, RejoinS, DetectS float64
	Seed                    uint64
	// D is the number of choices of the pod policy.
	D int
	// PodSpeed makes pod pick among its D choices by expected wait, tasks
	// per slot over the host's current speed, instead of tasks per slot
	// alone: the power of d choices for hosts of different speeds. Without
	// it, pod sends a slow laptop as much work as a fast card with the same
	// queue (docs/scheduling.md, "The textbook case").
	PodSpeed bool
	// Repeat is the fraction of tasks that repeat an earlier prompt, chosen
	// with Zipf exponent Zipf over prompts in order of first appearance.
	Repeat, Zipf float64
	// ViewSize bounds the peers one gpunet decision scans: with more hosts
	// than that, each decision scans a fresh uniform sample of ViewSize
	// known hosts. 0 means every host.
	ViewSize int
	// ViewFixed models sharded beacons (node.Config.BeaconShards): each
	// client's sample is a fixed window of ViewSize hosts, client c's
	// starting at host c × ViewSize (mod hosts), so clients tile the swarm
	// shard by shard, instead of a fresh sample per decision. When every
	// host of its window refuses, a client offers the task to random hosts
	// outside it, as the node falls back to the DHT.
	ViewFixed bool
	// QueueCap is how many tasks a host queues beyond its slots before it
	// refuses as busy; Unbounded (-1) means it never does.
	QueueCap int
	// RetryS is how long a client waits before trying again when every
	// choice refused; HitLatencyS is the time to serve a cache hit.
	RetryS, HitLatencyS float64
	// Warmup is the fraction of tasks, from the start, left out of the
	// time-in-system statistics.
	Warmup float64
	// Hedge models the gpunet dispatcher's queue hedge with the same
	// functions (scheduler/hedge.go, tuned by Place's HedgeFactor, HedgeMin
	// and HedgeGain): a task still queued after its deadline is offered to
	// up to HedgeAttempts other hosts when scheduler.Config.ShouldMove says
	// so and, once one accepts, cancelled where it waited. Only the gpunet
	// policy hedges.
	Hedge         bool
	HedgeAttempts int
	// RefusalState: a busy refusal carries the host's queue and the client
	// keeps it as a fresh observation, which ages like a beacon, instead of
	// shunning the host until its next beacon. (With 4 s beacons and 10
	// clients, shunning made mean time in system 50 % worse.)
	RefusalState bool
	// Textbook replaces the swarm's mix of cards by identical servers: one
	// slot, speed 1, no link delay, no heat. With Poisson arrivals (always),
	// exponential or fixed service, unbounded queues and exact state
	// (BeaconInterval 0) it is the model of the queueing literature, which
	// the simulator is checked against (Analytic). It needs Hetero 0,
	// Thermal off, no churn and no repeats; TextbookConfig sets them.
	Textbook bool
	// Steady starts each host with a queue drawn from the steady state the
	// literature gives for the policy, instead of empty: P(≥ i tasks) =
	// λ^i for random (M/M/1) and λ^((dⁱ−1)/(d−1)) for pod with d choices
	// (Mitzenmacher's fixed point, exact as hosts → ∞). Those tasks are not
	// measured or counted. From empty queues an M/M/1 at load 0.95 takes
	// thousands of service times to reach its steady state, so without it
	// runs at high load measure mostly the warm-up. Textbook, exponential
	// service, random or pod only.
	Steady bool
	// Place is the scheduler configuration for the gpunet policy.
	// MaxStaleness is raised to 3 × BeaconInterval when shorter, as a node
	// beaconing that rarely would configure it.
	Place scheduler.Config
	// LoadInfo is how the gpunet policy learns hosts' load: LoadGossip
	// (every client hears every host's beacons, the default) or LoadProbe
	// (peer-sampling views and probes, scheduler/probe.go, tuned by Probe).
	// Other policies ignore it; "" is LoadGossip.
	LoadInfo string
	Probe    scheduler.ProbeConfig
	// HeavyClient, when > 0, is the fraction of tasks client 0 submits; the
	// others share the rest evenly (uneven submitters: one gateway with half
	// the traffic, say). 0 spreads tasks evenly over the clients.
	HeavyClient float64
}

// Load information modes of the gpunet policy (Config.LoadInfo).
const (
	LoadGossip = "gossip"
	LoadProbe  = "probe"
)

// DefaultConfig is the setting of the targets in docs/scheduling.md:
// 1,000 heterogeneous hosts at 90 % load with the heat model on.
func DefaultConfig() Config {
	return Config{
		Policy:         Gpunet,
		Hosts:          1000,
		Load:           0.9,
		Tasks:          100000,
		Service:        ServiceExp,
		MeanServiceS:   4,
		Hetero:         0.3,
		Thermal:        true,
		Governor:       true,
		BeaconInterval: 2,
		ChangeBeacons:  true,
		MinBeaconGapS:  0.5,
		Clients:        4,
		RejoinS:        10,
		DetectS:        1,
		Seed:           1,
		D:              2,
		Zipf:           1,
		ViewSize:       1000,
		QueueCap:       4,
		RetryS:         0.5,
		HitLatencyS:    0.02,
		Warmup:         0.1,
		Hedge:          true,
		RefusalState:   true,
		HedgeAttempts:  maxAttempts,
		Place:          scheduler.DefaultConfig(),
		LoadInfo:       LoadGossip,
		Probe:          scheduler.DefaultProbeConfig(),
	}
}

// Unbounded as QueueCap: hosts queue every task they are offered.
const Unbounded = -1

// TextbookConfig is the textbook case of the queueing literature, for
// policy p (d choices for pod) at load (the arrival rate per server, in
// tasks per mean service time) and service exp or fixed: 1,000 identical
// single-slot hosts, Poisson arrivals, unbounded queues, exact state, one
// client, no heat, churn, repeats or hedge; times in units of the mean
// service time (1 s). It starts empty with 10 % of the tasks as warm-up.
func TextbookConfig(p Policy, d int, load float64, service string) Config {
	c := DefaultConfig()
	c.Policy, c.D, c.Load, c.Service = p, d, load, service
	c.Textbook = true
	c.MeanServiceS = 1
	c.Hetero = 0
	c.Thermal, c.Governor = false, false
	c.BeaconInterval = 0
	c.ChangeBeacons = false
	c.Clients = 1
	c.QueueCap = Unbounded
	c.Hedge = false
	c.RefusalState = false
	return c
}

// ErrBadConfig is wrapped by every Config validation error.
var ErrBadConfig = errors.New("invalid simulation config")

// Validate reports the first setting a run cannot use, saying which flag to
// change.
func (c Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadConfig}, a...)...)
	}
	pos := func(x float64) bool { return x > 0 && !math.IsInf(x, 1) }
	nonneg := func(x float64) bool { return x >= 0 && !math.IsInf(x, 1) }
	switch {
	case !slices.Contains(Policies(), c.Policy):
		return bad("unknown policy %q (want one of %v)", c.Policy, Policies())
	case c.Hosts < 1 || c.Hosts > 10_000_000:
		return bad("hosts %d: want 1..10000000", c.Hosts)
	case c.Rate == 0 && !(c.Load > 0 && c.Load <= 10):
		return bad("load %v: want 0 < load ≤ 10, or set a rate", c.Load)
	case !nonneg(c.Rate):
		return bad("rate %v: want ≥ 0", c.Rate)
	case c.Tasks < 0 || !nonneg(c.Duration) || (c.Tasks == 0 && c.Duration == 0):
		return bad("set tasks > 0 or duration > 0")
	case c.Service != ServiceExp && c.Service != ServiceFixed && c.Service != ServiceLognormal:
		return bad("service %q: want exp, fixed or lognormal", c.Service)
	case !pos(c.MeanServiceS):
		return bad("mean service %v: want > 0", c.MeanServiceS)
	case !(c.Hetero >= 0 && c.Hetero <= 3):
		return bad("hetero %v: want 0..3", c.Hetero)
	case !nonneg(c.BeaconInterval):
		return bad("beacon interval %v: want > 0, or 0 for exact state", c.BeaconInterval)
	case !nonneg(c.MinBeaconGapS):
		return bad("min beacon gap %v: want ≥ 0", c.MinBeaconGapS)
	case c.Clients < 1 || c.Clients > 100000:
		return bad("clients %d: want 1..100000", c.Clients)
	case !(c.Churn >= 0 && c.Churn < 60):
		return bad("churn %v: want a fraction of hosts per minute in [0, 60)", c.Churn)
	case !pos(c.RejoinS) || !pos(c.DetectS) || !pos(c.RetryS) || !nonneg(c.HitLatencyS):
		return bad("rejoin, detect and retry times must be > 0, hit latency ≥ 0")
	case c.D < 1:
		return bad("d %d: want ≥ 1", c.D)
	case !(c.Repeat >= 0 && c.Repeat < 1):
		return bad("repeat %v: want 0 ≤ repeat < 1", c.Repeat)
	case !pos(c.Zipf):
		return bad("zipf %v: want > 0", c.Zipf)
	case c.ViewSize < 0:
		return bad("view size %d: want ≥ 0", c.ViewSize)
	case c.QueueCap < Unbounded:
		return bad("queue cap %d: want ≥ 0, or -1 for unbounded", c.QueueCap)
	case c.HedgeAttempts < 1:
		return bad("hedge attempts %d: want ≥ 1", c.HedgeAttempts)
	case !(c.Warmup >= 0 && c.Warmup < 1):
		return bad("warmup %v: want 0 ≤ warmup < 1", c.Warmup)
	case c.Textbook && (c.Thermal || c.Hetero != 0 || c.Churn != 0 || c.Repeat != 0):
		return bad("textbook hosts are identical, cool and stay: want thermal off, hetero 0, churn 0 and repeat 0")
	case c.Steady && !(c.Textbook && c.Service == ServiceExp && (c.Policy == Random || c.Policy == Pod)):
		return bad("steady start: only for textbook runs of random or pod with exp service, whose steady state is known")
	case c.Steady && !(c.Rate == 0 && c.Load < 1):
		return bad("steady start: want load < 1 (an overloaded queue has no steady state)")
	case c.LoadInfo != "" && c.LoadInfo != LoadGossip && c.LoadInfo != LoadProbe:
		return bad("load info %q: want gossip or probe", c.LoadInfo)
	case !(c.HeavyClient >= 0 && c.HeavyClient < 1):
		return bad("heavy client %v: want 0 ≤ share < 1", c.HeavyClient)
	case c.HeavyClient > 0 && c.Clients < 2:
		return bad("heavy client: want at least 2 clients")
	}
	if err := c.Place.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	if c.LoadInfo == LoadProbe {
		if err := c.Probe.Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrBadConfig, err)
		}
	}
	return nil
}
