package metrics_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/metrics"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
)

// TestMain checks that the nodes and servers the test starts stop every
// goroutine they started (house rule 7).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The bandwidth counter's process-wide sweeper, never stopped by
		// design (as in node's tests).
		goleak.IgnoreTopFunction("github.com/libp2p/go-flow-metrics.(*sweeper).runActive"),
	)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// TestScrapeMovesWithWork runs real tasks on a loopback swarm, one host
// with a simulated GPU and one client, each node with its own Metrics, and
// reads both through their HTTP handlers as Prometheus would.
func TestScrapeMovesWithWork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// Tune runs for each node in turn (the host, then the client): each
	// gets its own Metrics, so its own registry.
	var ms []*metrics.Metrics
	sw, err := swarm.Start(ctx, swarm.Options{
		Profiles:        []string{"rtx3060"},
		BootstrapDaemon: true,
		Logger:          log,
		Tune: func(cfg *node.Config) {
			m := metrics.New(fmt.Sprintf("test-%d", len(ms)), metrics.WithLogger(log))
			m.Attach(cfg)
			ms = append(ms, m)
			cfg.ProvideMinCompute = 0 // every result provided, however cheap
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sw.Close(); err != nil {
			t.Errorf("closing swarm: %v", err)
		}
	}()
	client, err := sw.AddClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host := sw.Hosts[0]
	hostM, clientM := ms[0], ms[1]
	hostM.Bind(host)
	clientM.Bind(client)
	if err := sw.WaitViews(ctx); err != nil {
		t.Fatal(err)
	}

	// Three distinct tasks (three kernel runs), the first again (the
	// client's own store answers), and one the host must refuse.
	var cids []string
	for i := range 3 {
		task := protocol.Task{Prompt: fmt.Sprintf("a lighthouse, study %d", i), Width: 64, Height: 64, Steps: 2}
		res, err := client.Submit(ctx, task, node.SubmitOptions{})
		if err != nil {
			t.Fatalf("task %d: %v", i, err)
		}
		if res.Cache != node.CacheMiss {
			t.Fatalf("task %d: cache %q, want %q", i, res.Cache, node.CacheMiss)
		}
		cids = append(cids, res.TaskCID.String(), res.ResultCID.String())
	}
	again, err := client.Submit(ctx, protocol.Task{Prompt: "a lighthouse, study 0", Width: 64, Height: 64, Steps: 2}, node.SubmitOptions{})
	if err != nil {
		t.Fatalf("repeat: %v", err)
	}
	if again.Cache != node.CacheLocal {
		t.Fatalf("repeat: cache %q, want %q", again.Cache, node.CacheLocal)
	}
	if _, err := client.SubmitTo(ctx, host.ID(), protocol.Task{Prompt: "x", Model: "no/such-model", Width: 64, Height: 64, Steps: 1}, node.SubmitOptions{}); err == nil {
		t.Fatal("a host served a model it does not have")
	}
	// The host provides each result on the DHT in the background; wait
	// for the three to be done (or failed) before scraping.
	for provides(t, hostM) < 3 {
		select {
		case <-ctx.Done():
			t.Fatalf("the host's three provides not counted: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}

	hs, cs := scrape(t, "host", hostM), scrape(t, "client", clientM)
	runs := host.KernelRuns()
	if runs != 3 {
		t.Fatalf("host ran the kernel %d times, want 3", runs)
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		// The host: every request it answered, and why it refused one.
		{"host served ok/miss", hs.value(t, "gpunet_tasks_served_total", "outcome", "ok", "cache", "miss"), float64(runs)},
		{"host served ok/local", hs.value(t, "gpunet_tasks_served_total", "outcome", "ok", "cache", "local"), 0},
		{"host served refused", hs.value(t, "gpunet_tasks_served_total", "outcome", "refused", "cache", "none"), 1},
		{"host refusals unsupported_model", hs.value(t, "gpunet_task_refusals_total", "code", protocol.CodeUnsupportedModel), 1},
		{"host refusals busy", hs.value(t, "gpunet_task_refusals_total", "code", protocol.CodeBusy), 0},
		{"host task duration count", hs.histCount(t, "gpunet_task_duration_seconds", "cache", "miss"), float64(runs)},
		{"host queue wait count", hs.histCount(t, "gpunet_task_queue_wait_seconds"), float64(runs)},
		{"host kernel time count", hs.histCount(t, "gpunet_task_kernel_seconds"), float64(runs)},
		{"host kernel runs", hs.value(t, "gpunet_kernel_runs_total"), float64(runs)},
		{"host slots", hs.value(t, "gpunet_slots"), 1},
		{"host slots busy", hs.value(t, "gpunet_slots_busy"), 0},
		{"host queue depth", hs.value(t, "gpunet_queue_depth"), 0},
		{"host paused", hs.value(t, "gpunet_host_paused"), 0},
		{"host off hours", hs.value(t, "gpunet_host_schedule_paused"), 0},
		{"host cache entries", hs.value(t, "gpunet_cache_entries"), 3},
		{"host gpu info", hs.value(t, "gpunet_gpu_info", "name", host.Status(ctx).GPU.Name, "simulated", "true"), 1},
		{"host build info", hs.value(t, "gpunet_build_info", "version", "test-0", "goversion", runtime.Version()), 1},

		// The client: its submissions by where their results came from.
		{"client submissions ok/miss", cs.value(t, "gpunet_submissions_total", "outcome", "ok", "cache", "miss"), 3},
		{"client submissions ok/local", cs.value(t, "gpunet_submissions_total", "outcome", "ok", "cache", "local"), 1},
		{"client submissions ok/network", cs.value(t, "gpunet_submissions_total", "outcome", "ok", "cache", "network"), 0},
		{"client submissions error", cs.value(t, "gpunet_submissions_total", "outcome", "error", "cache", "none"), 0},
		{"client submission time count miss", cs.histCount(t, "gpunet_submission_duration_seconds", "cache", "miss"), 3},
		{"client submission time count local", cs.histCount(t, "gpunet_submission_duration_seconds", "cache", "local"), 1},
		{"client cache entries", cs.value(t, "gpunet_cache_entries"), 3},
		{"client view peers", cs.value(t, "gpunet_view_peers"), 1},
		{"client served nothing", cs.value(t, "gpunet_tasks_served_total", "outcome", "ok", "cache", "miss"), 0},
		{"client build info", cs.value(t, "gpunet_build_info", "version", "test-1", "goversion", runtime.Version()), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
	for _, c := range []struct {
		name string
		got  float64
	}{
		{"host GPU temperature", hs.value(t, "gpunet_gpu_temperature_celsius")},
		{"host owner's limit", hs.value(t, "gpunet_governor_max_temperature_celsius")},
		{"host GPU slowdown temperature", hs.value(t, "gpunet_gpu_slowdown_temperature_celsius")},
		{"host beacons sent", hs.value(t, "gpunet_beacons_sent_total")},
		{"host DHT provides ok", hs.value(t, "gpunet_dht_provides_total", "outcome", "ok")},
		{"client beacons accepted", cs.value(t, "gpunet_beacons_received_total", "outcome", "accepted")},
		{"client connected peers", cs.value(t, "gpunet_connected_peers")},
		{"client cache hits", cs.value(t, "gpunet_cache_hits_total")},
	} {
		if !(c.got > 0) {
			t.Errorf("%s: %v, want > 0", c.name, c.got)
		}
	}
	// A client has no queue, no GPU: those series are absent, not 0.
	for _, name := range []string{"gpunet_slots", "gpunet_queue_depth", "gpunet_gpu_temperature_celsius", "gpunet_kernel_runs_total"} {
		if _, ok := cs.families[name]; ok {
			t.Errorf("client exports %s", name)
		}
	}

	// go-libp2p's own families are on each node's registry.
	for _, s := range []scraped{hs, cs} {
		for _, prefix := range []string{"libp2p_swarm_", "libp2p_rcmgr_"} {
			if !s.hasPrefix(prefix) {
				t.Errorf("%s scrape: no %s* family", s.who, prefix)
			}
		}
	}

	// No label value names a peer or a task, whatever the family.
	ids := append(cids, host.ID().String(), client.ID().String(), sw.Daemon.ID().String())
	peerOrCID := regexp.MustCompile(`^(12D3Koo|Qm)[1-9A-HJ-NP-Za-km-z]{30,}$|^b[a-z2-7]{50,}$`)
	for _, s := range []scraped{hs, cs} {
		for _, id := range ids {
			if bytes.Contains(s.body, []byte(id)) {
				t.Errorf("%s scrape holds %s", s.who, id)
			}
		}
		for name, mf := range s.families {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if peerOrCID.MatchString(l.GetValue()) {
						t.Errorf("%s: %s{%s=%q} looks like a peer ID or a CID", s.who, name, l.GetName(), l.GetValue())
					}
				}
			}
		}
	}
}

// TestScrapeBeforeBind serves the event metrics of a node not yet bound:
// the gauges that read Status are absent, nothing fails.
func TestScrapeBeforeBind(t *testing.T) {
	m := metrics.New("test")
	m.Provided(nil)
	m.Beacon("from a newer build")
	s := scrape(t, "unbound", m)
	if got := s.value(t, "gpunet_dht_provides_total", "outcome", "ok"); got != 1 {
		t.Errorf("provides ok %v, want 1", got)
	}
	if got := s.value(t, "gpunet_beacons_received_total", "outcome", "other"); got != 1 {
		t.Errorf("an unknown beacon outcome counted %v times as other, want 1", got)
	}
	if _, ok := s.families["gpunet_cache_entries"]; ok {
		t.Error("an unbound Metrics reports the store")
	}
}

// libp2pLint are go-libp2p v0.51's own families that promlint faults (a
// counter without _total, a gauge with it, gauges named _count): theirs to
// rename, not ours. Any other problem, in any family, fails the test.
var libp2pLint = map[string]bool{
	"libp2p_eventbus_subscriber_event_queued": true,
	"libp2p_eventbus_subscribers_total":       true,
	"libp2p_identify_addrs_count":             true,
	"libp2p_identify_protocols_count":         true,
	"libp2p_autorelay_relay_addresses_count":  true,
}

// scraped is one scrape: the text served, parsed.
type scraped struct {
	who      string
	body     []byte
	families map[string]*dto.MetricFamily
}

// scrape reads m's handler over real HTTP, parses the text format and lints
// every family, go-libp2p's included.
func scrape(t *testing.T, who string, m *metrics.Metrics) scraped {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("scrape: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing the scrape: %v", err)
	}
	// promlint is what testutil.GatherAndLint runs, here on the text as
	// served rather than on the registry.
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("linting: %v", err)
	}
	for _, p := range problems {
		if libp2pLint[p.Metric] {
			continue
		}
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	return scraped{who: who, body: body, families: families}
}

// sample finds name's sample whose labels include the given pairs.
func (s scraped) sample(t *testing.T, name string, labels ...string) *dto.Metric {
	t.Helper()
	mf, ok := s.families[name]
	if !ok {
		t.Errorf("%s: no family %s", s.who, name)
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return m
	}
	t.Errorf("%s: no %s%v", s.who, name, labels)
	return nil
}

// value is a counter's or a gauge's value; NaN when absent (so it fails
// any comparison, and sample has said why).
func (s scraped) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m := s.sample(t, name, labels...)
	switch {
	case m == nil:
		return nan()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	t.Errorf("%s: %s is neither a counter nor a gauge", s.who, name)
	return nan()
}

// histCount is a histogram's _count.
func (s scraped) histCount(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m := s.sample(t, name, labels...)
	if m == nil || m.Histogram == nil {
		t.Errorf("%s: %s%v is not a histogram", s.who, name, labels)
		return nan()
	}
	return float64(m.Histogram.GetSampleCount())
}

func (s scraped) hasPrefix(prefix string) bool {
	for name := range s.families {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// provides counts m's DHT provides, done or failed, from its registry.
func provides(t *testing.T, m *metrics.Metrics) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "gpunet_dht_provides_total" {
			for _, s := range mf.GetMetric() {
				n += s.GetCounter().GetValue()
			}
		}
	}
	return n
}

func nan() float64 { return math.NaN() }
