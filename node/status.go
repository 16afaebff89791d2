package node

import (
	"context"
	"math"
	"sort"
	"time"

	"github.com/gpunet/gpunet/node/reach"
	"github.com/gpunet/gpunet/node/sampling"
	"github.com/gpunet/gpunet/protocol"
)

// Status is what `gpunet status` shows and the local API returns.
type Status struct {
	PeerID     string     `json:"peer_id"`
	Addrs      []string   `json:"addrs"`
	Host       bool       `json:"host"`
	Kernel     string     `json:"kernel,omitempty"`
	Models     []string   `json:"models,omitempty"`
	UptimeS    float64    `json:"uptime_s"`
	Peers      int        `json:"peers"`
	DHTPeers   int        `json:"dht_peers"`
	KernelRuns uint64     `json:"kernel_runs"`
	Served     uint64     `json:"served"`
	ServedHits uint64     `json:"served_from_cache"`
	Refused    uint64     `json:"refused"`
	Submitted  uint64     `json:"submitted"`
	Moved      uint64     `json:"moved"` // submitted tasks the queue hedge moved to another host
	Cache      CacheStats `json:"cache"`
	Fetch      FetchStats `json:"fetch"`
	// Verification is what this node's checks of other hosts' results did
	// (docs/trust.md); absent when verification is off.
	Verification *TrustStats `json:"verification,omitempty"`
	// LoadInfo is how this node learns the hosts' load (Config.LoadInfo);
	// Sampling is what its probing did, absent when it gossips.
	LoadInfo string          `json:"load_info"`
	Sampling *sampling.Stats `json:"sampling,omitempty"`
	GPU      *GPUStatus      `json:"gpu,omitempty"`
	// Host-only: the owner's pause, the lending hours, the thermal
	// governor's state and the queue. paused, off_hours and hot are always
	// written, false included, so a script never reads "absent" as
	// "unknown". The host takes new work only while all three are false.
	Paused bool `json:"paused"` // the owner paused the host: it takes no work
	// OffHours: outside the owner's lending hours (LendHours), the host
	// paused itself; it resumes when they begin. Separate from Paused,
	// which only the owner sets and clears: resuming outside the hours
	// clears Paused, and OffHours holds until the hours begin.
	OffHours bool `json:"off_hours"`
	// LendHours is the daily window of local time in which the host takes
	// work, "22:00-07:00"; absent: every hour.
	LendHours string `json:"lend_hours,omitempty"`
	// Hot: the governor's cool-down band. The GPU reached MaxTempC − 1 °C;
	// the host takes no new work until it falls to ResumeTempC.
	Hot bool `json:"hot"`
	// Cooling: running tasks are held between two steps until the GPU
	// cools (the governor's hard stop; the GPU idles meanwhile).
	Cooling bool `json:"cooling"`
	// TempC is the governor's last GPU reading, the one it judged by
	// (0: no reading yet, or no GPU telemetry).
	TempC float64 `json:"temp_c,omitempty"`
	// MaxTempC is the owner's limit (--max-temp or POST /v1/host/limits,
	// else 5 °C under the GPU's slowdown temperature); 0: none, as
	// without GPU telemetry.
	MaxTempC    float64 `json:"max_temp_c,omitempty"`
	ResumeTempC float64 `json:"resume_temp_c,omitempty"` // hot ends at or below this
	Slots       int     `json:"slots,omitempty"`         // tasks the host runs at once
	QueueMax    int     `json:"queue_max,omitempty"`     // tasks that may wait for a slot
	Running     int     `json:"running,omitempty"`
	Queued      int     `json:"queued,omitempty"`
	Waiting     int     `json:"waiting,omitempty"` // requests waiting on those tasks (identical ones share a task)
	// Gossip: peers in the view, beacons this node published and their bytes.
	ViewPeers   int    `json:"view_peers"`
	BeaconsSent uint64 `json:"beacons_sent,omitempty"`
	BeaconBytes uint64 `json:"beacon_bytes,omitempty"`
	// Reach says whether peers can dial this node (public, private,
	// unknown, and who said so), with its confirmed and relay addresses,
	// and whether it is in a private swarm (docs/nat.md).
	Reach reach.Info `json:"reach"`
}

// CacheStats summarises the results store.
type CacheStats struct {
	Entries     int    `json:"entries"`
	Bytes       int64  `json:"bytes"`
	BudgetBytes int64  `json:"budget_bytes"`
	Hits        uint64 `json:"hits"`
	Evictions   uint64 `json:"evictions"`
	Misses      uint64 `json:"misses"`
}

// GPUStatus is the device's current telemetry.
type GPUStatus struct {
	Name       string  `json:"name"`
	Simulated  bool    `json:"simulated"`
	TempC      float64 `json:"temp_c"`
	LimitC     float64 `json:"temp_limit_c"`
	UtilPct    float64 `json:"util_pct"`
	MemUsedMB  uint64  `json:"mem_used_mb"`
	MemTotalMB uint64  `json:"mem_total_mb"`
	PowerW     float64 `json:"power_w"`
	Throttled  bool    `json:"throttled"`
}

// Status reports the node's state now.
func (n *Node) Status(ctx context.Context) Status {
	s := Status{
		PeerID:     n.host.ID().String(),
		Addrs:      n.Addrs(),
		Host:       n.cfg.Kernel != nil,
		UptimeS:    math.Round(time.Since(n.started).Seconds()*10) / 10,
		Peers:      len(n.host.Network().Peers()),
		DHTPeers:   n.dht.RoutingTable().Size(),
		KernelRuns: n.stats.kernelRuns.Load(),
		Served:     n.stats.served.Load(),
		ServedHits: n.stats.servedCached.Load(),
		Refused:    n.stats.refused.Load(),
		Submitted:  n.stats.submitted.Load(),
		Moved:      n.stats.moved.Load(),
	}
	if n.cfg.Kernel != nil {
		s.Kernel = n.cfg.Kernel.Name()
		s.Models = n.cfg.Kernel.Models()
		n.serve.mu.Lock()
		n.serve.thermalLocked(&s)
		s.Slots, s.QueueMax = n.cfg.Slots, n.cfg.QueueLen
		s.Running, s.Queued = n.serve.running, n.serve.queue.len()
		for _, f := range n.serve.flights {
			s.Waiting += f.waiters
		}
		n.serve.mu.Unlock()
	}
	s.Fetch = n.FetchStats()
	if ts, ok := n.TrustStats(); ok {
		s.Verification = &ts
	}
	s.Reach = n.reach.Info()
	s.LoadInfo = n.cfg.LoadInfo
	if n.probing() {
		st := n.sampling.Stats()
		s.Sampling = &st
	}
	s.ViewPeers = len(n.View())
	s.BeaconsSent, s.BeaconBytes = n.stats.beaconsSent.Load(), n.stats.beaconBytes.Load()
	st := n.store.Stats()
	s.Cache = CacheStats{Entries: st.Entries, Bytes: st.Bytes, BudgetBytes: st.Budget, Hits: st.Hits, Misses: st.Misses, Evictions: st.Evictions}
	if d := n.cfg.Device; d != nil {
		if t, err := d.Telemetry(ctx); err == nil {
			s.GPU = &GPUStatus{Name: d.Name(), Simulated: d.Simulated(), TempC: round1(t.TempC), LimitC: t.SlowdownTempC,
				UtilPct: round1(t.UtilPct), MemUsedMB: t.MemUsedMB, MemTotalMB: t.MemTotalMB, PowerW: round1(t.PowerW), Throttled: t.Throttled()}
		}
	}
	return s
}

// thermalLocked copies the governor's state into st. Called with s.mu
// held, as the governor and the last reading are guarded by it.
func (s *server) thermalLocked(st *Status) {
	g := s.gov
	st.Paused, st.OffHours, st.Hot, st.Cooling = s.ownerPaused, s.offHours, g.Hot(), s.throttled
	if h := s.n.cfg.LendHours; !h.Always() {
		st.LendHours = h.String()
	}
	st.TempC = round1(s.tempC)
	if g.LimitC > 0 {
		st.MaxTempC, st.ResumeTempC = g.LimitC, g.LimitC-g.HysteresisC
	}
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }

// gpuInfo describes the device for capacity records.
func (n *Node) gpuInfo() (protocol.GPUInfo, bool) {
	d := n.cfg.Device
	if d == nil {
		return protocol.GPUInfo{}, false
	}
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	t, err := d.Telemetry(ctx)
	if err != nil {
		return protocol.GPUInfo{Name: d.Name(), Simulated: d.Simulated()}, true
	}
	return protocol.GPUInfo{Name: d.Name(), MemoryMB: t.MemTotalMB, TempLimitC: uint32(t.SlowdownTempC), Simulated: d.Simulated()}, true
}

// PeerInfo is one connected peer.
type PeerInfo struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
	DHT   bool     `json:"dht_server"`
}

// Peers lists connected peers, sorted by ID.
func (n *Node) Peers() []PeerInfo {
	var out []PeerInfo
	for _, p := range n.host.Network().Peers() {
		pi := PeerInfo{ID: p.String(), DHT: n.dht.RoutingTable().Find(p) != ""}
		for _, c := range n.host.Network().ConnsToPeer(p) {
			pi.Addrs = append(pi.Addrs, c.RemoteMultiaddr().String())
		}
		out = append(out, pi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
