package kernel

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// On a machine without the NVIDIA driver (CI) OpenNVML must fail cleanly
// with ErrNoNVIDIADriver; where a GPU is present, its telemetry must be sane.
func TestOpenNVML(t *testing.T) {
	d, err := OpenNVML(0)
	if !nvmlBuiltIn {
		if !errors.Is(err, ErrNVMLNotBuilt) {
			t.Fatalf("built without cgo: err %v, want ErrNVMLNotBuilt", err)
		}
		return
	}
	if err != nil {
		if !errors.Is(err, ErrNoNVIDIADriver) || !strings.Contains(err.Error(), "sim:PROFILE") {
			t.Fatalf("err %v, want ErrNoNVIDIADriver naming --gpu sim:PROFILE", err)
		}
		t.Logf("no GPU here: %v", err)
		return
	}
	defer d.Close()
	tm, err := d.Telemetry(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %+v (%v)", d.Name(), tm, tm.Throttle)
	if d.Simulated() || tm.TempC <= 0 || tm.TempC > 120 || tm.MemTotalMB == 0 || tm.UtilPct < 0 || tm.UtilPct > 100 {
		t.Errorf("implausible telemetry: %+v", tm)
	}
	if tm.SlowdownTempC != 0 && (tm.SlowdownTempC < 60 || tm.SlowdownTempC > tm.ShutdownTempC) {
		t.Errorf("implausible limits: slowdown %g, shutdown %g", tm.SlowdownTempC, tm.ShutdownTempC)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Telemetry(context.Background()); !errors.Is(err, ErrDeviceClosed) {
		t.Errorf("after Close: %v", err)
	}
}

func TestOpenNVMLBadIndex(t *testing.T) {
	if _, err := OpenNVML(-1); err == nil {
		t.Error("index -1: no error")
	}
	if d, err := OpenNVML(1 << 20); err == nil {
		d.Close()
		t.Error("index 2^20: no error")
	}
}
