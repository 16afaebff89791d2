package web

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/ipfs/go-cid"
)

// Source is what the dashboard reads from the node it shows. Its methods
// are called from HTTP handlers, several at once: they must be safe for
// concurrent use and return promptly.
type Source interface {
	Status(ctx context.Context) node.Status
	// View is the swarm as this node's gossip sees it (a host is not in
	// its own view).
	View() scheduler.View
	// Block returns a stored output block, verified against c; an error
	// wrapping store.ErrNotFound when the store holds none.
	Block(ctx context.Context, c cid.Cid) ([]byte, error)
}

// NodeSource is the Source of a running node.
type NodeSource struct{ *node.Node }

var _ Source = NodeSource{}

// Block reads c from the node's results store.
func (s NodeSource) Block(ctx context.Context, c cid.Cid) ([]byte, error) {
	return s.Store().GetBlock(ctx, c)
}

// Bounds on what the dashboard keeps: a page shows a screenful of recent
// results, and a minute of counts gives a rate that moves with load yet
// does not jump with one task.
const (
	maxRecent  = 24
	rateWindow = 60 // seconds
)

// Dashboard follows a node's submissions as a node.Observer and serves the
// page, the event stream and the output blocks (Routes). Its observer
// methods take a mutex for a few map operations and signal the streams
// without waiting on them, so they never block the node.
type Dashboard struct {
	mu       sync.Mutex
	inflight map[flightKey]*Flight
	recent   []Finished // newest first, at most maxRecent
	served   rate       // results this host sent
	done     rate       // this node's submissions that ended with a result
	clients  map[chan struct{}]struct{}

	now func() time.Time // the clock: time.Now, a field so that a test can fix it
}

var _ node.Observer = (*Dashboard)(nil)

// New returns a dashboard with nothing observed yet.
func New() *Dashboard {
	return &Dashboard{
		inflight: make(map[flightKey]*Flight),
		clients:  make(map[chan struct{}]struct{}),
		now:      time.Now,
	}
}

// flightKey tells submissions apart: the same task may be submitted twice
// at once (the second joins the first), by one submitter or two.
type flightKey struct {
	task      string
	submitter string
	started   int64
}

func keyOf(e node.SubmitEvent) flightKey {
	return flightKey{e.TaskCID.String(), e.Submitter, e.Started.UnixNano()}
}

// Flight is a submission in progress, with its latest progress.
type Flight struct {
	TaskCID   string    `json:"task_cid"`
	Prompt    string    `json:"prompt"`
	Submitter string    `json:"submitter,omitempty"`
	Started   time.Time `json:"started"`
	ElapsedMs int64     `json:"elapsed_ms"`
	Stage     string    `json:"stage"`
	Peer      string    `json:"peer,omitempty"`
	Step      uint32    `json:"step,omitempty"`
	Total     uint32    `json:"total,omitempty"`
	// Position is the place in the host's queue (stage queued) or in this
	// node's waiting room (stage waiting); EtaMs the estimate until done.
	Position uint32 `json:"position,omitempty"`
	EtaMs    uint64 `json:"eta_ms,omitempty"`
}

// Finished is a submission that ended, with its result's CIDs or its error.
type Finished struct {
	TaskCID   string    `json:"task_cid"`
	ResultCID string    `json:"result_cid,omitempty"`
	Prompt    string    `json:"prompt"`
	Host      string    `json:"host,omitempty"`
	Cache     string    `json:"cache,omitempty"`
	ElapsedMs int64     `json:"elapsed_ms"`
	At        time.Time `json:"at"`
	Outputs   []Output  `json:"outputs,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// Output is one output of a result; its bytes are at /v1/blocks/{cid}.
type Output struct {
	CID       string `json:"cid"`
	MediaType string `json:"media_type"`
	Bytes     int    `json:"bytes"`
}

// SubmitProgress records the submission's latest stage.
func (d *Dashboard) SubmitProgress(e node.SubmitEvent) {
	d.mu.Lock()
	k := keyOf(e)
	f := d.inflight[k]
	if f == nil {
		f = &Flight{TaskCID: e.TaskCID.String(), Prompt: e.Task.Prompt, Submitter: e.Submitter, Started: e.Started}
		d.inflight[k] = f
	}
	p := e.Progress
	f.Stage, f.Peer = p.Stage, p.Peer
	// A stage without steps (trying, hedge, …) keeps the last step seen:
	// the bar should not jump back while a host is still running it.
	if p.Total > 0 {
		f.Step, f.Total = p.Step, p.Total
	}
	f.Position, f.EtaMs = p.Position, p.EtaMs
	d.mu.Unlock()
	d.changed()
}

// SubmitDone moves the submission to the recent results.
func (d *Dashboard) SubmitDone(e node.SubmitEvent) {
	fin := Finished{TaskCID: e.TaskCID.String(), Prompt: e.Task.Prompt, ElapsedMs: e.Elapsed.Milliseconds(), At: d.now()}
	if r := e.Result; r != nil {
		fin.ResultCID, fin.Host, fin.Cache = r.ResultCID.String(), r.Host.String(), r.Cache
		if r.Manifest != nil {
			for i, o := range r.Manifest.Outputs {
				out := Output{CID: o.CID.String(), MediaType: o.MediaType}
				if i < len(r.Blocks) {
					out.Bytes = len(r.Blocks[i])
				}
				fin.Outputs = append(fin.Outputs, out)
			}
		}
	} else if e.Err != nil {
		fin.Error = e.Err.Error()
	}
	d.mu.Lock()
	delete(d.inflight, keyOf(e))
	d.recent = append([]Finished{fin}, d.recent[:min(len(d.recent), maxRecent-1)]...)
	if e.Result != nil {
		d.done.add(fin.At)
	}
	d.mu.Unlock()
	d.changed()
}

// Served counts the results this host sent.
func (d *Dashboard) Served(e node.ServedEvent) {
	if e.Code != "" {
		return
	}
	d.mu.Lock()
	d.served.add(d.now())
	d.mu.Unlock()
	d.changed()
}

// Beacon is not shown: the view itself is.
func (d *Dashboard) Beacon(string) {}

// Provided is not shown.
func (d *Dashboard) Provided(error) {}

// changed wakes every stream without waiting: a stream that has not yet
// taken the last wake-up already has one pending, which is enough.
func (d *Dashboard) changed() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for c := range d.clients {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// subscribe registers a stream; the returned func unregisters it.
func (d *Dashboard) subscribe() (<-chan struct{}, func(), bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.clients) >= maxStreams {
		return nil, nil, false
	}
	c := make(chan struct{}, 1)
	d.clients[c] = struct{}{}
	return c, func() {
		d.mu.Lock()
		delete(d.clients, c)
		d.mu.Unlock()
	}, true
}

// rate counts events in one-second buckets over the last rateWindow
// seconds.
type rate struct {
	buckets [rateWindow]uint32
	secs    [rateWindow]int64 // the Unix second each bucket counts
}

func (r *rate) add(t time.Time) {
	s := t.Unix()
	i := s % rateWindow
	if r.secs[i] != s {
		r.secs[i], r.buckets[i] = s, 0
	}
	r.buckets[i]++
}

// perSecond is the mean rate over the window ending at now.
func (r *rate) perSecond(now time.Time) float64 {
	var n uint32
	s := now.Unix()
	for i := range r.buckets {
		if s-r.secs[i] < rateWindow {
			n += r.buckets[i]
		}
	}
	return float64(n) / rateWindow
}

// Snapshot is one message of GET /v1/events.
type Snapshot struct {
	Time     time.Time   `json:"time"`
	Node     node.Status `json:"node"`
	Swarm    []HostRow   `json:"swarm"`
	Totals   Totals      `json:"totals"`
	Inflight []Flight    `json:"inflight"`
	Recent   []Finished  `json:"recent"`
}

// HostRow is one host of the swarm as the dashboard shows it.
type HostRow struct {
	ID        string   `json:"id"`
	Self      bool     `json:"self,omitempty"` // this node, from its own status
	GPU       string   `json:"gpu,omitempty"`  // from its beacon; absent when unknown
	Models    []string `json:"models"`
	Accepting bool     `json:"accepting"`
	Slots     int      `json:"slots"`
	Busy      int      `json:"busy"`
	Queue     int      `json:"queue"`
	QueueMax  int      `json:"queue_max,omitempty"`
	TempC     float64  `json:"temp_c"`
	LimitC    float64  `json:"limit_c"` // the owner's limit, 0 without telemetry
	Throttled bool     `json:"throttled,omitempty"`
	// BeaconAgeS is how old the last beacon is; 0 for this node's row.
	BeaconAgeS float64 `json:"beacon_age_s"`
	RTTMs      float64 `json:"rtt_ms,omitempty"`
	// Reach is public or private (behind a NAT, reached through a relay),
	// from the host's beacon or, for this node, its own status; empty
	// while unknown.
	Reach string `json:"reach,omitempty"`
}

// Totals sums the swarm this node sees. The rates are this node's own:
// beacons carry load, not counts of finished tasks, so no node knows the
// network's rate.
type Totals struct {
	Hosts     int `json:"hosts"`
	Slots     int `json:"slots"`
	FreeSlots int `json:"free_slots"`
	// ServedPerS: results this host sent; DonePerS: this node's
	// submissions that ended with a result; both over the last minute.
	ServedPerS float64 `json:"served_per_s"`
	DonePerS   float64 `json:"done_per_s"`
	// SwarmPerS estimates the rate the swarm finishes tasks at: each host
	// in the view finishes its busy slots at its published service time
	// (a host that publishes none is left out), plus this host's own rate.
	SwarmPerS float64 `json:"swarm_per_s"`
	// CacheHitRatio is the store's hits over its lookups, absent before
	// the first lookup.
	CacheHitRatio *float64 `json:"cache_hit_ratio,omitempty"`
}

// selfReach is this node's reachability as a beacon would say it.
func selfReach(st node.Status) string {
	if r := string(st.Reach.Reachability); r == "public" || r == "private" {
		return r
	}
	return ""
}

// snapshot gathers the state to send now.
func (d *Dashboard) snapshot(ctx context.Context, src Source) Snapshot {
	now := d.now()
	st := src.Status(ctx)
	view := src.View()
	s := Snapshot{Time: now, Node: st, Swarm: make([]HostRow, 0, len(view)+1), Inflight: []Flight{}}
	if st.Host {
		gpu := ""
		if st.GPU != nil {
			gpu = st.GPU.Name
		}
		s.Swarm = append(s.Swarm, HostRow{ID: st.PeerID, Self: true, GPU: gpu, Models: st.Models,
			Accepting: !st.Paused && !st.OffHours && !st.Hot, Slots: st.Slots, Busy: st.Running, Queue: st.Queued, QueueMax: st.QueueMax,
			TempC: st.TempC, LimitC: st.MaxTempC, Throttled: st.Cooling || (st.GPU != nil && st.GPU.Throttled),
			Reach: selfReach(st)})
	}
	for _, p := range view {
		s.Totals.SwarmPerS += busyRate(p)
		s.Swarm = append(s.Swarm, HostRow{ID: p.ID, GPU: p.GPU, Models: p.Models, Accepting: p.Accepting,
			Slots: max(p.Slots, 1), Busy: p.Busy, Queue: p.QueueLen, QueueMax: p.QueueMax,
			TempC: p.TempC, LimitC: p.LimitC, Throttled: p.Throttled,
			BeaconAgeS: max(now.Sub(p.Updated).Seconds(), 0), RTTMs: p.RTTMs, Reach: p.Reach})
	}
	// This node first, then by ID: rows keep their places between updates.
	sort.SliceStable(s.Swarm, func(i, j int) bool {
		a, b := s.Swarm[i], s.Swarm[j]
		if a.Self != b.Self {
			return a.Self
		}
		return a.ID < b.ID
	})
	for _, h := range s.Swarm {
		s.Totals.Hosts++
		s.Totals.Slots += h.Slots
		if h.Accepting {
			s.Totals.FreeSlots += max(h.Slots-h.Busy, 0)
		}
	}
	if n := st.Cache.Hits + st.Cache.Misses; n > 0 {
		r := float64(st.Cache.Hits) / float64(n)
		s.Totals.CacheHitRatio = &r
	}

	d.mu.Lock()
	s.Totals.ServedPerS, s.Totals.DonePerS = d.served.perSecond(now), d.done.perSecond(now)
	s.Totals.SwarmPerS += s.Totals.ServedPerS
	for _, f := range d.inflight {
		c := *f
		c.ElapsedMs = now.Sub(f.Started).Milliseconds()
		s.Inflight = append(s.Inflight, c)
	}
	s.Recent = append([]Finished{}, d.recent...)
	d.mu.Unlock()
	sort.Slice(s.Inflight, func(i, j int) bool { return s.Inflight[i].Started.Before(s.Inflight[j].Started) })
	return s
}

// busyRate is how many tasks per second p finishes by its beacon: its busy
// slots, each at p's mean published service time (0 when it publishes
// none).
func busyRate(p scheduler.PeerState) float64 {
	var sum float64
	n := 0
	for _, ms := range p.ServiceMs {
		if ms > 0 {
			sum += ms
			n++
		}
	}
	if n == 0 || p.Busy <= 0 {
		return 0
	}
	return float64(p.Busy) * 1000 / (sum / float64(n))
}
