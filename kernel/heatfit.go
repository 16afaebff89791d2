package kernel

import (
	"math"
	"sync"
	"time"
)

// HeatFit learns a GPU's first-order thermal model from its own telemetry,
// for GPUs that have no model of their own (NVML, nvidia-smi):
//
//	dT/dt = (T_amb + R·P − T) / τ
//
// the model SimGPU runs (docs/gpus.md). Each pair of samples at least
// heatFitMinStep apart gives one equation dT/dt = a·P + b·T + c, with
// a = R/τ, b = −1/τ and c = T_amb/τ, solved by least squares with
// exponential forgetting, so the fit follows a fan curve or a room that
// changes. It also keeps the board's power when idle and when busy, so that
// it can predict the temperature under a utilisation it has not seen yet.
//
// A fit is trusted only once the samples pin the model down: enough of
// them, power and temperature that have varied, and R and τ in the range
// of real boards. A HeatFit is safe for concurrent use.
type HeatFit struct {
	mu    sync.Mutex
	last  heatSample
	have  bool
	xtx   [3][3]float64 // Σ w·x·xᵀ over x = (P, T, 1)
	xty   [3]float64    // Σ w·x·y over y = dT/dt
	n     float64       // Σ w
	idleW float64       // power with nothing running (EWMA), 0 until seen
	busyW float64       // power at full utilisation (EWMA), 0 until seen
	tMin  float64       // temperature and power range seen (for identifiability)
	tMax  float64
	pMin  float64
	pMax  float64
}

type heatSample struct {
	at     time.Time
	tempC  float64
	powerW float64
}

// HeatFit tuning.
const (
	// heatFitMinStep and heatFitMaxStep bound the time between the two
	// samples of one equation: under a second, NVML's whole-degree readings
	// are mostly quantisation; over a minute, the derivative is no longer
	// local.
	heatFitMinStep = time.Second
	heatFitMaxStep = time.Minute
	// heatFitForget weighs each older equation down by this factor: about
	// 1,000 equations of memory, 17 minutes at one a second.
	heatFitForget = 0.999
	// A fit needs this many equations' weight, and this much spread in
	// temperature and power, before it is trusted.
	heatFitMinN      = 60
	heatFitMinSpread = 3.0  // °C
	heatFitMinPowerW = 20.0 // W
)

// HeatModel is a fitted model: T∞ = AmbientC + RKPerW·P, time constant Tau.
type HeatModel struct {
	AmbientC float64
	RKPerW   float64
	Tau      time.Duration
	// IdleW and BusyW are the board's power idle and at full utilisation.
	IdleW, BusyW float64
}

// Add records a telemetry sample. Samples closer than a second to the
// previous one are skipped; busyFraction is the GPU's utilisation (0..1)
// when it was read, which keeps the idle and busy power figures.
func (f *HeatFit) Add(at time.Time, tempC, powerW, busyFraction float64) {
	if !finite(tempC) || !finite(powerW) || powerW <= 0 || tempC <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	const alpha = 0.05
	switch {
	case busyFraction <= 0.05:
		f.idleW = ewma(f.idleW, powerW, alpha)
	case busyFraction >= 0.95:
		f.busyW = ewma(f.busyW, powerW, alpha)
	}
	s := heatSample{at: at, tempC: tempC, powerW: powerW}
	if !f.have {
		f.last, f.have = s, true
		return
	}
	dt := at.Sub(f.last.at)
	switch {
	case dt < heatFitMinStep:
		return
	case dt > heatFitMaxStep:
		f.last = s
		return
	}
	// The equation at the interval's midpoint: the derivative is centred
	// there, so take P and T there too.
	p := (s.powerW + f.last.powerW) / 2
	t := (s.tempC + f.last.tempC) / 2
	y := (s.tempC - f.last.tempC) / dt.Seconds()
	f.last = s
	x := [3]float64{p, t, 1}
	for i := range 3 {
		for j := range 3 {
			f.xtx[i][j] = heatFitForget*f.xtx[i][j] + x[i]*x[j]
		}
		f.xty[i] = heatFitForget*f.xty[i] + x[i]*y
	}
	f.n = heatFitForget*f.n + 1
	if f.tMax == 0 {
		f.tMin, f.tMax, f.pMin, f.pMax = t, t, p, p
	}
	f.tMin, f.tMax = min(f.tMin, t), max(f.tMax, t)
	f.pMin, f.pMax = min(f.pMin, p), max(f.pMax, p)
}

// Model returns the fitted model, or false while the samples do not pin it
// down (too few, too little variation, or a fit no real board would have)
// or f is nil.
func (f *HeatFit) Model() (HeatModel, bool) {
	if f == nil {
		return HeatModel{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n < heatFitMinN || f.tMax-f.tMin < heatFitMinSpread || f.pMax-f.pMin < heatFitMinPowerW || f.busyW == 0 {
		return HeatModel{}, false
	}
	sol, ok := solve3(f.xtx, f.xty)
	if !ok || sol[1] >= 0 {
		return HeatModel{}, false
	}
	a, b, c := sol[0], sol[1], sol[2]
	tau := -1 / b
	m := HeatModel{AmbientC: -c / b, RKPerW: -a / b, Tau: time.Duration(tau * float64(time.Second)), IdleW: f.idleW, BusyW: f.busyW}
	// Boards: R from about 0.03 K/W (a data-centre heatsink) to about 1 (a
	// thin laptop), τ from seconds to tens of minutes, air between freezing
	// and a hot attic.
	if !(m.RKPerW > 0.01 && m.RKPerW < 3 && tau > 1 && tau < 3600 && m.AmbientC > -10 && m.AmbientC < 60) {
		return HeatModel{}, false
	}
	if m.IdleW == 0 || m.IdleW > m.BusyW {
		m.IdleW = f.pMin
	}
	return m, true
}

// PowerW is the board's power at utilisation u (0..1), between its idle
// and busy figures.
func (m HeatModel) PowerW(u float64) float64 {
	u = min(max(u, 0), 1)
	return m.IdleW + u*(m.BusyW-m.IdleW)
}

// PredictTempC is the temperature after d at utilisation u, from tempC now.
// It knows nothing of hardware slowdown, so near the slowdown temperature
// it overestimates: the safe side for a scheduler.
func (m HeatModel) PredictTempC(tempC, u float64, d time.Duration) float64 {
	inf := m.AmbientC + m.RKPerW*m.PowerW(u)
	return inf + (tempC-inf)*math.Exp(-d.Seconds()/m.Tau.Seconds())
}

// solve3 solves the 3×3 system a·x = b by Gaussian elimination with
// partial pivoting; false when a is (nearly) singular.
func solve3(a [3][3]float64, b [3]float64) ([3]float64, bool) {
	scale := 0.0
	for i := range 3 {
		for j := range 3 {
			scale = max(scale, math.Abs(a[i][j]))
		}
	}
	if scale == 0 {
		return b, false
	}
	for col := range 3 {
		piv := col
		for r := col + 1; r < 3; r++ {
			if math.Abs(a[r][col]) > math.Abs(a[piv][col]) {
				piv = r
			}
		}
		if math.Abs(a[piv][col]) < 1e-12*scale {
			return b, false
		}
		a[col], a[piv] = a[piv], a[col]
		b[col], b[piv] = b[piv], b[col]
		for r := col + 1; r < 3; r++ {
			k := a[r][col] / a[col][col]
			for c := col; c < 3; c++ {
				a[r][c] -= k * a[col][c]
			}
			b[r] -= k * b[col]
		}
	}
	var x [3]float64
	for r := 2; r >= 0; r-- {
		s := b[r]
		for c := r + 1; c < 3; c++ {
			s -= a[r][c] * x[c]
		}
		x[r] = s / a[r][r]
	}
	return x, true
}

func ewma(old, x, alpha float64) float64 {
	if old == 0 {
		return x
	}
	return old + alpha*(x-old)
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
