package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseNvidiaSMICSV(t *testing.T) {
	tests := []struct {
		file  string
		names []string
		want  []Telemetry
	}{
		{
			file:  "nvidia-smi-query-rtx4090.csv",
			names: []string{"NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3060"},
			want: []Telemetry{
				{TempC: 72, UtilPct: 100, MemUsedMB: 20113, MemTotalMB: 24564, PowerW: 447.81, PowerLimitW: 450, SMClockMHz: 2625, MaxSMClockMHz: 3120, Throttle: ThrottleSwPowerCap},
				{TempC: 45, UtilPct: 0, MemUsedMB: 12, MemTotalMB: 12288, PowerW: 14.62, PowerLimitW: 170, SMClockMHz: 210, MaxSMClockMHz: 2100, Throttle: ThrottleGpuIdle},
			},
		},
		{
			file:  "nvidia-smi-query-na.csv",
			names: []string{"Tesla T4"},
			want:  []Telemetry{{TempC: 38, MemTotalMB: 15360, PowerLimitW: 70, SMClockMHz: 300, MaxSMClockMHz: 1590}},
		},
		{
			file:  "nvidia-smi-query-h100-idle.csv",
			names: []string{"NVIDIA H100 80GB HBM3"},
			want:  []Telemetry{{TempC: 46, MemTotalMB: 81559, PowerW: 129.41, PowerLimitW: 700, SMClockMHz: 570, MaxSMClockMHz: 1980, Throttle: ThrottleGpuIdle}},
		},
		{
			// 30 s into a bf16 matrix-multiply loop: at the power cap.
			file:  "nvidia-smi-query-h100-load.csv",
			names: []string{"NVIDIA H100 80GB HBM3"},
			want: []Telemetry{{TempC: 76, UtilPct: 100, MemUsedMB: 1011, MemTotalMB: 81559, PowerW: 698.62, PowerLimitW: 700, SMClockMHz: 1365, MaxSMClockMHz: 1980,
				Throttle: ThrottleSwPowerCap}},
		},
		{
			file:  "nvidia-smi-query-h100-hot.csv",
			names: []string{"NVIDIA H100 80GB HBM3"},
			want: []Telemetry{{TempC: 91, UtilPct: 100, MemUsedMB: 65210, MemTotalMB: 81559, PowerW: 512.33, PowerLimitW: 700, SMClockMHz: 990, MaxSMClockMHz: 1980,
				Throttle: ThrottleHwSlowdown | ThrottleSwThermalSlowdown | ThrottleHwThermalSlowdown}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			out := readTestdata(t, tt.file)
			got, err := ParseNvidiaSMICSV(out)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			rows, _ := ParseNvidiaSMIRows(out)
			for i, r := range rows {
				if r.Index != i || r.Name != tt.names[i] {
					t.Errorf("row %d: index %d name %q, want %d %q", i, r.Index, r.Name, i, tt.names[i])
				}
			}
		})
	}
}

func TestParseNvidiaSMICSVErrors(t *testing.T) {
	for name, in := range map[string]string{
		"empty":          "",
		"too few fields": "0, NVIDIA H100, 31, 0\n",
		"bad number":     "0, X, hot, 0, 1, 2, 3, 4, 5, 6, 0x0\n",
		"negative":       "0, X, -5, 0, 1, 2, 3, 4, 5, 6, 0x0\n",
		"bad mask":       "0, X, 30, 0, 1, 2, 3, 4, 5, 6, 12\n",
		"driver failure": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
	} {
		if _, err := ParseNvidiaSMICSV([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseNvidiaSMITemps(t *testing.T) {
	tests := []struct {
		file string
		want []TempThresholds
	}{
		// Absolute limits, as R535 prints them for an A100 pair.
		{"nvidia-smi-q-temperature-a100.txt", []TempThresholds{{89, 92, 85}, {89, 92, 85}}},
		// T.Limit margins: 45 °C now, 42 °C of margin, slowdown at −2.
		{"nvidia-smi-q-temperature-rtx4090.txt", []TempThresholds{{89, 92, 87}}},
		// Recorded from an H100 on driver 580: 46 °C now, 42 °C margin.
		// NVML on the same board said 89/95/87; the margin and the current
		// temperature are sampled apart, so this form can be a degree off.
		{"nvidia-smi-q-temperature-h100.txt", []TempThresholds{{90, 96, 88}}},
	}
	for _, tt := range tests {
		got, err := ParseNvidiaSMITemps(readTestdata(t, tt.file))
		if err != nil {
			t.Fatalf("%s: %v", tt.file, err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %+v, want %+v", tt.file, got, tt.want)
		}
	}
	if _, err := ParseNvidiaSMITemps([]byte("No devices were found\n")); err == nil {
		t.Error("no GPU sections: no error")
	}
}

// fakeSMI replays recorded nvidia-smi output and records the calls.
type fakeSMI struct {
	mu    sync.Mutex
	query []byte // --query-gpu output
	temps []byte // -q -d TEMPERATURE output
	err   error  // returned by every call
	// rejectNew fails queries naming clocks_event_reasons, as drivers
	// before R535 do.
	rejectNew bool
	calls     [][]string
}

func (f *fakeSMI) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, append([]string{name}, args...))
	if f.err != nil {
		return nil, f.err
	}
	if name != "nvidia-smi" {
		return nil, fmt.Errorf("ran %s", name)
	}
	if slices.Contains(args, "-q") {
		return f.temps, nil
	}
	if f.rejectNew && strings.Contains(strings.Join(args, " "), "clocks_event_reasons") {
		return nil, errors.New(`exit status 2: Field "clocks_event_reasons.active" is not a valid field to query.`)
	}
	return f.query, nil
}

func TestNvidiaSMIDevice(t *testing.T) {
	for _, rejectNew := range []bool{false, true} {
		f := &fakeSMI{
			query:     []byte("1, NVIDIA GeForce RTX 4090, 72, 100, 20113, 24564, 447.81, 450.00, 2625, 3120, 0x0000000000000004\n"),
			temps:     readTestdata(t, "nvidia-smi-q-temperature-rtx4090.txt"),
			rejectNew: rejectNew,
		}
		d, err := NewNvidiaSMI(context.Background(), 1, WithCommandRunner(f.run))
		if err != nil {
			t.Fatalf("old driver %v: %v", rejectNew, err)
		}
		if d.Simulated() || d.Name() != "NVIDIA GeForce RTX 4090 (nvidia-smi:1)" {
			t.Errorf("Name %q, Simulated %v", d.Name(), d.Simulated())
		}
		tm, err := d.Telemetry(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want := Telemetry{TempC: 72, SlowdownTempC: 89, ShutdownTempC: 92, UtilPct: 100, MemUsedMB: 20113, MemTotalMB: 24564,
			PowerW: 447.81, PowerLimitW: 450, SMClockMHz: 2625, MaxSMClockMHz: 3120, Throttle: ThrottleSwPowerCap}
		if tm != want {
			t.Errorf("old driver %v: got %+v, want %+v", rejectNew, tm, want)
		}
		last := strings.Join(f.calls[len(f.calls)-1], " ")
		field := "clocks_event_reasons.active"
		if rejectNew {
			field = "clocks_throttle_reasons.active"
		}
		if !strings.Contains(last, field) || !strings.HasSuffix(last, "--format=csv,noheader,nounits -i 1") {
			t.Errorf("old driver %v: ran %q", rejectNew, last)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Telemetry(context.Background()); !errors.Is(err, ErrDeviceClosed) {
			t.Errorf("after Close: %v", err)
		}
	}
}

func TestNvidiaSMIErrors(t *testing.T) {
	notFound := &exec.Error{Name: "nvidia-smi", Err: exec.ErrNotFound}
	f := &fakeSMI{err: notFound}
	if _, err := NewNvidiaSMI(context.Background(), 0, WithCommandRunner(f.run)); !errors.Is(err, ErrNoNvidiaSMI) {
		t.Errorf("not found: %v, want ErrNoNvidiaSMI", err)
	}
	msg := "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
	f = &fakeSMI{err: fmt.Errorf("exit status 9: %s", msg)}
	_, err := NewNvidiaSMI(context.Background(), 0, WithCommandRunner(f.run))
	if err == nil || !strings.Contains(err.Error(), msg) {
		t.Errorf("driver failure: %v, want the driver's message", err)
	}
	f = &fakeSMI{query: readTestdata(t, "nvidia-smi-query-rtx4090.csv")} // two GPUs for -i 0
	if _, err := NewNvidiaSMI(context.Background(), 0, WithCommandRunner(f.run)); err == nil {
		t.Error("two lines for one index: no error")
	}
	if _, err := NewNvidiaSMI(context.Background(), -1); err == nil {
		t.Error("index -1: no error")
	}
}

// With the real runner and an empty PATH, the error must say what to do.
func TestNvidiaSMINotOnPath(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := NewNvidiaSMI(context.Background(), 0)
	if !errors.Is(err, ErrNoNvidiaSMI) || !strings.Contains(err.Error(), "sim:PROFILE") {
		t.Errorf("err %v, want ErrNoNvidiaSMI naming --gpu sim:PROFILE", err)
	}
}

func FuzzParseNvidiaSMICSV(f *testing.F) {
	for _, name := range []string{"nvidia-smi-query-rtx4090.csv", "nvidia-smi-query-na.csv", "nvidia-smi-query-h100-hot.csv", "nvidia-smi-query-h100-load.csv"} {
		f.Add(readTestdata(f, name))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ts, err := ParseNvidiaSMICSV(b)
		if err == nil && len(ts) == 0 {
			t.Error("no error and no rows")
		}
	})
}

func FuzzParseNvidiaSMITemps(f *testing.F) {
	for _, name := range []string{"nvidia-smi-q-temperature-a100.txt", "nvidia-smi-q-temperature-rtx4090.txt", "nvidia-smi-q-temperature-h100.txt"} {
		f.Add(readTestdata(f, name))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ts, err := ParseNvidiaSMITemps(b)
		if err == nil && len(ts) == 0 {
			t.Error("no error and no sections")
		}
	})
}
