package scheduler

import (
	"math/rand/v2"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// BenchNow is the time BenchView's beacons are relative to: pass it as now
// to Place when timing a view from BenchView.
func BenchNow() time.Time { return time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC) }

// BenchRequest is a typical request for a BenchView: the default model, 4 GB
// of memory and a 36-byte key (the size of a CIDv1 sha2-256 TaskCID).
func BenchRequest(seed uint64) Request {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	key := make([]byte, 36)
	for i := range key {
		key[i] = byte(rng.Uint32())
	}
	return Request{Model: protocol.DefaultModel, MemMB: 4096, Key: key}
}

// BenchView builds a realistic random view of n peers, deterministic in
// seed, for benchmarks such as the node's bench command. About 90 % serve
// protocol.DefaultModel; the mix of cards, loads and temperatures is the
// simulator's (a few peers are stale, paused, hot or short of memory, so
// every filter does work). Beacons were issued within the 4 s before
// BenchNow. Its peers are prepared (PeerState.Prepare), as the node
// prepares those of its view.
func BenchView(n int, seed uint64) View {
	rng := rand.New(rand.NewPCG(seed, 0x5851f42d4c957f2d))
	const b58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
	now := BenchNow()
	v := make(View, n)
	// One ServiceMs map per speed class: peers may share maps (Place only
	// reads them), and a node's view does the same for identical reports.
	type class struct {
		slots             int
		memMB             uint64
		slowdown, limit   float64
		idle, full        float64 // typical idle and loaded temperatures
		heat, serviceBase float64
	}
	classes := []class{
		{1, 24 << 10, 88, 83, 35, 76, 2.5, 4000}, // consumer desktop
		{2, 80 << 10, 92, 87, 32, 72, 1.5, 2000}, // data-centre
		{1, 8 << 10, 87, 80, 40, 86, 6.0, 10000}, // laptop
		{0, 64 << 10, 0, 0, 0, 0, 0, 30000},      // CPU kernel, no telemetry
	}
	weights := []float64{0.6, 0.15, 0.2, 0.05}
	for i := range v {
		c := classes[pick(rng, weights)]
		id := make([]byte, 52)
		copy(id, "12D3KooW")
		for j := 8; j < len(id); j++ {
			id[j] = b58[rng.IntN(len(b58))]
		}
		models := []string{protocol.DefaultModel}
		if rng.Float64() < 0.1 {
			models[0] = "sdxl-turbo"
		}
		if rng.Float64() < 0.3 {
			models = append(models, "flux-schnell")
		}
		svc := c.serviceBase * (0.7 + 0.6*rng.Float64())
		p := PeerState{
			ID:        string(id),
			Models:    models,
			FreeMemMB: c.memMB - uint64(rng.IntN(int(c.memMB/2))),
			Accepting: rng.Float64() > 0.03,
			Slots:     max(c.slots, 1),
			ServiceMs: map[string]float64{protocol.DefaultModel: svc, "flux-schnell": 2 * svc},
			SlowdownC: c.slowdown,
			LimitC:    c.limit,
			Speed:     1,
			RTTMs:     5 + 75*rng.Float64(),
			Updated:   now.Add(-time.Duration(rng.Int64N(int64(4 * time.Second)))),
		}
		p.Busy = rng.IntN(p.Slots + 1)
		if p.Busy == p.Slots && rng.Float64() < 0.3 {
			p.QueueLen = 1 + rng.IntN(3)
		}
		if c.limit > 0 {
			u := float64(p.Busy) / float64(p.Slots)
			p.TempC = c.idle + (c.full-c.idle)*u + 6*rng.NormFloat64()
			p.HeatPerTaskC = c.heat * (0.5 + rng.Float64())
			if p.TempC >= c.slowdown {
				p.Throttled, p.Speed = true, 0.5
			}
		}
		if rng.Float64() < 0.02 { // silent peer the view has not expired yet
			p.Updated = now.Add(-time.Minute)
		}
		p.Prepare(nil, nil) // as the node's view does once per beacon
		v[i] = p
	}
	return v
}

func pick(rng *rand.Rand, w []float64) int {
	x := rng.Float64()
	for i, wi := range w {
		if x < wi {
			return i
		}
		x -= wi
	}
	return len(w) - 1
}
