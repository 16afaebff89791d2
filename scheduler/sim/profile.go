package sim

// Profile is a kind of GPU host: its share of the swarm, its capacity and
// the parameters of its first-order thermal model
//
//	C dT/dt = P(u) − (T − T_amb)/R,   P(u) = IdleW + (MaxW − IdleW)·u,
//
// with time constant τ = R·C. Above SlowdownC the hardware halves the clock
// (NVML's "hardware slowdown": clocks cut by half or more) and power drops
// to SlowPowerFactor of its dynamic part, until the card is HwHystC cooler.
// docs/scheduling.md gives the sources of the numbers.
type Profile struct {
	Name  string
	Share float64 // fraction of hosts
	Slots int     // tasks run at once
	// Speed is work per second per slot at full clock, relative to a
	// consumer desktop card.
	Speed float64
	MemMB uint64
	// IdleW and MaxW are board power idle and with every slot busy.
	IdleW, MaxW float64
	// RthCPerW is the thermal resistance to ambient, TauS the time constant.
	RthCPerW, TauS float64
	// SlowdownC is the hardware slowdown temperature; LimitC the owners'
	// usual maximum, drawn per host from LimitC − LimitSpreadC … LimitC.
	SlowdownC, LimitC, LimitSpreadC float64
	// AmbientC is the range ambient (or inlet) temperature is drawn from.
	AmbientC [2]float64
}

// Thermal constants shared by every profile.
const (
	// SlowPowerFactor is the fraction of dynamic power drawn at half clock:
	// power goes roughly with f·V², and the voltage drops with the clock.
	SlowPowerFactor = 0.4
	// HwHystC is how far below SlowdownC a card must cool before the
	// hardware restores its clock.
	HwHystC = 3.0
	// GovHystC is the host governor's hysteresis: it stops taking work (and
	// pauses, when on) at the limit and resumes this far below it.
	GovHystC = 2.0
)

// Profiles is the swarm mix used by every run.
//
//   - desktop: an RTX 3090/4090-class consumer card in a tower; +49 °C over
//     ambient at full load (≈ 75 °C in a 25 °C room), slowdown 88 °C, owners
//     cap at 78–83 °C.
//   - datacentre: an A100/H100-class board in a server with forced air;
//     two tasks at once, each at twice the desktop speed; slowdown 90 °C,
//     limit 85–87 °C (its maximum operating temperature), inlet 20–35 °C.
//   - laptop: an RTX 4070 Laptop-class GPU; heats fast (τ = 20 s) and
//     reaches its slowdown at full load in a warm room; limit 76–80 °C.
func Profiles() []Profile {
	return []Profile{
		{Name: "desktop", Share: 0.60, Slots: 1, Speed: 1, MemMB: 24 << 10,
			IdleW: 25, MaxW: 350, RthCPerW: 0.14, TauS: 60,
			SlowdownC: 88, LimitC: 83, LimitSpreadC: 5, AmbientC: [2]float64{20, 32}},
		{Name: "datacentre", Share: 0.15, Slots: 2, Speed: 2, MemMB: 80 << 10,
			IdleW: 60, MaxW: 700, RthCPerW: 0.07, TauS: 120,
			SlowdownC: 90, LimitC: 87, LimitSpreadC: 2, AmbientC: [2]float64{20, 35}},
		{Name: "laptop", Share: 0.25, Slots: 1, Speed: 0.45, MemMB: 8 << 10,
			IdleW: 8, MaxW: 115, RthCPerW: 0.5, TauS: 20,
			SlowdownC: 87, LimitC: 80, LimitSpreadC: 4, AmbientC: [2]float64{22, 32}},
	}
}
