package kernel

import (
	"errors"
	"strings"
	"testing"
)

func TestOpenDeviceSpecs(t *testing.T) {
	f := &fakeSMI{
		query: []byte("2, NVIDIA H100 80GB HBM3, 31, 0, 1, 81559, 71.43, 700.00, 345, 1980, 0x0000000000000001\n"),
		temps: readTestdata(t, "nvidia-smi-q-temperature-a100.txt"),
	}
	tests := []struct {
		spec      string
		wantNil   bool
		simulated bool
		desc      string // prefix of the description
	}{
		{spec: "none", wantNil: true, desc: "none: "},
		{spec: "sim:rtx4090", simulated: true, desc: "simulated: sim:rtx4090"},
		{spec: " SIM:Laptop-4070 ", simulated: true, desc: "simulated: sim:laptop-4070"},
		{spec: "nvidia-smi:2", desc: "nvidia-smi: NVIDIA H100 80GB HBM3 (nvidia-smi:2)"},
	}
	for _, tt := range tests {
		d, desc, err := OpenDevice(tt.spec, WithCommandRunner(f.run))
		if err != nil {
			t.Errorf("%q: %v", tt.spec, err)
			continue
		}
		if (d == nil) != tt.wantNil || !strings.HasPrefix(desc, tt.desc) {
			t.Errorf("%q: device %v, description %q; want nil=%v and prefix %q", tt.spec, d, desc, tt.wantNil, tt.desc)
		}
		if d != nil {
			if d.Simulated() != tt.simulated {
				t.Errorf("%q: Simulated %v", tt.spec, d.Simulated())
			}
			d.Close()
		}
	}
}

func TestOpenDeviceRejects(t *testing.T) {
	for _, spec := range []string{"bogus", "sim", "sim:", "sim:voodoo2", "nvml:x", "nvidia-smi:-1", "none:1", "auto:0", "gpu0"} {
		d, _, err := OpenDevice(spec)
		if err == nil || d != nil {
			t.Errorf("%q: accepted", spec)
			continue
		}
		// The error names what would have been accepted.
		if !strings.Contains(err.Error(), "sim:") && !strings.Contains(err.Error(), "index") {
			t.Errorf("%q: error %q does not say what is valid", spec, err)
		}
	}
	_, _, err := OpenDevice("sim:voodoo2")
	if err == nil || !strings.Contains(err.Error(), "laptop-4070") {
		t.Errorf("unknown profile: %v, want the profiles listed", err)
	}
}

func TestOpenDeviceNVML(t *testing.T) {
	d, desc, err := OpenDevice("nvml")
	if err != nil {
		if !errors.Is(err, ErrNoNVIDIADriver) && !errors.Is(err, ErrNVMLNotBuilt) {
			t.Errorf("nvml: %v, want ErrNoNVIDIADriver or ErrNVMLNotBuilt", err)
		}
		return
	}
	defer d.Close()
	if !strings.HasPrefix(desc, "nvml: ") || d.Simulated() {
		t.Errorf("nvml: %q", desc)
	}
}

// auto falls through NVML to nvidia-smi to nothing, and says why.
func TestOpenDeviceAuto(t *testing.T) {
	nvml, err := OpenNVML(0)
	if err == nil {
		// A GPU with a driver: auto must pick NVML.
		nvml.Close()
		d, desc, err := OpenDevice("auto")
		if err != nil || d == nil || !strings.HasPrefix(desc, "nvml: ") {
			t.Fatalf("with NVML: %v, %q, %v", d, desc, err)
		}
		d.Close()
		return
	}

	t.Setenv("PATH", t.TempDir())
	d, desc, err := OpenDevice("auto")
	if err != nil || d != nil {
		t.Fatalf("no GPU: %v, %v; want nil device and no error", d, err)
	}
	if !strings.HasPrefix(desc, "none: ") || !strings.Contains(desc, "nvml") || !strings.Contains(desc, "nvidia-smi") {
		t.Errorf("no GPU: description %q should say why both failed", desc)
	}
	if _, _, err := OpenDevice("nvidia-smi"); !errors.Is(err, ErrNoNvidiaSMI) {
		t.Errorf("nvidia-smi without it on PATH: %v", err)
	}

	f := &fakeSMI{
		query: []byte("0, NVIDIA GeForce RTX 4090, 40, 0, 300, 24564, 20.00, 450.00, 210, 3120, 0x0000000000000001\n"),
		temps: readTestdata(t, "nvidia-smi-q-temperature-rtx4090.txt"),
	}
	d, desc, err = OpenDevice("", WithCommandRunner(f.run))
	if err != nil || d == nil || !strings.HasPrefix(desc, "nvidia-smi: NVIDIA GeForce RTX 4090") {
		t.Fatalf("nvidia-smi only: %v, %q, %v", d, desc, err)
	}
	d.Close()
}
