package kernel

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrDeviceClosed is returned by Telemetry after Close.
var ErrDeviceClosed = errors.New("device closed")

// ThrottleReasons is a bit set of why the GPU runs below its maximum clock.
// The bit values are NVML's nvmlClocksEventReason* values (formerly
// nvmlClocksThrottleReason*), so a mask read from NVML or from nvidia-smi's
// clocks_event_reasons.active converts without translation. Bits this
// package does not name are kept and printed in hex.
type ThrottleReasons uint64

// The reasons NVML defines; the comments paraphrase nvml.h.
const (
	// ThrottleGpuIdle: nothing is running, clocks are low. Not a slowdown.
	ThrottleGpuIdle ThrottleReasons = 1 << 0
	// ThrottleApplicationsClocksSetting: clocks capped by an application
	// clocks setting.
	ThrottleApplicationsClocksSetting ThrottleReasons = 1 << 1
	// ThrottleSwPowerCap: the power-management algorithm holds the board at
	// its power limit. Normal at full load, so not counted by Throttled.
	ThrottleSwPowerCap ThrottleReasons = 1 << 2
	// ThrottleHwSlowdown: hardware slowdown, clocks cut by a factor of two
	// or more (temperature, external power brake or power draw too high).
	ThrottleHwSlowdown ThrottleReasons = 1 << 3
	// ThrottleSyncBoost: clocks held to those of other GPUs in a sync-boost
	// group.
	ThrottleSyncBoost ThrottleReasons = 1 << 4
	// ThrottleSwThermalSlowdown: the driver lowers clocks to keep the GPU
	// under its maximum operating temperature.
	ThrottleSwThermalSlowdown ThrottleReasons = 1 << 5
	// ThrottleHwThermalSlowdown: hardware slowdown because the GPU is too
	// hot.
	ThrottleHwThermalSlowdown ThrottleReasons = 1 << 6
	// ThrottleHwPowerBrakeSlowdown: hardware slowdown asserted by an external
	// power brake (the system's power supply).
	ThrottleHwPowerBrakeSlowdown ThrottleReasons = 1 << 7

	// SlowdownReasons are the reasons that mean the GPU does less work than
	// it could because of heat or a power emergency: what Throttled tests.
	SlowdownReasons = ThrottleHwSlowdown | ThrottleSwThermalSlowdown |
		ThrottleHwThermalSlowdown | ThrottleHwPowerBrakeSlowdown
)

var throttleNames = [...]struct {
	bit  ThrottleReasons
	name string
}{
	{ThrottleGpuIdle, "GpuIdle"},
	{ThrottleApplicationsClocksSetting, "ApplicationsClocksSetting"},
	{ThrottleSwPowerCap, "SwPowerCap"},
	{ThrottleHwSlowdown, "HwSlowdown"},
	{ThrottleSyncBoost, "SyncBoost"},
	{ThrottleSwThermalSlowdown, "SwThermalSlowdown"},
	{ThrottleHwThermalSlowdown, "HwThermalSlowdown"},
	{ThrottleHwPowerBrakeSlowdown, "HwPowerBrakeSlowdown"},
}

// String lists the set reasons joined by "|", "None" for none, in bit order.
func (r ThrottleReasons) String() string {
	if r == 0 {
		return "None"
	}
	var parts []string
	for _, n := range throttleNames {
		if r&n.bit != 0 {
			parts = append(parts, n.name)
			r &^= n.bit
		}
	}
	if r != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint64(r)))
	}
	return strings.Join(parts, "|")
}

// Telemetry is one reading of a GPU. A field the device cannot report is
// zero: callers treat 0 as unknown, never as a measurement (a real GPU is
// never at 0 °C, 0 W or 0 MHz while it answers).
type Telemetry struct {
	// TempC is the core temperature. SlowdownTempC is where hardware
	// slowdown starts and ShutdownTempC where the board powers off.
	TempC, SlowdownTempC, ShutdownTempC float64
	// UtilPct is the share of the last sample period a kernel ran, 0..100.
	UtilPct               float64
	MemUsedMB, MemTotalMB uint64
	// PowerW is the board draw; PowerLimitW the enforced limit.
	PowerW, PowerLimitW       float64
	SMClockMHz, MaxSMClockMHz uint32
	Throttle                  ThrottleReasons
}

// Throttled reports whether a slowdown reason is active: the GPU is too hot
// or power-braked and does less work than it could. Holding the power limit
// (ThrottleSwPowerCap) or idling is not a slowdown.
func (t Telemetry) Throttled() bool { return t.Throttle&SlowdownReasons != 0 }

// HeadroomC is how far the GPU is below its slowdown temperature; 0 when
// either figure is unknown.
func (t Telemetry) HeadroomC() float64 {
	if t.SlowdownTempC == 0 || t.TempC == 0 {
		return 0
	}
	return t.SlowdownTempC - t.TempC
}

// Device reports on one GPU.
//
// Implementations must be safe for concurrent use: the node's beacon loop and
// its admission checks read telemetry from different goroutines. Telemetry
// may block on I/O (nvidia-smi runs a process) and must honour ctx; callers
// that poll should not call it more often than about once a second. After
// Close, Telemetry returns an error wrapping ErrDeviceClosed; Close is
// idempotent.
type Device interface {
	// Name is human-readable and says whether the device is simulated, e.g.
	// "NVIDIA H100 80GB HBM3 (nvml:0)" or "sim:rtx4090 (simulated ...)".
	Name() string
	// Simulated is true for devices whose telemetry is modelled, not read.
	Simulated() bool
	// Telemetry reads the device now.
	Telemetry(ctx context.Context) (Telemetry, error)
	// Close releases the device.
	Close() error
}
