package sim

// Result is the outcome of one run. Times are seconds; GPU-seconds weigh
// time by the fraction of a host's slots in use.
type Result struct {
	Policy  Policy  `json:"policy"`
	Hosts   int     `json:"hosts"`
	Clients int     `json:"clients"`
	Load    float64 `json:"load"`
	// RatePerS is the arrival rate used; Tasks the tasks that arrived and
	// Completed those that finished (always equal: the run drains).
	RatePerS  float64 `json:"rate_per_s"`
	Tasks     int     `json:"tasks"`
	Completed int     `json:"completed"`
	// Time in system, arrival to result, of the tasks after the warm-up.
	MeanS float64 `json:"mean_s"`
	P50S  float64 `json:"p50_s"`
	P99S  float64 `json:"p99_s"`
	P999S float64 `json:"p999_s"`
	// MeanWaitS and MeanRunS split the GPU runs' time into waiting (from
	// arrival, retries included) and running.
	MeanWaitS float64 `json:"mean_wait_s"`
	MeanRunS  float64 `json:"mean_run_s"`
	// AnalyticMeanS is the mean time in system the queueing literature
	// gives for this run (Analytic), 0 when it gives none.
	AnalyticMeanS float64 `json:"analytic_mean_s,omitempty"`
	// Thermal: GPU-seconds run below full clock (hardware slowdown or the
	// governor's pause), the hottest any host got, how close any host came
	// to its slowdown temperature, how far any host went past its owner's
	// limit and how many did.
	ThrottledGPUS float64 `json:"throttled_gpu_s"`
	PeakTempC     float64 `json:"peak_temp_c"`
	// MinSlowdownMarginC is the least, over hosts, of the hardware slowdown
	// temperature minus the host's peak: how close any card came to it.
	MinSlowdownMarginC float64 `json:"min_slowdown_margin_c"`
	MaxOverLimitC      float64 `json:"max_over_limit_c"`
	HostsOverLimit     int     `json:"hosts_over_limit"`
	// Beacons counts the beacons published, periodic and on change;
	// BeaconsPerHostS is their rate per host. GossipBytesPerNodeS is the
	// modelled gossip traffic of one node (in + out) that carries them all;
	// see GossipModel.
	Beacons             int     `json:"beacons"`
	BeaconsPerHostS     float64 `json:"beacons_per_host_s"`
	GossipBytesPerNodeS float64 `json:"gossip_bytes_per_node_s"`
	// LoadInfo is how the gpunet policy learned hosts' load (gossip or
	// probe; empty for the other policies). LoadInfoBytesPerNodeS is what
	// that cost one node, in and out: GossipBytesPerNodeS for gossip; for
	// probe, every probe, reply, shuffle and connection set-up, counted at
	// both ends and spread over the hosts, as if each host submitted an
	// even share of the tasks (a client's own cost is in
	// ProbeBytesPerTask). Rates are over the period tasks arrive.
	LoadInfo              string  `json:"load_info,omitempty"`
	LoadInfoBytesPerNodeS float64 `json:"load_info_bytes_per_node_s,omitempty"`
	// Probe: ProbeBytesPerHostS is a host's share (probes it answered,
	// shuffles, connections), of which ShuffleBytesPerHostS shuffles;
	// ProbeBytesPerClientS the mean over clients and ...Max the busiest
	// one's, which grow with what they submit; ProbeBytesPerTask a
	// client's bytes per task it submitted (hedges included).
	ProbeBytesPerHostS      float64 `json:"probe_bytes_per_host_s,omitempty"`
	ShuffleBytesPerHostS    float64 `json:"shuffle_bytes_per_host_s,omitempty"`
	ProbeBytesPerClientS    float64 `json:"probe_bytes_per_client_s,omitempty"`
	ProbeBytesPerClientSMax float64 `json:"probe_bytes_per_client_s_max,omitempty"`
	ProbeBytesPerTask       float64 `json:"probe_bytes_per_task,omitempty"`
	Probes                  int     `json:"probes,omitempty"`
	ProbesFailed            int     `json:"probes_failed,omitempty"` // to hosts that had left
	ProbeRounds             int     `json:"probe_rounds,omitempty"`
	ProbesPerTask           float64 `json:"probes_per_task,omitempty"`
	ConnSetups              int     `json:"conn_setups,omitempty"`
	ConnSetupsPerTask       float64 `json:"conn_setups_per_task,omitempty"`
	Shuffles                int     `json:"shuffles,omitempty"`
	IdleNotices             int     `json:"idle_notices,omitempty"`
	Rebootstraps            int     `json:"rebootstraps,omitempty"` // client views refilled from the DHT
	// Against the oracle and random policies of the same comparison
	// (Compare): mean and p99 time in system as multiples of theirs.
	MeanVsOracle float64 `json:"mean_vs_oracle,omitempty"`
	P99VsOracle  float64 `json:"p99_vs_oracle,omitempty"`
	MeanVsRandom float64 `json:"mean_vs_random,omitempty"`
	P99VsRandom  float64 `json:"p99_vs_random,omitempty"`
	// Refusals counts offers a host refused, by reason.
	Refusals     int `json:"refusals"`
	RefusedBusy  int `json:"refused_busy"`
	RefusedHot   int `json:"refused_hot"`
	RefusedGone  int `json:"refused_gone"`
	Attempts     int `json:"attempts"`
	Retries      int `json:"retries"`       // rounds in which every choice refused
	Requeued     int `json:"requeued"`      // tasks handed back by a host that left
	Hedges       int `json:"hedges"`        // queued tasks a gpunet client moved after their deadline
	HostsLeft    int `json:"hosts_left"`    // churn departures
	DoubleFinish int `json:"double_finish"` // tasks completed more than once: must be 0
	// Cache (issue 4): CacheHitRatio is (hits + coalesced) / tasks: the
	// tasks that needed no GPU run of their own.
	CacheHitRatio float64 `json:"cache_hit_ratio"`
	CacheHits     int     `json:"cache_hits"`
	Coalesced     int     `json:"coalesced"`
	DuplicateRuns int     `json:"duplicate_runs"` // a second run of a task already running elsewhere
	WrongHits     int     `json:"wrong_hits"`     // a hit or join for a different task: must be 0
	GPUSSaved     float64 `json:"gpu_s_saved"`
	GPUSLost      float64 `json:"gpu_s_lost"` // work lost on hosts that left
	// Utilisation is busy GPU-seconds over host-seconds.
	Utilisation float64        `json:"utilisation"`
	ByProfile   []ProfileStats `json:"by_profile"`
	SimS        float64        `json:"sim_s"`
	Events      int            `json:"events"`
	WallS       float64        `json:"wall_s"`
}

// ProfileStats breaks thermal and load results down by kind of card.
type ProfileStats struct {
	Name          string  `json:"name"`
	Hosts         int     `json:"hosts"`
	TasksRun      int     `json:"tasks_run"`
	Utilisation   float64 `json:"utilisation"`
	PeakTempC     float64 `json:"peak_temp_c"`
	ThrottledGPUS float64 `json:"throttled_gpu_s"`
}

// Gossip model constants: see GossipModel.
const (
	// BeaconBytes is one signed beacon on the wire: about 330 bytes of
	// DAG-CBOR fields (peer ID, sequence number, time, slots, queue, five
	// temperatures and factors, memory, one model's service time, an Ed25519
	// signature) plus about 140 bytes of GossipSub envelope (from, seqno,
	// topic, message signature, protobuf framing).
	BeaconBytes = 470
	// MeshDegree is GossipSub's D, LazyDegree its D_lazy, GossipHistory the
	// heartbeats a message ID is advertised for, MsgIDBytes a default
	// message ID (from + seqno).
	MeshDegree    = 6
	LazyDegree    = 6
	GossipHistory = 3
	MsgIDBytes    = 46
)

// GossipModel returns the bytes per second one node sends and receives so
// that every node hears every host's beacons, each host publishing
// perHostS beacons a second:
//
//	hosts × perHostS × (2(D−1)·BeaconBytes + 2·D_lazy·history·MsgIDBytes)
//
// In a GossipSub mesh of degree D each node forwards a new message to its
// D−1 other mesh peers and so also receives about D−1 copies of it; each
// heartbeat it advertises the IDs of recent messages (IHAVE) to D_lazy
// peers for `history` heartbeats, and hears as many. IDONTWANT (GossipSub
// 1.2) and beacons sent only on change would lower it.
func GossipModel(hosts int, perHostS float64) float64 {
	perBeacon := 2*(MeshDegree-1)*BeaconBytes + 2*LazyDegree*GossipHistory*MsgIDBytes
	return float64(hosts) * perHostS * float64(perBeacon)
}

// Compare sets, on every gpunet result of rs, its mean and p99 time in
// system as multiples of the oracle's and random's in rs, when rs has them.
func Compare(rs []*Result) {
	var oracle, random *Result
	for _, r := range rs {
		switch r.Policy {
		case Oracle:
			oracle = r
		case Random:
			random = r
		}
	}
	ratio := func(a, b float64) float64 {
		if b > 0 {
			return a / b
		}
		return 0
	}
	for _, r := range rs {
		if r.Policy != Gpunet {
			continue
		}
		if oracle != nil {
			r.MeanVsOracle, r.P99VsOracle = ratio(r.MeanS, oracle.MeanS), ratio(r.P99S, oracle.P99S)
		}
		if random != nil {
			r.MeanVsRandom, r.P99VsRandom = ratio(r.MeanS, random.MeanS), ratio(r.P99S, random.P99S)
		}
	}
}
