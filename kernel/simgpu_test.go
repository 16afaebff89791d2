package kernel

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injected clock that only moves when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newSim(t *testing.T, name string, opts ...DeviceOption) (*SimGPU, *fakeClock) {
	t.Helper()
	p, err := ProfileByName(name)
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	g, err := NewSimGPU(p, append([]DeviceOption{WithClock(clk.Now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return g, clk
}

func tel(t *testing.T, g *SimGPU) Telemetry {
	t.Helper()
	tm, err := g.Telemetry(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func TestProfiles(t *testing.T) {
	want := []string{"a100", "h100", "laptop-4070", "rtx3060", "rtx4090"}
	if got := ProfileNames(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("ProfileNames = %v, want %v", got, want)
	}
	for _, name := range want {
		p, err := ProfileByName(strings.ToUpper(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := p.validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, err := ProfileByName("voodoo2")
	if err == nil || !strings.Contains(err.Error(), "rtx4090") {
		t.Errorf("unknown profile: err %v, want one listing the profiles", err)
	}
}

// The profiles are tuned so the demo shows both kinds of host: consumer
// cards settle just under slowdown at full load, data-centre cards well
// under, and the laptop crosses it within two minutes.
func TestProfileTuning(t *testing.T) {
	for _, p := range profiles {
		full := p.SteadyTempC(p.MaxW)
		switch p.Name {
		case "a100", "h100":
			if full > p.SlowdownTempC-10 {
				t.Errorf("%s: full load settles at %.1f °C, want ≥10 °C under slowdown %.0f", p.Name, full, p.SlowdownTempC)
			}
		case "rtx4090", "rtx3060":
			if full > p.SlowdownTempC || full < p.SlowdownTempC-10 {
				t.Errorf("%s: full load settles at %.1f °C, want within 10 °C under slowdown %.0f", p.Name, full, p.SlowdownTempC)
			}
		case "laptop-4070":
			idle := p.SteadyTempC(p.IdleW)
			tau := p.TimeConstant().Seconds()
			cross := tau * math.Log((idle-full)/(p.SlowdownTempC-full))
			if !(full > p.SlowdownTempC) || cross > 120 {
				t.Errorf("%s: full load settles at %.1f °C and crosses slowdown after %.0f s; want it to cross within 120 s", p.Name, full, cross)
			}
		default:
			t.Errorf("%s: no tuning rule", p.Name)
		}
	}
}

func TestSimHeatsAndCools(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.Name, func(t *testing.T) {
			g, clk := newSim(t, p.Name)
			idle := tel(t, g)
			if math.Abs(idle.TempC-p.SteadyTempC(p.IdleW)) > 1e-9 || idle.Throttle != ThrottleGpuIdle {
				t.Fatalf("starts at %.2f °C (%v), want idle steady state %.2f °C and GpuIdle", idle.TempC, idle.Throttle, p.SteadyTempC(p.IdleW))
			}
			g.Begin()
			prev := idle.TempC
			for range 60 {
				clk.Advance(5 * time.Second)
				tm := tel(t, g)
				// Rising until it nears slowdown; after that it may
				// cycle between readings.
				if prev < p.SlowdownTempC-simReleaseC && tm.TempC <= prev {
					t.Fatalf("under load, temperature went from %.3f to %.3f", prev, tm.TempC)
				}
				if tm.TempC > p.SteadyTempC(p.MaxW)+1e-9 || tm.TempC > p.SlowdownTempC+1e-9 {
					t.Fatalf("%.3f °C: above T∞ %.1f or slowdown", tm.TempC, p.SteadyTempC(p.MaxW))
				}
				prev = tm.TempC
			}
			hot := tel(t, g)
			if hot.UtilPct != 100 || hot.PowerW <= idle.PowerW || hot.MemUsedMB <= idle.MemUsedMB {
				t.Errorf("under load: %+v", hot)
			}
			g.End()
			for range 60 {
				clk.Advance(5 * time.Second)
				tm := tel(t, g)
				if tm.TempC >= prev || tm.TempC < p.SteadyTempC(p.IdleW) {
					t.Fatalf("idle, temperature went from %.3f to %.3f (idle T∞ %.1f)", prev, tm.TempC, p.SteadyTempC(p.IdleW))
				}
				prev = tm.TempC
			}
		})
	}
}

func TestSimThrottles(t *testing.T) {
	g, clk := newSim(t, "laptop-4070")
	p := g.Profile()
	g.Begin()
	idle, full := p.SteadyTempC(p.IdleW), p.SteadyTempC(p.MaxW)
	cross := time.Duration(p.TimeConstant().Seconds() * math.Log((idle-full)/(p.SlowdownTempC-full)) * float64(time.Second))

	clk.Advance(cross - time.Second)
	before := tel(t, g)
	if before.Throttled() || g.Speed() != 1 || before.SMClockMHz != p.MaxSMClockMHz {
		t.Fatalf("1 s before the crossing: %.2f °C, %v, speed %g", before.TempC, before.Throttle, g.Speed())
	}
	clk.Advance(2 * time.Second)
	after := tel(t, g)
	if !after.Throttled() || after.Throttle&ThrottleHwThermalSlowdown == 0 {
		t.Fatalf("1 s after the crossing: %.2f °C, %v: want thermal slowdown", after.TempC, after.Throttle)
	}
	if g.Speed() > 0.5 || after.SMClockMHz > p.MaxSMClockMHz/2+1 || after.PowerW >= before.PowerW {
		t.Errorf("in slowdown: speed %g, clock %d MHz, power %.0f W (was %.0f W)", g.Speed(), after.SMClockMHz, after.PowerW, before.PowerW)
	}
	// Held at full load it cycles between release and slowdown, never
	// above.
	sawRelease := false
	for range 600 {
		clk.Advance(time.Second)
		tm := tel(t, g)
		if tm.TempC > p.SlowdownTempC+1e-9 || tm.TempC < p.SlowdownTempC-simReleaseC-1e-9 {
			t.Fatalf("cycling: %.3f °C outside %g..%g", tm.TempC, p.SlowdownTempC-simReleaseC, p.SlowdownTempC)
		}
		sawRelease = sawRelease || !tm.Throttled()
	}
	if !sawRelease {
		t.Error("never left slowdown in 10 minutes")
	}
}

func TestSimDataCentreStaysCool(t *testing.T) {
	for _, name := range []string{"a100", "h100"} {
		g, clk := newSim(t, name)
		g.Begin()
		clk.Advance(time.Hour)
		if tm := tel(t, g); tm.Throttled() || tm.TempC > tm.SlowdownTempC-10 {
			t.Errorf("%s after an hour at full load: %.1f °C, %v", name, tm.TempC, tm.Throttle)
		}
	}
}

// The model is integrated exactly, so reading it often or rarely gives the
// same temperatures, across slowdown cycles too.
func TestSimStepSizeIndependent(t *testing.T) {
	tests := []struct {
		name  string
		total time.Duration
		util  float64
	}{
		{"rtx4090", 10 * time.Minute, 1},
		{"laptop-4070", 15 * time.Minute, 1},   // many slowdown cycles
		{"laptop-4070", 3 * time.Minute, 0.75}, // crosses once, then cycles
		{"h100", 20 * time.Minute, 0.5},
	}
	for _, tt := range tests {
		big, bclk := newSim(t, tt.name)
		small, sclk := newSim(t, tt.name)
		big.SetUtilization(tt.util)
		small.SetUtilization(tt.util)
		bclk.Advance(tt.total)
		const n = 3000
		for range n {
			sclk.Advance(tt.total / n)
			small.Speed() // any read advances the model
		}
		b, s := tel(t, big), tel(t, small)
		if math.Abs(b.TempC-s.TempC) > 1e-6 || b.Throttle != s.Throttle {
			t.Errorf("%s %v at u=%g: one step %.9f °C %v, %d steps %.9f °C %v", tt.name, tt.total, tt.util, b.TempC, b.Throttle, n, s.TempC, s.Throttle)
		}
	}
}

func TestSimTimeScale(t *testing.T) {
	fast, fclk := newSim(t, "a100", WithTimeScale(30))
	slow, sclk := newSim(t, "a100")
	fast.Begin()
	slow.Begin()
	fclk.Advance(10 * time.Second)
	sclk.Advance(300 * time.Second)
	if f, s := tel(t, fast).TempC, tel(t, slow).TempC; math.Abs(f-s) > 1e-9 {
		t.Errorf("10 s at 30x: %.6f °C; 300 s at 1x: %.6f °C", f, s)
	}
}

func TestSimUtilisation(t *testing.T) {
	g, _ := newSim(t, "rtx3060", WithSlots(4))
	steps := []struct {
		op   func()
		want float64
	}{
		{g.Begin, 25}, {g.Begin, 50}, {g.Begin, 75}, {g.Begin, 100}, {g.Begin, 100},
		{g.End, 100}, {g.End, 75}, {g.End, 50}, {g.End, 25}, {g.End, 0}, {g.End, 0},
		{func() { g.SetUtilization(1.7) }, 100}, {func() { g.SetUtilization(-1) }, 0},
		{func() { g.SetUtilization(math.NaN()) }, 0}, {func() { g.SetUtilization(0.3) }, 30},
	}
	for i, s := range steps {
		s.op()
		if got := tel(t, g).UtilPct; math.Abs(got-s.want) > 1e-9 {
			t.Errorf("step %d: utilisation %g%%, want %g%%", i, got, s.want)
		}
	}
}

func TestSimClockBackwards(t *testing.T) {
	g, clk := newSim(t, "rtx4090", WithStartTempC(60))
	clk.Advance(-time.Hour)
	if tm := tel(t, g); tm.TempC != 60 {
		t.Errorf("clock went back an hour: %.3f °C, want 60", tm.TempC)
	}
}

func TestSimOptionsRejected(t *testing.T) {
	p, _ := ProfileByName("rtx4090")
	for name, opt := range map[string]DeviceOption{
		"zero scale": WithTimeScale(0),
		"nan scale":  WithTimeScale(math.NaN()),
		"no slots":   WithSlots(0),
		"nil clock":  WithClock(nil),
	} {
		if _, err := NewSimGPU(p, opt); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	bad := p
	bad.RKPerW = 1 // 450 W × 1 K/W: not a GPU
	if _, err := NewSimGPU(bad); err == nil {
		t.Error("profile that settles above shutdown: accepted")
	}
}

func TestSimDevice(t *testing.T) {
	g, _ := newSim(t, "h100")
	var d Device = g
	if !d.Simulated() || !strings.Contains(d.Name(), "simulated") || !strings.HasPrefix(d.Name(), "sim:h100") {
		t.Errorf("Name %q, Simulated %v", d.Name(), d.Simulated())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Telemetry(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Telemetry(context.Background()); !errors.Is(err, ErrDeviceClosed) {
		t.Errorf("after Close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Run under -race: the node reads telemetry while task goroutines begin and
// end jobs.
func TestSimConcurrent(t *testing.T) {
	g, clk := newSim(t, "laptop-4070", WithSlots(2))
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				g.Begin()
				clk.Advance(100 * time.Millisecond)
				if _, err := g.Telemetry(context.Background()); err != nil {
					t.Error(err)
					return
				}
				g.Speed()
				g.End()
			}
		})
	}
	wg.Wait()
	if tm := tel(t, g); tm.UtilPct != 0 {
		t.Errorf("after balanced Begin/End: utilisation %g%%", tm.UtilPct)
	}
}

func TestThrottleReasons(t *testing.T) {
	tests := []struct {
		r         ThrottleReasons
		s         string
		throttled bool
	}{
		{0, "None", false},
		{ThrottleGpuIdle, "GpuIdle", false},
		{ThrottleSwPowerCap, "SwPowerCap", false},
		{0x68, "HwSlowdown|SwThermalSlowdown|HwThermalSlowdown", true},
		{ThrottleHwPowerBrakeSlowdown | 0x400, "HwPowerBrakeSlowdown|0x400", true},
		{ThrottleSyncBoost | ThrottleApplicationsClocksSetting, "ApplicationsClocksSetting|SyncBoost", false},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.s {
			t.Errorf("%#x: String %q, want %q", uint64(tt.r), got, tt.s)
		}
		if got := (Telemetry{Throttle: tt.r}).Throttled(); got != tt.throttled {
			t.Errorf("%v: Throttled %v", tt.r, got)
		}
	}
	if h := (Telemetry{TempC: 80, SlowdownTempC: 89}).HeadroomC(); h != 9 {
		t.Errorf("HeadroomC = %g, want 9", h)
	}
	if h := (Telemetry{TempC: 80}).HeadroomC(); h != 0 {
		t.Errorf("HeadroomC with unknown slowdown = %g, want 0", h)
	}
}

// TestSimPredictTempC: the prediction is what the GPU then does, through
// slowdown too, and predicting changes nothing.
func TestSimPredictTempC(t *testing.T) {
	for _, d := range []time.Duration{0, 10 * time.Second, time.Minute, 10 * time.Minute} {
		g, clk := newSim(t, "laptop-4070", WithTimeScale(2))
		clk.Advance(time.Second)
		before := tel(t, g).TempC
		want := g.PredictTempC(1, d)
		if got := tel(t, g).TempC; got != before {
			t.Fatalf("predicting moved the model from %.3f to %.3f °C", before, got)
		}
		g.Begin()
		clk.Advance(d)
		if got := tel(t, g).TempC; math.Abs(got-want) > 1e-9 {
			t.Errorf("after %v at full load: %.4f °C, predicted %.4f", d, got, want)
		}
		if d >= time.Minute && !(want > before+10) {
			t.Errorf("after %v at full load predicted %.1f °C from %.1f: a laptop GPU heats fast", d, want, before)
		}
	}
	g, _ := newSim(t, "rtx4090")
	g.Begin()
	if idle, busy := g.PredictTempC(0, time.Minute), g.PredictTempC(1, time.Minute); !(idle < busy) {
		t.Errorf("a minute idle predicted %.1f °C, busy %.1f: idle should be cooler", idle, busy)
	}
}
