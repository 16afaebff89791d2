package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"runtime"
	"sync/atomic"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Source is what the metrics read at scrape time: a *node.Node. Status is
// called once per scrape, on the scraping goroutine, with a context that
// bounds it (a GPU reading may be slow); it must be safe for concurrent
// use.
type Source interface {
	Status(ctx context.Context) node.Status
}

// DurationBuckets are the histograms' buckets, in seconds: from a cached
// answer or a one-step preview (50 ms) to a large image on a slow GPU, or a
// long wait in a busy swarm's queue (10 min).
var DurationBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600}

// Label values. Every label takes one of a few values, fixed here or by the
// protocol, so that no series is ever made per peer, task or prompt.
const (
	outcomeOK      = "ok"
	outcomeError   = "error"
	outcomeRefused = "refused"
	// cacheNone labels what has no cache kind: a failed submission, a
	// refusal.
	cacheNone = "none"
	// other stands for a value outside the known set (a refusal code
	// from a newer build, say), which must not make a new series.
	other = "other"
)

var (
	cacheKinds    = []string{node.CacheMiss, node.CacheLocal, node.CacheNetwork}
	beaconResults = []string{node.BeaconAccepted, node.BeaconRejected, node.BeaconIgnored}
	refusalCodes  = []string{protocol.CodeBusy, protocol.CodeTooHot, protocol.CodePaused, protocol.CodeRateLimited,
		protocol.CodeUnsupportedModel, protocol.CodeBadRequest, protocol.CodeNotFound, protocol.CodeInternal}
)

// Metrics is one node's metrics. Create it with New, join it to the node's
// config with Attach before node.New, Bind the running node, and serve
// Handler. Its methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry
	log *slog.Logger
	src atomic.Pointer[Source]

	submissions *prometheus.CounterVec   // outcome, cache
	submitTime  *prometheus.HistogramVec // cache
	served      *prometheus.CounterVec   // outcome, cache
	refusals    *prometheus.CounterVec   // code
	taskTime    *prometheus.HistogramVec // cache
	queueWait   prometheus.Histogram
	kernelTime  prometheus.Histogram
	beacons     *prometheus.CounterVec // outcome
	provides    *prometheus.CounterVec // outcome
}

var _ node.Observer = (*Metrics)(nil)

// Option configures New.
type Option func(*Metrics)

// WithLogger logs through l the errors met while serving a scrape (default:
// slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(m *Metrics) {
		if l != nil {
			m.log = l
		}
	}
}

// New returns metrics for one node of this build's version, on a registry
// of their own that also carries the Go runtime's and the process's.
func New(version string, opts ...Option) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), log: slog.Default()}
	for _, o := range opts {
		o(m)
	}
	m.submissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpunet_submissions_total",
		Help: "Tasks submitted on this node, by outcome (ok, error) and, for those that succeeded, where the result came from (miss: a host ran the kernel; local: this node's store; network: a peer's store); none for errors.",
	}, []string{"outcome", "cache"})
	m.submitTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gpunet_submission_duration_seconds",
		Help:    "Time from a submission to its result or error, by cache kind (none for errors).",
		Buckets: DurationBuckets,
	}, []string{"cache"})
	m.served = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpunet_tasks_served_total",
		Help: "Task requests this host answered, from peers or from itself: outcome ok (a result sent; cache miss: the kernel ran, local: from the store) or refused (cache none).",
	}, []string{"outcome", "cache"})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpunet_task_refusals_total",
		Help: "Task requests this host refused, by the protocol's error code.",
	}, []string{"code"})
	m.taskTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gpunet_task_duration_seconds",
		Help:    "Time from a task request to the result this host sent, by cache kind (miss, local).",
		Buckets: DurationBuckets,
	}, []string{"cache"})
	m.queueWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "gpunet_task_queue_wait_seconds",
		Help:    "Time a served task waited in this host's queue before its kernel started (from the join, for a request that joined a computation in progress).",
		Buckets: DurationBuckets,
	})
	m.kernelTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "gpunet_task_kernel_seconds",
		Help:    "Time the kernel ran for a served task.",
		Buckets: DurationBuckets,
	})
	m.beacons = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpunet_beacons_received_total",
		Help: "Beacons this node's validator judged: accepted, rejected (malformed, forged, flooding) or ignored (stale, a replay).",
	}, []string{"outcome"})
	m.provides = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gpunet_dht_provides_total",
		Help: "DHT provides of results' TaskCIDs, by outcome (ok, error).",
	}, []string{"outcome"})
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "gpunet_build_info",
		Help:        "Always 1; its labels name the build.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)

	// Every known label value starts at zero, so a rate() sees the first
	// event and a dashboard shows 0 rather than no data.
	for _, c := range cacheKinds {
		m.submissions.WithLabelValues(outcomeOK, c)
		m.submitTime.WithLabelValues(c)
	}
	m.submissions.WithLabelValues(outcomeError, cacheNone)
	m.submitTime.WithLabelValues(cacheNone)
	for _, c := range []string{node.CacheMiss, node.CacheLocal} {
		m.served.WithLabelValues(outcomeOK, c)
		m.taskTime.WithLabelValues(c)
	}
	m.served.WithLabelValues(outcomeRefused, cacheNone)
	for _, c := range refusalCodes {
		m.refusals.WithLabelValues(c)
	}
	for _, o := range beaconResults {
		m.beacons.WithLabelValues(o)
	}
	for _, o := range []string{outcomeOK, outcomeError} {
		m.provides.WithLabelValues(o)
	}

	m.reg.MustRegister(m.submissions, m.submitTime, m.served, m.refusals, m.taskTime, m.queueWait, m.kernelTime,
		m.beacons, m.provides, build, &snapshot{m: m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry the metrics are on; go-libp2p registers there
// too once Attach has set it in a node's config.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Attach joins m to a node's config before node.New: m observes the node,
// go-libp2p registers its metrics on m's registry.
func (m *Metrics) Attach(cfg *node.Config) {
	cfg.Observers = append(cfg.Observers, m)
	cfg.MetricsRegisterer = m.reg
}

// Bind makes src the node whose state the gauges report at scrape time;
// until then a scrape has only the event counters.
func (m *Metrics) Bind(src Source) { m.src.Store(&src) }

// Handler serves the registry in Prometheus' exposition formats. A
// collector's error is logged and the rest is still served, so one bad
// reading does not blind the whole scrape.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(m.log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg, // counts promhttp_metric_handler_errors_total
	})
}

// SubmitProgress is not counted: a submission's steps are the dashboard's;
// its end is SubmitDone's.
func (m *Metrics) SubmitProgress(node.SubmitEvent) {}

// SubmitDone counts a submission and its time.
func (m *Metrics) SubmitDone(e node.SubmitEvent) {
	outcome, cache := outcomeOK, cacheNone
	if e.Err != nil || e.Result == nil {
		outcome = outcomeError
	} else {
		cache = known(e.Result.Cache, cacheKinds)
	}
	m.submissions.WithLabelValues(outcome, cache).Inc()
	m.submitTime.WithLabelValues(cache).Observe(e.Elapsed.Seconds())
}

// Served counts a request this host answered; the timings are those of
// results sent, and queue and kernel times only where a kernel ran.
func (m *Metrics) Served(e node.ServedEvent) {
	if e.Code != "" {
		m.served.WithLabelValues(outcomeRefused, cacheNone).Inc()
		m.refusals.WithLabelValues(known(e.Code, refusalCodes)).Inc()
		return
	}
	cache := node.CacheMiss
	if e.Cached {
		cache = node.CacheLocal
	}
	m.served.WithLabelValues(outcomeOK, cache).Inc()
	m.taskTime.WithLabelValues(cache).Observe(e.Elapsed.Seconds())
	if !e.Cached {
		m.queueWait.Observe(e.QueueWait.Seconds())
		m.kernelTime.Observe(e.KernelTime.Seconds())
	}
}

// Beacon counts a judged beacon.
func (m *Metrics) Beacon(outcome string) {
	m.beacons.WithLabelValues(known(outcome, beaconResults)).Inc()
}

// Provided counts a DHT provide.
func (m *Metrics) Provided(err error) {
	outcome := outcomeOK
	if err != nil {
		outcome = outcomeError
	}
	m.provides.WithLabelValues(outcome).Inc()
}

// known returns v if it is one of values, else "other".
func known(v string, values []string) string {
	for _, k := range values {
		if v == k {
			return v
		}
	}
	return other
}
