package kernel

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// trainOnSim runs g through busy and idle spells of random length for
// minutes of simulated time, reading it once a second as a host would, with
// NVML's whole-degree temperatures, and returns the fit.
func trainOnSim(t *testing.T, g *SimGPU, clk *fakeClock, minutes int, seed uint64) *HeatFit {
	t.Helper()
	f := &HeatFit{}
	rng := rand.New(rand.NewPCG(seed, 1))
	busy := false
	next := 0
	for s := range minutes * 60 {
		if s >= next {
			if busy = !busy; busy {
				g.Begin()
			} else {
				g.End()
			}
			next = s + 20 + rng.IntN(100)
		}
		tm, err := g.Telemetry(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		f.Add(clk.Now(), math.Round(tm.TempC), tm.PowerW, tm.UtilPct/100)
		clk.Advance(time.Second)
	}
	return f
}

// TestHeatFitLearnsTheModel: from a minute-scale load pattern the fit finds
// the profile's R, τ and ambient, and predicts what the GPU then does.
func TestHeatFitLearnsTheModel(t *testing.T) {
	for _, name := range []string{"rtx4090", "rtx3060", "laptop-4070", "h100"} {
		t.Run(name, func(t *testing.T) {
			g, clk := newSim(t, name)
			f := trainOnSim(t, g, clk, 40, 1)
			m, ok := f.Model()
			if !ok {
				t.Fatal("no model after 40 minutes of varied load")
			}
			p := g.Profile()
			tau := p.TimeConstant()
			t.Logf("fit: τ %v (profile %v), R %.3f (%.3f), ambient %.1f (%.1f), idle %.0f W, busy %.0f W",
				m.Tau.Round(100*time.Millisecond), tau, m.RKPerW, p.RKPerW, m.AmbientC, p.AmbientC, m.IdleW, m.BusyW)
			if d := math.Abs(m.Tau.Seconds()-tau.Seconds()) / tau.Seconds(); d > 0.15 {
				t.Errorf("τ %v, profile %v (%.0f %% off)", m.Tau.Round(time.Second), tau, 100*d)
			}
			if d := math.Abs(m.RKPerW-p.RKPerW) / p.RKPerW; d > 0.15 {
				t.Errorf("R %.3f K/W, profile %.3f (%.0f %% off)", m.RKPerW, p.RKPerW, 100*d)
			}
			if math.Abs(m.AmbientC-p.AmbientC) > 3 {
				t.Errorf("ambient %.1f °C, profile %.1f", m.AmbientC, p.AmbientC)
			}
			// A minute at full load from where it stands now.
			g.End()
			g.End()
			tm, _ := g.Telemetry(context.Background())
			want := g.PredictTempC(1, time.Minute)
			got := m.PredictTempC(tm.TempC, 1, time.Minute)
			switch {
			case want < p.SlowdownTempC-simReleaseC && math.Abs(got-want) > 2:
				t.Errorf("a minute of full load from %.1f °C: fit predicts %.1f, the GPU reaches %.1f", tm.TempC, got, want)
			case want >= p.SlowdownTempC-simReleaseC && (got < want-0.5 || got > want+5):
				// The fit knows no slowdown, so it may only err high.
				t.Errorf("a minute of full load into slowdown from %.1f °C: fit predicts %.1f, the GPU reaches %.1f", tm.TempC, got, want)
			}
		})
	}
}

// TestHeatFitNeedsVariation: a GPU that never changed load teaches nothing,
// and a fit is not offered on a few samples.
func TestHeatFitNeedsVariation(t *testing.T) {
	g, clk := newSim(t, "rtx4090")
	f := &HeatFit{}
	for range 600 { // ten idle minutes
		tm, _ := g.Telemetry(context.Background())
		f.Add(clk.Now(), math.Round(tm.TempC), tm.PowerW, 0)
		clk.Advance(time.Second)
	}
	if m, ok := f.Model(); ok {
		t.Errorf("a model from an idle GPU: %+v", m)
	}
	g2, clk2 := newSim(t, "rtx4090")
	f2 := trainOnSim(t, g2, clk2, 1, 1) // one minute: under heatFitMinN equations' weight
	if m, ok := f2.Model(); ok {
		t.Errorf("a model after one minute: %+v", m)
	}
	f3 := &HeatFit{}
	for i := range 100 { // nonsense readings are skipped, not fitted
		f3.Add(time.Unix(int64(i), 0), math.NaN(), 100, 1)
		f3.Add(time.Unix(int64(i), 5e8), 50, -1, 1)
	}
	if _, ok := f3.Model(); ok {
		t.Error("a model from NaN temperatures and negative power")
	}
}

// FuzzHeatFit: any readings (a driver can report anything) leave the fit
// either without a model or with one in the range of real boards.
func FuzzHeatFit(f *testing.F) {
	f.Add([]byte{40, 30, 0, 60, 200, 255, 80, 250, 255, 45, 20, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fit := &HeatFit{}
		at := time.Unix(1_700_000_000, 0)
		for i := 0; i+2 < len(b); i += 3 {
			at = at.Add(time.Duration(b[i]%8) * 500 * time.Millisecond)
			fit.Add(at, float64(b[i+1]), 2*float64(b[i+2]), float64(b[i]%3)/2)
		}
		m, ok := fit.Model()
		if !ok {
			return
		}
		if !(m.RKPerW > 0.01 && m.RKPerW < 3) || !(m.Tau > time.Second && m.Tau < time.Hour) || !finite(m.AmbientC) {
			t.Fatalf("implausible model offered: %+v", m)
		}
		if p := m.PredictTempC(50, 1, time.Minute); !finite(p) {
			t.Fatalf("prediction %v", p)
		}
	})
}
