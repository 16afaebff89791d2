package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/gpunet/gpunet/scheduler/sim"
	"github.com/spf13/cobra"
)

// newSimCmd is `gpunet sim`: the discrete-event simulator of scheduler/sim,
// which runs the real placement code against thousands of simulated hosts.
func newSimCmd() *cobra.Command {
	cfg := sim.DefaultConfig()
	var (
		policy, service                   string
		thermal, governor, changes, hedge string
		beacon, duration, meanService     time.Duration
		asJSON, textbook                  bool
		trust                             = sim.DefaultTrustConfig()
		lie, verify                       string
		verdictDelay, rejoinAfter         time.Duration
		shuffleEvery, probeTimeout        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate placement policies on a large simulated swarm",
		Long: `sim runs a deterministic discrete-event simulation of a gpunet swarm:
hosts with heterogeneous speeds and a thermal model, stale gossip beacons,
independent clients, churn and repeated prompts. Policy gpunet runs the real
scheduler; random, roundrobin, pod and oracle are baselines; all runs every
policy on the same hosts and arrivals and prints a comparison.

--textbook replaces the swarm by the queueing literature's model, against
which the simulator is checked: identical single-slot hosts with no link
delay or heat, Poisson arrivals, unbounded queues, exact state (beacon
interval 0), one client, a mean service of 1 s; flags given explicitly
still apply. Random and pod runs then print the analytic mean time in
system beside the simulated one (M/M/1 or M/D/1 for random, Mitzenmacher's
power of d choices for pod with --d; exp service, hosts → ∞).

--load-info probe makes the gpunet policy learn load by probing instead of
gossip (scheduler/probe.go): every node keeps a small peer-sampling view
refreshed by shuffles; a client probes --probe-d hosts, drawn from its view
by capacity, for each task and ranks their replies with the real Place. It
prints the per-node load-information bytes beside what gossip would cost,
and gpunet's mean and p99 against oracle and random when they ran.
--heavy-client f makes client 0 submit a share f of the tasks (uneven
submitters). --policy takes a comma-separated list as well as all.

--liars or --lie runs the lying-host model instead (scheduler/sim/trust.go):
a fraction of hosts return wrong results with a strategy (always, 10pct,
probation, collude, rejoin, or all), and clients verify a sample of results
by re-running them on an independent host (--verify). It prints, per
strategy, the wrong results users accepted, the compute spent (runs over
runs without verification) and honest latency beside a run without liars.
Its workload is its own (200 hosts, 4 clients, 200,000 tasks, load 0.3);
--hosts, --clients, --tasks, --load, --seed, --hetero, --mean-service and
--warmup change it when given.

docs/scheduling.md describes the model and the results; docs/trust.md the
lying-host model.`,
		Example: `  gpunet sim --policy all
  gpunet sim --hosts 1000 --load 0.9 --beacon-interval 4s --clients 10 --policy all
  gpunet sim --repeat 0.45 --json
  gpunet sim --hosts 100000 --tasks 200000
  gpunet sim --hosts 100000 --tasks 500000 --load-info probe --policy gpunet,oracle,random --heavy-client 0.5
  gpunet sim --textbook --policy pod --d 2 --load 0.95 --tasks 1000000 --steady
  gpunet sim --liars 0.2 --lie all
  gpunet sim --liars 0.2 --lie probation --lie-after 50 --min-rate 0.3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("liars") || cmd.Flags().Changed("lie") {
				return simTrust(cmd, cfg, meanService, trust, lie, verify, verdictDelay, rejoinAfter, asJSON)
			}
			if textbook {
				simTextbook(cmd, &thermal, &governor, &changes, &hedge, &beacon, &meanService, &cfg)
			}
			var err error
			if cfg.Thermal, err = simOnOff("thermal", thermal); err != nil {
				return err
			}
			if cfg.Governor, err = simOnOff("governor", governor); err != nil {
				return err
			}
			if cfg.ChangeBeacons, err = simOnOff("change-beacons", changes); err != nil {
				return err
			}
			if cfg.Hedge, err = simOnOff("hedge", hedge); err != nil {
				return err
			}
			cfg.Service = service
			cfg.BeaconInterval = beacon.Seconds()
			cfg.Duration = duration.Seconds()
			cfg.MeanServiceS = meanService.Seconds()
			cfg.Probe.ShuffleEvery, cfg.Probe.Timeout = shuffleEvery, probeTimeout
			if cmd.Flags().Changed("duration") && !cmd.Flags().Changed("tasks") {
				cfg.Tasks = 0 // --duration alone bounds the run by time
			}
			var policies []sim.Policy
			for _, p := range strings.Split(policy, ",") {
				if p == "all" {
					policies = append(policies, sim.Policies()...)
					continue
				}
				policies = append(policies, sim.Policy(strings.TrimSpace(p)))
			}
			results := make([]*sim.Result, len(policies))
			errs := make([]error, len(policies))
			var wg sync.WaitGroup
			for i, p := range policies {
				c := cfg
				c.Policy = p
				if err := c.Validate(); err != nil {
					return fmt.Errorf("%w (see gpunet sim --help)", err)
				}
				// Runs share nothing, so they use every core.
				wg.Go(func() { results[i], errs[i] = sim.Run(c) })
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					return err
				}
			}
			sim.Compare(results)
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if len(results) == 1 {
					return enc.Encode(results[0])
				}
				return enc.Encode(results)
			}
			if cfg.Textbook {
				return simTextbookTable(out, cfg, results)
			}
			return simTable(out, cfg, results)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Hosts, "hosts", cfg.Hosts, "number of simulated hosts")
	f.Float64Var(&cfg.Load, "load", cfg.Load, "offered load as a fraction of total capacity")
	f.Float64Var(&cfg.Rate, "rate", 0, "arrival rate in tasks per second (overrides --load)")
	f.IntVar(&cfg.Tasks, "tasks", cfg.Tasks, "number of tasks to submit")
	f.DurationVar(&duration, "duration", 0, "stop submitting after this much simulated time (alone, or with --tasks: whichever comes first)")
	f.StringVar(&service, "service", cfg.Service, "service time distribution: exp, fixed or lognormal")
	f.DurationVar(&meanService, "mean-service", time.Duration(cfg.MeanServiceS*float64(time.Second)), "mean service time on a speed-1 host")
	f.Float64Var(&cfg.Hetero, "hetero", cfg.Hetero, "spread of host speeds (σ of a lognormal factor; 5% slow outliers at 1/4 when > 0)")
	f.StringVar(&thermal, "thermal", "on", "heat model and throttling: on or off")
	f.StringVar(&governor, "governor", "on", "host governor that pauses work at the owner's limit: on or off")
	f.DurationVar(&beacon, "beacon-interval", time.Duration(cfg.BeaconInterval*float64(time.Second)), "mean time between a host's periodic beacons (jittered ±25%); 0: exact state, every change seen at once")
	f.StringVar(&changes, "change-beacons", "on", "also beacon when free slots or accepting change: on or off")
	f.IntVar(&cfg.Clients, "clients", cfg.Clients, "number of independent schedulers")
	f.Float64Var(&cfg.Churn, "churn", 0, "fraction of hosts leaving per minute (they come back as new peers)")
	f.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "random seed: the same seed gives the same result")
	f.StringVar(&policy, "policy", string(cfg.Policy), "gpunet, random, roundrobin, pod, oracle, a comma-separated list of them, or all to compare them")
	f.IntVar(&cfg.D, "d", cfg.D, "choices of the pod policy")
	f.BoolVar(&cfg.PodSpeed, "pod-speed", false, "pod picks among its choices by tasks per slot over the host's speed, not tasks per slot alone")
	f.Float64Var(&cfg.Repeat, "repeat", 0, "fraction of tasks that repeat an earlier prompt")
	f.Float64Var(&cfg.Zipf, "zipf", cfg.Zipf, "Zipf exponent of prompt popularity")
	f.IntVar(&cfg.ViewSize, "view", cfg.ViewSize, "peers one gpunet decision scans (a fresh sample when there are more hosts; 0 = all)")
	f.BoolVar(&cfg.ViewFixed, "view-fixed", cfg.ViewFixed, "each client's view is a fixed window of --view hosts (sharded beacons), with a fallback to random hosts when all refuse")
	f.IntVar(&cfg.QueueCap, "queue-cap", cfg.QueueCap, "tasks a host queues beyond its slots before refusing (-1: unbounded)")
	f.StringVar(&hedge, "hedge", "on", "gpunet clients move a queued task that has not started by its deadline: on or off")
	f.IntVar(&cfg.Place.Choices, "choices", cfg.Place.Choices, "gpunet placement: candidates drawn from the pool (d)")
	f.IntVar(&cfg.Place.TopK, "topk", cfg.Place.TopK, "gpunet placement: size of the pool drawn from (k; 1 disables anti-herding)")
	f.Float64Var(&cfg.Warmup, "warmup", cfg.Warmup, "fraction of tasks left out of the time-in-system statistics")
	f.StringVar(&cfg.LoadInfo, "load-info", cfg.LoadInfo, "how gpunet clients learn hosts' load: gossip (every beacon to every node) or probe (peer sampling and probes)")
	f.IntVar(&cfg.Probe.D, "probe-d", cfg.Probe.D, "load-info probe: hosts probed per task")
	f.IntVar(&cfg.Probe.ViewSize, "probe-view", cfg.Probe.ViewSize, "load-info probe: descriptors in each node's peer-sampling view")
	f.IntVar(&cfg.Probe.Piggyback, "probe-piggyback", cfg.Probe.Piggyback, "load-info probe: descriptors a probe reply carries")
	f.IntVar(&cfg.Probe.Rounds, "probe-rounds", cfg.Probe.Rounds, "load-info probe: probe rounds before a client waits and retries")
	f.IntVar(&cfg.Probe.Notify, "probe-notify", cfg.Probe.Notify, "load-info probe: recent probers a host keeps, one of which it tells when a slot comes free with nobody queued (0: no idle notices)")
	f.IntVar(&cfg.Probe.Memory, "probe-memory", cfg.Probe.Memory, "load-info probe: recent probe replies a client keeps and ranks with each round's (0: the round's alone)")
	f.DurationVar(&shuffleEvery, "shuffle-every", cfg.Probe.ShuffleEvery, "load-info probe: peer-sampling shuffle period")
	f.DurationVar(&probeTimeout, "probe-timeout", cfg.Probe.Timeout, "load-info probe: longest wait for probe replies (a host that left never answers)")
	f.Float64Var(&cfg.HeavyClient, "heavy-client", 0, "share of the tasks client 0 submits, the rest spread evenly (0: all even)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON (an array with --policy all)")
	f.BoolVar(&textbook, "textbook", false, "the queueing literature's model: identical single-slot hosts, unbounded queues, exact state (see above)")
	f.BoolVar(&cfg.Steady, "steady", false, "textbook random or pod with exp service: start every queue in its analytic steady state instead of empty")
	f.Float64Var(&trust.Liars, "liars", trust.Liars, "lying-host model: fraction of hosts that lie (see above)")
	f.StringVar(&lie, "lie", "all", "lying-host model: always, 10pct, probation, collude, rejoin, or all")
	f.StringVar(&verify, "verify", "on", "lying-host model: verify results by re-running a sample: on or off")
	f.IntVar(&trust.Probation, "probation", trust.Probation, "lying-host model: results of a host each client re-runs (and holds) before it samples")
	f.Float64Var(&trust.MinRate, "min-rate", trust.MinRate, "lying-host model: lowest sampling rate after probation")
	f.Float64Var(&trust.IdleAbove, "idle-above", trust.IdleAbove, "lying-host model: fraction of free slots above which the sampling rate rises towards 1")
	f.DurationVar(&verdictDelay, "verdict-delay", time.Duration(trust.VerdictDelayS*float64(time.Second)), "lying-host model: time for a fraud proof to reach every other client")
	f.IntVar(&trust.LieAfter, "lie-after", 0, "lying-host model: honest runs per client before a probation or rejoin liar lies (0: --probation)")
	f.DurationVar(&rejoinAfter, "rejoin-after", time.Duration(trust.RejoinS*float64(time.Second)), "lying-host model: time a caught rejoin liar takes to come back as a new identity")
	return cmd
}

// simTrust runs the lying-host model (sim.TrustCompare) and prints it. The
// swarm flags apply when given; the model's own defaults otherwise.
func simTrust(cmd *cobra.Command, cfg sim.Config, meanService time.Duration, trust sim.TrustConfig, lie, verify string, verdictDelay, rejoinAfter time.Duration, asJSON bool) error {
	fl := cmd.Flags()
	set := func(flag string, apply func()) {
		if fl.Changed(flag) {
			apply()
		}
	}
	set("hosts", func() { trust.Hosts = cfg.Hosts })
	set("clients", func() { trust.Clients = cfg.Clients })
	set("tasks", func() { trust.Tasks = cfg.Tasks })
	set("load", func() { trust.Load = cfg.Load })
	set("seed", func() { trust.Seed = cfg.Seed })
	set("hetero", func() { trust.Hetero = cfg.Hetero })
	set("warmup", func() { trust.Warmup = cfg.Warmup })
	set("mean-service", func() { trust.MeanServiceS = meanService.Seconds() })
	trust.VerdictDelayS = verdictDelay.Seconds()
	trust.RejoinS = rejoinAfter.Seconds()
	var err error
	if trust.Verify, err = simOnOff("verify", verify); err != nil {
		return err
	}
	lies := sim.Lies()
	if lie != "all" {
		lies = []sim.Lie{sim.Lie(lie)}
	}
	for _, l := range lies {
		c := trust
		c.Lie = l
		if err := c.Validate(); err != nil {
			return fmt.Errorf("%w (see gpunet sim --help)", err)
		}
	}
	rep, err := sim.TrustCompare(trust, lies)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return simTrustTable(out, rep)
}

// simTrustTable prints the lying-host comparison: one row per strategy
// with verification as configured, wrong results also shown without it.
func simTrustTable(w io.Writer, rep *sim.TrustReport) error {
	c := rep.Config
	fmt.Fprintf(w, "%d hosts, %d clients, %d tasks, load %.2f; %.0f%% liars; probation %d, min rate %.2f, idle above %.2f, verdict delay %gs\n",
		c.Hosts, c.Clients, c.Tasks, c.Load, 100*c.Liars, c.Probation, c.MinRate, c.IdleAbove, c.VerdictDelayS)
	base, honest := rep.NoLiars, rep.HonestOnly
	fmt.Fprintf(w, "no liars, no verification: mean %.2fs, p99 %.2fs; liars' hosts removed: mean %.2fs, p99 %.2fs; no liars, verification: compute %.3f, p99 %.2fs\n\n",
		base.MeanS, base.P99S, honest.MeanS, honest.P99S, rep.Verified.Compute, rep.Verified.P99S)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "lie\twrong, unverified\twrong accepted\tcompute\thonest mean s\thonest p99 s\tp99 / no liars\tp99 / liars removed\tliar ids\tcaught\thonest framed\tpartner draws\t")
	for _, r := range rep.Rows {
		on := r.On
		fmt.Fprintf(tw, "%s\t%.2f%%\t%.4f%% (%d)\t%.3f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%d\t%d\t%d\t\n",
			r.Lie, 100*r.Off.WrongFrac, 100*on.WrongFrac, on.WrongAccepted, on.Compute, on.MeanS, on.P99S,
			on.P99S/base.P99S, on.P99S/honest.P99S, on.LiarIdentities, on.Caught, on.HonestFramed, on.PartnerDraws)
	}
	return tw.Flush()
}

// simTextbook sets the textbook case (sim.TextbookConfig) on every setting
// whose flag was not given.
func simTextbook(cmd *cobra.Command, thermal, governor, changes, hedge *string, beacon, meanService *time.Duration, cfg *sim.Config) {
	tb := sim.TextbookConfig(cfg.Policy, cfg.D, cfg.Load, cfg.Service)
	cfg.Textbook = true
	set := func(flag string, apply func()) {
		if !cmd.Flags().Changed(flag) {
			apply()
		}
	}
	set("thermal", func() { *thermal = "off" })
	set("governor", func() { *governor = "off" })
	set("change-beacons", func() { *changes = "off" })
	set("hedge", func() { *hedge = "off" })
	set("beacon-interval", func() { *beacon = 0 })
	set("mean-service", func() { *meanService = time.Duration(tb.MeanServiceS * float64(time.Second)) })
	set("hetero", func() { cfg.Hetero = tb.Hetero })
	set("clients", func() { cfg.Clients = tb.Clients })
	set("queue-cap", func() { cfg.QueueCap = tb.QueueCap })
	if cfg.Steady {
		set("warmup", func() { cfg.Warmup = 0 })
	}
	cfg.RefusalState = tb.RefusalState
}

// simTextbookTable prints a textbook run: per policy, the simulated mean
// time in system beside the analytic one where the literature gives it.
func simTextbookTable(w io.Writer, cfg sim.Config, rs []*sim.Result) error {
	r0 := rs[0]
	start := "empty queues, warm-up " + fmt.Sprintf("%.0f%%", 100*cfg.Warmup)
	if cfg.Steady {
		start = "queues in their steady state"
	}
	state := "exact state"
	if cfg.BeaconInterval > 0 {
		state = fmt.Sprintf("beacons every %gs", cfg.BeaconInterval)
	}
	queue := "unbounded queues"
	if cfg.QueueCap != sim.Unbounded {
		queue = fmt.Sprintf("queues of %d", cfg.QueueCap)
	}
	fmt.Fprintf(w, "textbook: %d identical single-slot hosts, load %.2f, %d tasks, %s service (mean %gs), %s, %s, %s\n\n",
		r0.Hosts, r0.Load, r0.Tasks, cfg.Service, cfg.MeanServiceS, queue, state, start)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tmean s\tanalytic s\tdifference\tmean wait s\tp50 s\tp99 s\trefusals\twall s\t")
	for _, r := range rs {
		name := string(r.Policy)
		if r.Policy == sim.Pod {
			name = fmt.Sprintf("pod d=%d", cfg.D)
		}
		analytic, diff := "-", "-"
		if r.AnalyticMeanS > 0 {
			analytic = fmt.Sprintf("%.3f", r.AnalyticMeanS)
			diff = fmt.Sprintf("%+.1f%%", 100*(r.MeanS/r.AnalyticMeanS-1))
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%s\t%s\t%.3f\t%.3f\t%.3f\t%d\t%.1f\t\n",
			name, r.MeanS, analytic, diff, r.MeanWaitS, r.P50S, r.P99S, r.Refusals, r.WallS)
	}
	return tw.Flush()
}

func simOnOff(name, v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "true", "yes", "1":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("--%s %q: want on or off", name, v)
}

// simTable prints the setting and one row per policy.
func simTable(w io.Writer, cfg sim.Config, rs []*sim.Result) error {
	r0 := rs[0]
	thermal := "off"
	if cfg.Thermal {
		thermal = "on"
		if cfg.Governor {
			thermal += ", governor on"
		}
	}
	fmt.Fprintf(w, "%d hosts, %d clients, load %.2f (%.1f tasks/s), %d tasks, %s service, thermal %s\n",
		r0.Hosts, r0.Clients, r0.Load, r0.RatePerS, r0.Tasks, cfg.Service, thermal)
	if cfg.BeaconInterval == 0 {
		fmt.Fprint(w, "exact state: every decision sees every host as it is (no beacons)\n\n")
	} else {
		fmt.Fprintf(w, "beacons every %gs", cfg.BeaconInterval)
		if cfg.ChangeBeacons {
			fmt.Fprintf(w, " and on change (at most every %gs)", cfg.MinBeaconGapS)
		}
		fmt.Fprintf(w, ": %.2f per host per second, gossip ≈ %s per node\n\n", r0.BeaconsPerHostS, simBytes(r0.GossipBytesPerNodeS))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tmean s\tp50 s\tp99 s\tthrottled GPU-s\tpeak °C\tslowdown margin °C\tover limit °C\trefusals\thedges\tcache hits\twall s\t")
	for _, r := range rs {
		heat := "-\t-\t-\t-"
		if cfg.Thermal {
			margin := r.MinSlowdownMarginC
			if math.Abs(margin) < 0.05 {
				margin = 0 // a card held at its slowdown temperature, less rounding: not "-0.0"
			}
			heat = fmt.Sprintf("%.0f\t%.1f\t%.1f\t%.2f", r.ThrottledGPUS, r.PeakTempC, margin, r.MaxOverLimitC)
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%s\t%d\t%d\t%.1f%%\t%.1f\t\n",
			r.Policy, r.MeanS, r.P50S, r.P99S, heat, r.Refusals, r.Hedges, 100*r.CacheHitRatio, r.WallS)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rs {
		if r.LoadInfo == sim.LoadProbe {
			simProbeSummary(w, cfg, r)
		}
	}
	return nil
}

// simProbeSummary prints what load information by probing cost and how
// gpunet's times compare with the oracle's and random's.
func simProbeSummary(w io.Writer, cfg sim.Config, r *sim.Result) {
	submit := "even"
	if cfg.HeavyClient > 0 {
		submit = fmt.Sprintf("client 0 submits %.0f%%", 100*cfg.HeavyClient)
	}
	fmt.Fprintf(w, "\nload info: probe, d=%d, view %d, piggyback %d, shuffle every %s; submitters %s\n",
		cfg.Probe.D, cfg.Probe.ViewSize, cfg.Probe.Piggyback, cfg.Probe.ShuffleEvery, submit)
	fmt.Fprintf(w, "  per node %s (gossip would be %s); per host %s, of which shuffles %s\n",
		simBytes(r.LoadInfoBytesPerNodeS), simBytes(r.GossipBytesPerNodeS), simBytes(r.ProbeBytesPerHostS), simBytes(r.ShuffleBytesPerHostS))
	fmt.Fprintf(w, "  per client %s, busiest %s; %.0f B per task submitted: %.2f probes, %.3f new connections\n",
		simBytes(r.ProbeBytesPerClientS), simBytes(r.ProbeBytesPerClientSMax), r.ProbeBytesPerTask, r.ProbesPerTask, r.ConnSetupsPerTask)
	if r.MeanVsOracle > 0 || r.MeanVsRandom > 0 {
		fmt.Fprintf(w, "  gpunet: mean %.2fx / p99 %.2fx the oracle's, mean %.2fx / p99 %.2fx random's\n",
			r.MeanVsOracle, r.P99VsOracle, r.MeanVsRandom, r.P99VsRandom)
	}
}

func simBytes(b float64) string {
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.1f GB/s", b/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%.1f MB/s", b/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%.1f kB/s", b/1e3)
	}
	return fmt.Sprintf("%.0f B/s", b)
}
