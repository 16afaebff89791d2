package kernel_test

import (
	"fmt"
	"math"

	"github.com/gpunet/gpunet/kernel"
)

// The derived figures of each simulated GPU, as docs/gpus.md tabulates them:
// idle and full-load steady temperatures, the time constant, and, where full
// load crosses slowdown, how long that takes from idle. (Parameters are
// chosen so that no printed figure sits on a rounding boundary, where an
// architecture's fused multiply-add could tip it.)
func Example_profiles() {
	fmt.Println("profile      idle°C  full°C  tau_s  to_slowdown_s")
	for _, name := range kernel.ProfileNames() {
		p, _ := kernel.ProfileByName(name)
		idle, full := p.SteadyTempC(p.IdleW), p.SteadyTempC(p.MaxW)
		tau := p.TimeConstant().Seconds()
		cross := "never"
		if full > p.SlowdownTempC {
			cross = fmt.Sprintf("%.0f", tau*math.Log((idle-full)/(p.SlowdownTempC-full)))
		}
		fmt.Printf("%-12s %6.1f %7.1f %6.0f  %s\n", name, idle, full, tau, cross)
	}
	// Output:
	// profile      idle°C  full°C  tau_s  to_slowdown_s
	// a100           36.0    70.0    250  never
	// h100           40.0    78.4     16  never
	// laptop-4070    35.4    97.0     40  73
	// rtx3060        30.4    86.2    180  never
	// rtx4090        28.4    86.2    163  never
}
