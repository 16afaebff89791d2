package node

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// plainGPU is a GPU seen only through kernel.Device, as NVML shows one:
// no heat model of its own.
type plainGPU struct{ kernel.Device }

// TestHeatDCFromLearnedModel: a host whose GPU has no model publishes no
// heat prediction until it has learned one from the GPU's readings, then
// the learned one.
func TestHeatDCFromLearnedModel(t *testing.T) {
	p, err := kernel.ProfileByName("rtx4090")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	sim, err := kernel.NewSimGPU(p, kernel.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{cfg: Config{Slots: 1}, ctx: context.Background()}
	s := &server{n: n, dev: plainGPU{sim}, heat: &kernel.HeatFit{}, service: map[string]float64{protocol.DefaultModel: 4000}}
	models := []string{protocol.DefaultModel}
	read := func() {
		tm, err := s.dev.Telemetry(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		s.heat.Add(now, math.Round(tm.TempC), tm.PowerW, tm.UtilPct/100)
		s.tempC = math.Round(tm.TempC)
	}
	read()
	if h := s.heatDCLocked(models); h != 0 {
		t.Fatalf("heat_dc %d before any learning, want 0 (unknown)", h)
	}
	// Forty minutes of 90 s busy, 90 s idle, read once a second.
	for sec := range 40 * 60 {
		switch sec % 180 {
		case 0:
			sim.Begin()
		case 90:
			sim.End()
		}
		now = now.Add(time.Second)
		read()
	}
	got := float64(s.heatDCLocked(models)) / 10
	// What the model itself says: 3 service times of 4 s at full load.
	want := sim.PredictTempC(1, 12*time.Second) - sim.PredictTempC(1, 0)
	t.Logf("heat_dc %.1f °C learned, %.2f °C by the GPU's own model", got, want)
	if got == 0 || math.Abs(got-want) > 0.25*want+0.5 {
		t.Errorf("heat_dc %.1f °C from the learned model, the GPU's own model says %.1f", got, want)
	}
}
