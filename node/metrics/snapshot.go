package metrics

import (
	"context"
	"strconv"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/prometheus/client_golang/prometheus"
)

// scrapeTimeout bounds the Status read behind one scrape: a GPU's
// telemetry (nvidia-smi, say) can hang, and Prometheus' own default scrape
// timeout is 10 s.
const scrapeTimeout = 3 * time.Second

// snapshot is the collector of what the node reports about itself: it
// reads Status once per scrape. Host and GPU metrics appear only on a node
// that has them.
type snapshot struct{ m *Metrics }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	connectedPeers = desc("gpunet_connected_peers", "Peers this node has a connection to.")
	dhtPeers       = desc("gpunet_dht_routing_table_peers", "Peers in this node's DHT routing table.")
	viewPeers      = desc("gpunet_view_peers", "Hosts in this node's gossip view (heard from within about three beacon intervals).")
	beaconsSent    = desc("gpunet_beacons_sent_total", "Beacons this node published.")
	beaconBytes    = desc("gpunet_beacon_sent_bytes_total", "Bytes of the beacons this node published.")
	moved          = desc("gpunet_submissions_moved_total", "Submitted tasks the queue hedge moved to another host.")

	cacheEntries = desc("gpunet_cache_entries", "Results held in the store.")
	cacheBytes   = desc("gpunet_cache_size_bytes", "Bytes the store's budget counts (manifests and distinct blocks).")
	cacheBudget  = desc("gpunet_cache_budget_bytes", "The store's budget; past it, least recently used results are evicted.")
	cacheHits    = desc("gpunet_cache_hits_total", "Store lookups that found the result.")
	cacheEvicted = desc("gpunet_cache_evictions_total", "Results the store evicted to stay within its budget.")
	cacheMisses  = desc("gpunet_cache_misses_total", "Store lookups that did not.")

	fetchRequests = desc("gpunet_fetch_requests_total", "Fetch requests this node answered (outcome served, not_found, refused).", "outcome")
	fetched       = desc("gpunet_fetched_results_total", "Results this node fetched from peers and verified.")
	badProviders  = desc("gpunet_fetch_bad_providers_total", "Providers caught sending this node bad data.")

	kernelRuns   = desc("gpunet_kernel_runs_total", "Kernel runs on this host.")
	slots        = desc("gpunet_slots", "Tasks this host runs at once.")
	slotsBusy    = desc("gpunet_slots_busy", "Tasks running on this host now.")
	queueDepth   = desc("gpunet_queue_depth", "Tasks waiting in this host's queue for a slot.")
	queueWaiters = desc("gpunet_queue_waiting_requests", "Requests waiting on this host's queued and running tasks (identical requests share a task).")
	paused       = desc("gpunet_host_paused", "1 while the owner has paused the host: it takes no work.")
	offHours     = desc("gpunet_host_schedule_paused", "1 while the host is outside its owner's lending hours: it takes no work.")
	hot          = desc("gpunet_governor_hot", "1 in the governor's cool-down band: the host takes no new work until the GPU cools.")
	cooling      = desc("gpunet_governor_cooling", "1 while running tasks are held between steps for the GPU to cool (the hard stop).")
	maxTemp      = desc("gpunet_governor_max_temperature_celsius", "The owner's temperature limit (--max-temp, else 5 °C under the GPU's slowdown temperature).")

	gpuInfo      = desc("gpunet_gpu_info", "Always 1; its labels name this host's GPU.", "name", "simulated")
	gpuTemp      = desc("gpunet_gpu_temperature_celsius", "The GPU's temperature.")
	gpuSlowdown  = desc("gpunet_gpu_slowdown_temperature_celsius", "The temperature at which the GPU throttles itself.")
	gpuPower     = desc("gpunet_gpu_power_watts", "The GPU's power draw.")
	gpuUtil      = desc("gpunet_gpu_utilization_ratio", "The GPU's utilisation, 0 to 1.")
	gpuMemUsed   = desc("gpunet_gpu_memory_used_bytes", "GPU memory in use.")
	gpuMemTotal  = desc("gpunet_gpu_memory_total_bytes", "GPU memory in all.")
	gpuThrottled = desc("gpunet_gpu_throttled", "1 while the GPU reports it is throttling.")
)

var snapshotDescs = []*prometheus.Desc{
	connectedPeers, dhtPeers, viewPeers, beaconsSent, beaconBytes, moved,
	cacheEntries, cacheBytes, cacheBudget, cacheHits, cacheMisses, cacheEvicted,
	fetchRequests, fetched, badProviders,
	kernelRuns, slots, slotsBusy, queueDepth, queueWaiters, paused, offHours, hot, cooling, maxTemp,
	gpuInfo, gpuTemp, gpuSlowdown, gpuPower, gpuUtil, gpuMemUsed, gpuMemTotal, gpuThrottled,
}

func (c *snapshot) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range snapshotDescs {
		ch <- d
	}
}

func (c *snapshot) Collect(ch chan<- prometheus.Metric) {
	src := c.m.src.Load()
	if src == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	s := (*src).Status(ctx)

	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	gauge(connectedPeers, float64(s.Peers))
	gauge(dhtPeers, float64(s.DHTPeers))
	gauge(viewPeers, float64(s.ViewPeers))
	counter(moved, s.Moved)
	gauge(cacheEntries, float64(s.Cache.Entries))
	gauge(cacheBytes, float64(s.Cache.Bytes))
	gauge(cacheBudget, float64(s.Cache.BudgetBytes))
	counter(cacheHits, s.Cache.Hits)
	counter(cacheEvicted, s.Cache.Evictions)
	counter(cacheMisses, s.Cache.Misses)
	counter(fetchRequests, s.Fetch.Served, "served")
	counter(fetchRequests, s.Fetch.NotFound, "not_found")
	counter(fetchRequests, s.Fetch.Refused, "refused")
	counter(fetched, s.Fetch.Fetched)
	counter(badProviders, s.Fetch.BadProvider)

	counter(beaconsSent, s.BeaconsSent)
	counter(beaconBytes, s.BeaconBytes)
	if s.Host {
		counter(kernelRuns, s.KernelRuns)
		gauge(slots, float64(s.Slots))
		gauge(slotsBusy, float64(s.Running))
		gauge(queueDepth, float64(s.Queued))
		gauge(queueWaiters, float64(s.Waiting))
		gauge(paused, bit(s.Paused))
		gauge(offHours, bit(s.OffHours))
		gauge(hot, bit(s.Hot))
		gauge(cooling, bit(s.Cooling))
		if s.MaxTempC > 0 {
			gauge(maxTemp, s.MaxTempC)
		}
	}
	if g := s.GPU; g != nil {
		gauge(gpuInfo, 1, g.Name, strconv.FormatBool(g.Simulated))
		gauge(gpuTemp, g.TempC)
		if g.LimitC > 0 {
			gauge(gpuSlowdown, g.LimitC)
		}
		gauge(gpuPower, g.PowerW)
		gauge(gpuUtil, g.UtilPct/100)
		gauge(gpuMemUsed, float64(g.MemUsedMB<<20))
		gauge(gpuMemTotal, float64(g.MemTotalMB<<20))
		gauge(gpuThrottled, bit(g.Throttled))
	}
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// The snapshot's types are node's: a change there should fail here, at
// build time, not in a scrape.
var _ Source = (*node.Node)(nil)
