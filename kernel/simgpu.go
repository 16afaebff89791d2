package kernel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"
)

// Profile is the parameter set of a simulated GPU. docs/gpus.md gives the
// source of every figure and says which are estimates.
type Profile struct {
	// Name is the spec name after "sim:", e.g. "rtx4090".
	Name string
	// Model is the product name as NVML would report it.
	Model string
	// AmbientC is the air temperature at the cooler's intake.
	AmbientC float64
	// SlowdownTempC is where hardware slowdown halves the clock;
	// ShutdownTempC is only reported (the model never reaches it, see
	// validate).
	SlowdownTempC, ShutdownTempC float64
	// IdleW is the board draw with nothing running; MaxW the power limit
	// (TDP/TGP), drawn at full utilisation and full clock.
	IdleW, MaxW float64
	// RKPerW is the thermal resistance from the die to the ambient air, in
	// kelvin per watt: at steady state T = AmbientC + P·RKPerW.
	RKPerW float64
	// CJPerK is the heat capacity of die, board and cooler, in joules per
	// kelvin. RKPerW·CJPerK is the time constant.
	CJPerK     float64
	MemTotalMB uint64
	// MaxSMClockMHz is the boost clock; IdleSMClockMHz the clock reported
	// with nothing running.
	MaxSMClockMHz, IdleSMClockMHz uint32
	// MPixStepsPerSec is throughput at full clock in megapixel-steps per
	// second (width·height·steps/1e6 of a diffusion-style task), so a
	// simulator can turn a task into a duration. Estimates; only the ratios
	// between profiles matter.
	MPixStepsPerSec float64
}

// PowerW is the board draw at utilisation u (0..1) and clock factor speed
// (1, or ≤ 0.5 under slowdown): the dynamic part scales with both.
func (p Profile) PowerW(u, speed float64) float64 {
	return p.IdleW + u*speed*(p.MaxW-p.IdleW)
}

// SteadyTempC is the temperature the GPU settles at when it draws watts for
// long enough: T∞ = AmbientC + watts·RKPerW.
func (p Profile) SteadyTempC(watts float64) float64 { return p.AmbientC + watts*p.RKPerW }

// TimeConstant is R·C: after one time constant the GPU has covered 63% of
// the way to its steady temperature.
func (p Profile) TimeConstant() time.Duration {
	return time.Duration(p.RKPerW * p.CJPerK * float64(time.Second))
}

func (p Profile) validate() error {
	switch {
	case p.Name == "" || p.Model == "":
		return errors.New("profile needs a name and a model")
	case !(p.RKPerW > 0) || !(p.CJPerK > 0):
		return fmt.Errorf("profile %s: thermal resistance and heat capacity must be positive", p.Name)
	case !(p.IdleW >= 0) || !(p.MaxW > p.IdleW):
		return fmt.Errorf("profile %s: want 0 <= idle power < max power", p.Name)
	case !(p.SlowdownTempC-simReleaseC > p.SteadyTempC(p.IdleW)) || !(p.ShutdownTempC > p.SlowdownTempC):
		return fmt.Errorf("profile %s: want idle steady state < slowdown-%g < shutdown", p.Name, float64(simReleaseC))
	case !(p.SteadyTempC(p.PowerW(1, simSlowdownSpeed)) < p.ShutdownTempC):
		// Slowdown is the model's only protection: if even half clock
		// cannot hold the GPU under shutdown, the profile is not a GPU.
		return fmt.Errorf("profile %s: full load at half clock settles above shutdown", p.Name)
	case p.MemTotalMB == 0 || p.MaxSMClockMHz == 0 || !(p.MPixStepsPerSec > 0):
		return fmt.Errorf("profile %s: memory, clock and throughput must be positive", p.Name)
	}
	return nil
}

// Simulation constants.
const (
	// simSlowdownSpeed: NVML defines hardware slowdown as clocks cut by a
	// factor of two or more; the model cuts by exactly two.
	simSlowdownSpeed = 0.5
	// simReleaseC is the hysteresis of slowdown: the clock comes back once
	// the GPU is this far below SlowdownTempC. Without it the model would
	// toggle at the threshold on every reading; real boards release a few
	// degrees down too (the figure is an estimate).
	simReleaseC = 3
	// simIdleMemMB is what the driver and context hold with no job.
	simIdleMemMB = 450
	// simJobMemMB is what one running job holds: about a Stable Diffusion
	// 1.5 pipeline in fp16 at 512x512 (estimate).
	simJobMemMB = 3072
)

// The profiles, in ProfileNames order. Figures and sources: docs/gpus.md.
var profiles = []Profile{
	{
		Name: "a100", Model: "NVIDIA A100-SXM4-80GB",
		AmbientC: 30, SlowdownTempC: 89, ShutdownTempC: 92,
		IdleW: 60, MaxW: 400, RKPerW: 0.10, CJPerK: 2500,
		MemTotalMB: 81920, MaxSMClockMHz: 1410, IdleSMClockMHz: 210,
		MPixStepsPerSec: 6.5,
	},
	{
		// Limits, clocks and memory read with NVML from an H100 SXM5;
		// R and C fitted to its rise under a 700 W load (docs/gpus.md).
		Name: "h100", Model: "NVIDIA H100 80GB HBM3",
		AmbientC: 35, SlowdownTempC: 89, ShutdownTempC: 95,
		IdleW: 80, MaxW: 700, RKPerW: 0.062, CJPerK: 260,
		MemTotalMB: 81559, MaxSMClockMHz: 1980, IdleSMClockMHz: 345,
		MPixStepsPerSec: 10.5,
	},
	{
		Name: "laptop-4070", Model: "NVIDIA GeForce RTX 4070 Laptop GPU",
		AmbientC: 30, SlowdownTempC: 87, ShutdownTempC: 102,
		IdleW: 8, MaxW: 100, RKPerW: 0.67, CJPerK: 60,
		MemTotalMB: 8188, MaxSMClockMHz: 2175, IdleSMClockMHz: 210,
		MPixStepsPerSec: 2.6,
	},
	{
		Name: "rtx3060", Model: "NVIDIA GeForce RTX 3060",
		AmbientC: 25, SlowdownTempC: 93, ShutdownTempC: 98,
		IdleW: 15, MaxW: 170, RKPerW: 0.36, CJPerK: 500,
		MemTotalMB: 12288, MaxSMClockMHz: 1777, IdleSMClockMHz: 210,
		MPixStepsPerSec: 2.1,
	},
	{
		Name: "rtx4090", Model: "NVIDIA GeForce RTX 4090",
		AmbientC: 25, SlowdownTempC: 90, ShutdownTempC: 95,
		IdleW: 25, MaxW: 450, RKPerW: 0.136, CJPerK: 1200,
		MemTotalMB: 24564, MaxSMClockMHz: 2520, IdleSMClockMHz: 210,
		MPixStepsPerSec: 7.9,
	},
}

// ProfileNames lists the simulated GPU profiles, sorted.
func ProfileNames() []string {
	names := make([]string, len(profiles))
	for i, p := range profiles {
		names[i] = p.Name
	}
	sort.Strings(names)
	return names
}

// ProfileByName returns the named profile (case-insensitive).
func ProfileByName(name string) (Profile, error) {
	for _, p := range profiles {
		if strings.EqualFold(p.Name, name) {
			return p, nil
		}
	}
	return Profile{}, fmt.Errorf("unknown simulated GPU profile %q; known: %s", name, strings.Join(ProfileNames(), ", "))
}

// DeviceOption configures OpenDevice and the device constructors; each
// constructor ignores the options that do not concern it.
type DeviceOption func(*deviceOptions)

type deviceOptions struct {
	now       func() time.Time
	timeScale float64
	slots     int
	startTemp float64
	hasStart  bool
	run       CommandRunner
}

func defaultDeviceOptions() deviceOptions {
	return deviceOptions{
		now:       time.Now,
		timeScale: 1, // real time, so a simulated host heats as fast as a real one
		slots:     1, // one job saturates a GPU, as a diffusion pipeline does
		run:       execCommand,
	}
}

func applyDeviceOptions(opts []DeviceOption) deviceOptions {
	o := defaultDeviceOptions()
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithClock sets the simulation's clock; the default is time.Now. Tests
// inject a fake clock to step the heat model exactly.
func WithClock(now func() time.Time) DeviceOption {
	return func(o *deviceOptions) { o.now = now }
}

// WithTimeScale makes simulated time run scale times faster than the clock,
// so a demo can show a GPU heating up and slowing down in seconds (20 to 60
// is a good range for the data-centre profiles). Default 1.
func WithTimeScale(scale float64) DeviceOption {
	return func(o *deviceOptions) { o.timeScale = scale }
}

// WithSlots sets how many concurrent jobs (Begin calls) make a simulated GPU
// fully busy. Default 1.
func WithSlots(n int) DeviceOption {
	return func(o *deviceOptions) { o.slots = n }
}

// WithStartTempC starts a simulated GPU at c instead of its idle steady
// state.
func WithStartTempC(c float64) DeviceOption {
	return func(o *deviceOptions) { o.startTemp, o.hasStart = c, true }
}

// SimGPU is a simulated GPU: no hardware is read. Its temperature follows a
// first-order thermal model (docs/gpus.md):
//
//	C·dT/dt = P(u) − (T − T_amb)/R,  P(u) = P_idle + u·s·(P_max − P_idle)
//
// where u is the utilisation set by Begin/End or SetUtilization and s the
// clock factor. Between events the model is integrated exactly,
// T(t+dt) = T∞ + (T − T∞)·exp(−dt/(R·C)) with T∞ = T_amb + P·R, and the
// moments the temperature crosses the slowdown thresholds are solved for, so
// readings do not depend on how often the GPU is read. At SlowdownTempC the
// clock halves (s = 0.5, HwSlowdown|HwThermalSlowdown set) and power drops
// with it; the clock returns once the GPU has cooled 3 °C below.
//
// Time is the injected clock times the time scale. A SimGPU is safe for
// concurrent use.
type SimGPU struct {
	p     Profile
	now   func() time.Time
	scale float64
	slots int

	mu        sync.Mutex
	last      time.Time
	tempC     float64
	util      float64 // 0..1
	active    int
	throttled bool
	closed    bool
}

var _ Device = (*SimGPU)(nil)

// NewSimGPU returns a simulated GPU with profile p, idle and at its idle
// steady temperature unless WithStartTempC says otherwise.
func NewSimGPU(p Profile, opts ...DeviceOption) (*SimGPU, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	o := applyDeviceOptions(opts)
	switch {
	case o.now == nil:
		return nil, errors.New("simulated GPU: nil clock")
	case !(o.timeScale > 0) || math.IsInf(o.timeScale, 0):
		return nil, fmt.Errorf("simulated GPU: time scale %g, want > 0", o.timeScale)
	case o.slots < 1:
		return nil, fmt.Errorf("simulated GPU: %d slots, want >= 1", o.slots)
	}
	g := &SimGPU{p: p, now: o.now, scale: o.timeScale, slots: o.slots}
	g.last = g.now()
	g.tempC = p.SteadyTempC(p.IdleW)
	if o.hasStart {
		g.tempC = o.startTemp
	}
	return g, nil
}

// Name says that the GPU is simulated and which profile it follows.
func (g *SimGPU) Name() string {
	return "sim:" + g.p.Name + " (simulated " + g.p.Model + ")"
}

// Simulated is true.
func (g *SimGPU) Simulated() bool { return true }

// Profile returns the parameters the GPU was made with.
func (g *SimGPU) Profile() Profile { return g.p }

// Begin records that a job started; utilisation is min(active, slots)/slots.
func (g *SimGPU) Begin() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advanceLocked()
	g.active++
	g.util = float64(min(g.active, g.slots)) / float64(g.slots)
}

// End records that a job finished. An End without a Begin is ignored.
func (g *SimGPU) End() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advanceLocked()
	if g.active > 0 {
		g.active--
	}
	g.util = float64(min(g.active, g.slots)) / float64(g.slots)
}

// SetUtilization sets utilisation directly (clamped to 0..1), for hosts that
// measure load rather than count jobs. The next Begin or End recomputes it
// from the job count, so use one or the other.
func (g *SimGPU) SetUtilization(u float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advanceLocked()
	switch {
	case !(u > 0): // also NaN
		u = 0
	case u > 1:
		u = 1
	}
	g.util = u
}

// Speed is the clock factor now: 1, or 0.5 while the GPU is in thermal
// slowdown. A host running simulated work divides its pace by it.
func (g *SimGPU) Speed() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advanceLocked()
	return g.speedLocked()
}

// PredictTempC is the temperature the GPU would reach if its utilisation
// were u (clamped to 0..1) from now on for d of clock time, slowdown
// included: the model run forward on a copy of its state. A host uses it to
// tell schedulers how much one more task would warm it.
func (g *SimGPU) PredictTempC(u float64, d time.Duration) float64 {
	g.mu.Lock()
	g.advanceLocked()
	f := SimGPU{p: g.p, tempC: g.tempC, throttled: g.throttled, util: min(max(u, 0), 1)}
	g.mu.Unlock()
	if d > 0 {
		f.integrateLocked(d.Seconds() * g.scale)
	}
	return f.tempC
}

// Telemetry returns the modelled state now.
func (g *SimGPU) Telemetry(ctx context.Context) (Telemetry, error) {
	if err := ctx.Err(); err != nil {
		return Telemetry{}, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return Telemetry{}, fmt.Errorf("%s: %w", g.Name(), ErrDeviceClosed)
	}
	g.advanceLocked()
	speed := g.speedLocked()
	t := Telemetry{
		TempC:         g.tempC,
		SlowdownTempC: g.p.SlowdownTempC,
		ShutdownTempC: g.p.ShutdownTempC,
		UtilPct:       100 * g.util,
		MemTotalMB:    g.p.MemTotalMB,
		PowerW:        g.p.PowerW(g.util, speed),
		PowerLimitW:   g.p.MaxW,
		SMClockMHz:    uint32(math.Round(float64(g.p.MaxSMClockMHz) * speed)),
		MaxSMClockMHz: g.p.MaxSMClockMHz,
	}
	jobs := uint64(math.Round(g.util * float64(g.slots)))
	t.MemUsedMB = min(simIdleMemMB+jobs*simJobMemMB, g.p.MemTotalMB)
	switch {
	case g.throttled:
		t.Throttle = ThrottleHwSlowdown | ThrottleHwThermalSlowdown
	case g.util == 0:
		t.Throttle = ThrottleGpuIdle
		t.SMClockMHz = g.p.IdleSMClockMHz
	case g.util == 1:
		// At full clock and load the board sits at its power limit.
		t.Throttle = ThrottleSwPowerCap
	}
	return t, nil
}

// Close marks the GPU closed; Telemetry then fails with ErrDeviceClosed.
func (g *SimGPU) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return nil
}

func (g *SimGPU) speedLocked() float64 {
	if g.throttled {
		return simSlowdownSpeed
	}
	return 1
}

// advanceLocked brings the model to the clock's now. A clock that goes
// backwards is treated as standing still.
func (g *SimGPU) advanceLocked() {
	now := g.now()
	if !now.After(g.last) {
		return
	}
	dt := now.Sub(g.last).Seconds() * g.scale
	g.last = now
	g.integrateLocked(dt)
}

// integrateLocked advances the model dt simulated seconds at constant
// utilisation. The exponential solution is exact for constant power; power
// changes only when slowdown engages or releases, so the interval is split
// at those crossings, each solved in closed form.
func (g *SimGPU) integrateLocked(dt float64) {
	tau := g.p.RKPerW * g.p.CJPerK
	slow := g.p.SlowdownTempC
	release := slow - simReleaseC
	for dt > 0 {
		switch {
		case !g.throttled && g.tempC >= slow:
			g.throttled = true
		case g.throttled && g.tempC <= release:
			g.throttled = false
		}
		tinf := g.p.SteadyTempC(g.p.PowerW(g.util, g.speedLocked()))
		// The threshold this state leaves by, and whether T∞ lies beyond
		// it (else the temperature only approaches T∞ and never crosses).
		target, crosses := release, tinf < release
		if !g.throttled {
			target, crosses = slow, tinf > slow
		}
		if !crosses {
			g.tempC = tinf + (g.tempC-tinf)*math.Exp(-dt/tau)
			return
		}
		tc := tau * math.Log((g.tempC-tinf)/(target-tinf))
		if tc >= dt {
			g.tempC = tinf + (g.tempC-tinf)*math.Exp(-dt/tau)
			return
		}
		dt -= tc
		g.tempC = target
		g.throttled = !g.throttled
		// Now at a threshold: if the GPU is in a slowdown cycle, skip whole
		// periods so a long gap costs O(1), not one loop per cycle.
		if p := g.cyclePeriodLocked(tau, slow, release); p > 0 && dt > p {
			dt = math.Mod(dt, p)
		}
	}
}

// cyclePeriodLocked is the length of one heat-up/slow-down cycle between
// release and slow at the current utilisation, or 0 when there is none
// (full clock never reaches slowdown, or half clock never cools to release).
func (g *SimGPU) cyclePeriodLocked(tau, slow, release float64) float64 {
	hot := g.p.SteadyTempC(g.p.PowerW(g.util, 1))
	cool := g.p.SteadyTempC(g.p.PowerW(g.util, simSlowdownSpeed))
	if !(hot > slow) || !(cool < release) {
		return 0
	}
	return tau*math.Log((release-hot)/(slow-hot)) + tau*math.Log((slow-cool)/(release-cool))
}
