//go:build cgo

package kernel

import (
	"context"
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// nvmlBuiltIn reports whether OpenNVML can work in this build.
const nvmlBuiltIn = true

// nvmlDev is a GPU read through NVML. go-nvml loads libnvidia-ml.so with
// dlopen when Init is called, so a binary built with cgo still starts on a
// machine without the driver; OpenNVML then fails with ErrNoNVIDIADriver.
type nvmlDev struct {
	index     int
	h         nvml.Device
	name      string
	useEvents bool // driver has nvmlDeviceGetCurrentClocksEventReasons

	// mu is held for reading around every NVML call and for writing by
	// Close, so no call runs after Shutdown. NVML itself is thread-safe.
	mu     sync.RWMutex
	closed bool
}

var _ Device = (*nvmlDev)(nil)

// OpenNVML opens GPU index through NVML. Without a driver it returns an error
// wrapping ErrNoNVIDIADriver. Close the device to release NVML.
func OpenNVML(index int) (Device, error) {
	if index < 0 {
		return nil, fmt.Errorf("nvml: GPU index %d, want >= 0", index)
	}
	switch ret := nvml.Init(); ret {
	case nvml.SUCCESS:
	case nvml.ERROR_LIBRARY_NOT_FOUND, nvml.ERROR_DRIVER_NOT_LOADED:
		return nil, fmt.Errorf("nvml: %w (%v)", ErrNoNVIDIADriver, ret)
	default:
		return nil, fmt.Errorf("nvml: initialising: %v", ret)
	}
	d, err := openNVMLDevice(index)
	if err != nil {
		nvml.Shutdown()
		return nil, err
	}
	return d, nil
}

func openNVMLDevice(index int) (*nvmlDev, error) {
	h, ret := nvml.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		n, _ := nvml.DeviceGetCount()
		return nil, fmt.Errorf("nvml: GPU %d of %d: %v", index, n, ret)
	}
	name, ret := h.GetName()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml: GPU %d name: %v", index, ret)
	}
	// The event-reasons call replaced the throttle-reasons one in R535;
	// calling a symbol the loaded driver lacks would abort the process, so
	// ask first. Both return the same bit mask.
	useEvents := nvml.Extensions().LookupSymbol("nvmlDeviceGetCurrentClocksEventReasons") == nil
	return &nvmlDev{index: index, h: h, name: name, useEvents: useEvents}, nil
}

// Name is the product name and index, e.g. "NVIDIA H100 80GB HBM3 (nvml:0)".
func (d *nvmlDev) Name() string { return fmt.Sprintf("%s (nvml:%d)", d.name, d.index) }

// Simulated is false.
func (d *nvmlDev) Simulated() bool { return false }

// Telemetry reads the GPU. Figures the board does not support stay 0; an
// error is returned only when the temperature cannot be read, which means
// the GPU is gone or NVML is broken.
func (d *nvmlDev) Telemetry(ctx context.Context) (Telemetry, error) {
	if err := ctx.Err(); err != nil {
		return Telemetry{}, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return Telemetry{}, fmt.Errorf("%s: %w", d.Name(), ErrDeviceClosed)
	}
	var t Telemetry
	temp, ret := d.h.GetTemperature(nvml.TEMPERATURE_GPU)
	if ret != nvml.SUCCESS {
		return Telemetry{}, fmt.Errorf("%s: reading temperature: %v", d.Name(), ret)
	}
	t.TempC = float64(temp)
	if v, ret := d.h.GetTemperatureThreshold(nvml.TEMPERATURE_THRESHOLD_SLOWDOWN); ret == nvml.SUCCESS {
		t.SlowdownTempC = float64(v)
	}
	if v, ret := d.h.GetTemperatureThreshold(nvml.TEMPERATURE_THRESHOLD_SHUTDOWN); ret == nvml.SUCCESS {
		t.ShutdownTempC = float64(v)
	}
	if u, ret := d.h.GetUtilizationRates(); ret == nvml.SUCCESS {
		t.UtilPct = float64(u.Gpu)
	}
	if m, ret := d.h.GetMemoryInfo(); ret == nvml.SUCCESS {
		t.MemUsedMB, t.MemTotalMB = m.Used>>20, m.Total>>20
	}
	if mw, ret := d.h.GetPowerUsage(); ret == nvml.SUCCESS {
		t.PowerW = float64(mw) / 1000
	}
	if mw, ret := d.h.GetEnforcedPowerLimit(); ret == nvml.SUCCESS {
		t.PowerLimitW = float64(mw) / 1000
	}
	if c, ret := d.h.GetClockInfo(nvml.CLOCK_SM); ret == nvml.SUCCESS {
		t.SMClockMHz = c
	}
	if c, ret := d.h.GetMaxClockInfo(nvml.CLOCK_SM); ret == nvml.SUCCESS {
		t.MaxSMClockMHz = c
	}
	var (
		mask uint64
		rret nvml.Return
	)
	if d.useEvents {
		mask, rret = d.h.GetCurrentClocksEventReasons()
	} else {
		mask, rret = d.h.GetCurrentClocksThrottleReasons() //nolint:staticcheck // older drivers only have this one
	}
	if rret == nvml.SUCCESS {
		t.Throttle = ThrottleReasons(mask)
	}
	return t, nil
}

// Close releases this device's hold on NVML. It is idempotent.
func (d *nvmlDev) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if ret := nvml.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("%s: shutting down NVML: %v", d.Name(), ret)
	}
	return nil
}
