package kernel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNoNvidiaSMI means the nvidia-smi command is not on PATH.
var ErrNoNvidiaSMI = errors.New("nvidia-smi not found on PATH; install the NVIDIA driver or use --gpu sim:PROFILE")

// CommandRunner runs a program and returns its standard output. The error
// of a failed run should carry what the program printed. It must be safe for
// concurrent use. Tests inject one that replays recorded output.
type CommandRunner func(ctx context.Context, name string, args ...string) ([]byte, error)

// WithCommandRunner replaces how the nvidia-smi device runs nvidia-smi.
func WithCommandRunner(run CommandRunner) DeviceOption {
	return func(o *deviceOptions) { o.run = run }
}

func execCommand(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		// nvidia-smi prints its own failures ("couldn't communicate with
		// the NVIDIA driver") on stdout, so keep both streams.
		msg := strings.TrimSpace(strings.TrimSpace(string(out)) + " " + strings.TrimSpace(stderr.String()))
		if msg != "" {
			return out, fmt.Errorf("%w: %s", err, msg)
		}
		return out, err
	}
	return out, nil
}

// nvsmiFields is the --query-gpu list ParseNvidiaSMICSV expects, in order.
// Names are those of `nvidia-smi --help-query-gpu`. The last field is
// clocks_throttle_reasons.active on drivers older than the rename (R535);
// both print the NVML bit mask in hex.
var nvsmiFields = []string{
	"index", "name", "temperature.gpu", "utilization.gpu",
	"memory.used", "memory.total", "power.draw", "power.limit",
	"clocks.sm", "clocks.max.sm", "clocks_event_reasons.active",
}

const nvsmiOldReasonsField = "clocks_throttle_reasons.active"

// NvidiaSMIRow is one parsed line of the query: a GPU's index and name
// beside its telemetry.
type NvidiaSMIRow struct {
	Index     int
	Name      string
	Telemetry Telemetry
}

// ParseNvidiaSMICSV parses the output of
//
//	nvidia-smi --query-gpu=index,name,temperature.gpu,utilization.gpu,memory.used,memory.total,power.draw,power.limit,clocks.sm,clocks.max.sm,clocks_event_reasons.active --format=csv,noheader,nounits
//
// one Telemetry per line. "[N/A]", "[Not Supported]" and the like become 0
// (unknown). The slowdown and shutdown temperatures are not in this query;
// see ParseNvidiaSMITemps.
func ParseNvidiaSMICSV(out []byte) ([]Telemetry, error) {
	rows, err := ParseNvidiaSMIRows(out)
	if err != nil {
		return nil, err
	}
	ts := make([]Telemetry, len(rows))
	for i, r := range rows {
		ts[i] = r.Telemetry
	}
	return ts, nil
}

// ParseNvidiaSMIRows is ParseNvidiaSMICSV keeping each GPU's index and name.
func ParseNvidiaSMIRows(out []byte) ([]NvidiaSMIRow, error) {
	r := csv.NewReader(bytes.NewReader(out))
	r.FieldsPerRecord = len(nvsmiFields)
	r.TrimLeadingSpace = true
	var rows []NvidiaSMIRow
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parsing nvidia-smi output: %w", err)
		}
		row, err := parseNvsmiRecord(rec)
		if err != nil {
			line, _ := r.FieldPos(0)
			return nil, fmt.Errorf("parsing nvidia-smi output line %d: %w", line, err)
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, errors.New("parsing nvidia-smi output: no GPU lines")
	}
	return rows, nil
}

func parseNvsmiRecord(rec []string) (NvidiaSMIRow, error) {
	var (
		row  NvidiaSMIRow
		errs []error
	)
	num := func(i int) float64 {
		s := strings.TrimSpace(rec[i])
		if nvsmiUnknown(s) {
			return 0
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 0 {
			errs = append(errs, fmt.Errorf("%s: bad value %q", nvsmiFields[i], s))
			return 0
		}
		return v
	}
	idx := num(0)
	row.Index = int(idx)
	row.Name = strings.TrimSpace(rec[1])
	t := &row.Telemetry
	t.TempC = num(2)
	t.UtilPct = num(3)
	t.MemUsedMB = uint64(num(4))
	t.MemTotalMB = uint64(num(5))
	t.PowerW = num(6)
	t.PowerLimitW = num(7)
	t.SMClockMHz = uint32(num(8))
	t.MaxSMClockMHz = uint32(num(9))
	if s := strings.TrimSpace(rec[10]); !nvsmiUnknown(s) {
		hex, ok := strings.CutPrefix(strings.ToLower(s), "0x")
		v, err := strconv.ParseUint(hex, 16, 64)
		if !ok || err != nil {
			errs = append(errs, fmt.Errorf("%s: bad mask %q", nvsmiFields[10], s))
		}
		t.Throttle = ThrottleReasons(v)
	}
	return row, errors.Join(errs...)
}

// nvsmiUnknown reports whether s is one of nvidia-smi's "no value" spellings:
// "[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", "[Insufficient
// Permissions]" and the like.
func nvsmiUnknown(s string) bool {
	return s == "" || s == "N/A" || strings.HasPrefix(s, "[")
}

// TempThresholds are a GPU's static temperature limits; 0 is unknown.
type TempThresholds struct {
	SlowdownC, ShutdownC, MaxOperatingC float64
}

// ParseNvidiaSMITemps parses `nvidia-smi -q -d TEMPERATURE`, one entry per
// "GPU <bus id>" section. Drivers print the limits either as absolute
// temperatures ("GPU Slowdown Temp : 89 C") or, on newer boards, as margins
// relative to the current T.Limit ("GPU T.Limit Temp : 43 C" beside "GPU
// Slowdown T.Limit Temp : -2 C"); the second form is turned into absolute
// figures as current + T.Limit − limit's T.Limit.
func ParseNvidiaSMITemps(out []byte) ([]TempThresholds, error) {
	type section struct {
		vals map[string]float64
	}
	var secs []section
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "GPU ") {
			secs = append(secs, section{vals: map[string]float64{}})
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok || len(secs) == 0 {
			continue
		}
		key = strings.TrimSpace(key)
		val = strings.TrimSpace(val)
		num, ok := strings.CutSuffix(val, " C")
		if !ok {
			continue // N/A and non-temperature lines
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil {
			return nil, fmt.Errorf("parsing nvidia-smi temperatures: %s: bad value %q", key, val)
		}
		secs[len(secs)-1].vals[key] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parsing nvidia-smi temperatures: %w", err)
	}
	if len(secs) == 0 {
		return nil, errors.New("parsing nvidia-smi temperatures: no GPU sections")
	}
	res := make([]TempThresholds, len(secs))
	for i, s := range secs {
		abs := func(name string) float64 {
			if v, ok := s.vals["GPU "+name+" Temp"]; ok {
				return v
			}
			cur, ok1 := s.vals["GPU Current Temp"]
			margin, ok2 := s.vals["GPU T.Limit Temp"]
			rel, ok3 := s.vals["GPU "+name+" T.Limit Temp"]
			if ok1 && ok2 && ok3 {
				return cur + margin - rel
			}
			return 0
		}
		res[i] = TempThresholds{SlowdownC: abs("Slowdown"), ShutdownC: abs("Shutdown"), MaxOperatingC: abs("Max Operating")}
	}
	return res, nil
}

// nvsmiProbeTimeout bounds the first nvidia-smi run when the caller gives no
// deadline: it answers in well under a second, and a wedged driver must not
// hang start-up.
const nvsmiProbeTimeout = 10 * time.Second

// NvidiaSMI is a Device read by running nvidia-smi, for hosts where NVML
// cannot be loaded (binaries built without cgo). Each Telemetry call runs
// the command once, which takes tens of milliseconds: poll at most about once
// a second. Safe for concurrent use.
type NvidiaSMI struct {
	index  int
	run    CommandRunner
	fields string
	name   string

	mu     sync.Mutex
	limits TempThresholds // read once: they do not change while the driver runs
	closed bool
}

var _ Device = (*NvidiaSMI)(nil)

// NewNvidiaSMI checks that nvidia-smi answers for GPU index and returns a
// Device for it. It returns an error wrapping ErrNoNvidiaSMI when the command
// is not on PATH.
func NewNvidiaSMI(ctx context.Context, index int, opts ...DeviceOption) (*NvidiaSMI, error) {
	if index < 0 {
		return nil, fmt.Errorf("nvidia-smi: GPU index %d, want >= 0", index)
	}
	o := applyDeviceOptions(opts)
	if o.run == nil {
		return nil, errors.New("nvidia-smi: nil command runner")
	}
	d := &NvidiaSMI{index: index, run: o.run, fields: strings.Join(nvsmiFields, ",")}
	row, err := d.query(ctx)
	if err != nil && strings.Contains(err.Error(), "is not a valid field") {
		// A driver from before the throttle→event rename.
		d.fields = strings.Join(append(nvsmiFields[:len(nvsmiFields)-1:len(nvsmiFields)-1], nvsmiOldReasonsField), ",")
		row, err = d.query(ctx)
	}
	if err != nil {
		return nil, err
	}
	d.name = row.Name
	out, err := d.run(ctx, "nvidia-smi", "-q", "-d", "TEMPERATURE", "-i", strconv.Itoa(index))
	if err != nil {
		return nil, fmt.Errorf("reading GPU %d temperature limits with nvidia-smi: %w", index, err)
	}
	lim, err := ParseNvidiaSMITemps(out)
	if err != nil {
		return nil, err
	}
	d.limits = lim[0]
	return d, nil
}

func (d *NvidiaSMI) query(ctx context.Context) (NvidiaSMIRow, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, nvsmiProbeTimeout)
		defer cancel()
	}
	out, err := d.run(ctx, "nvidia-smi", "--query-gpu="+d.fields, "--format=csv,noheader,nounits", "-i", strconv.Itoa(d.index))
	if errors.Is(err, exec.ErrNotFound) {
		return NvidiaSMIRow{}, ErrNoNvidiaSMI
	}
	if err != nil {
		return NvidiaSMIRow{}, fmt.Errorf("running nvidia-smi for GPU %d: %w", d.index, err)
	}
	rows, err := ParseNvidiaSMIRows(out)
	if err != nil {
		return NvidiaSMIRow{}, err
	}
	if len(rows) != 1 {
		return NvidiaSMIRow{}, fmt.Errorf("nvidia-smi -i %d printed %d GPUs, want 1", d.index, len(rows))
	}
	return rows[0], nil
}

// Name is the GPU's product name and where it was read, e.g.
// "NVIDIA H100 80GB HBM3 (nvidia-smi:0)".
func (d *NvidiaSMI) Name() string { return fmt.Sprintf("%s (nvidia-smi:%d)", d.name, d.index) }

// Simulated is false.
func (d *NvidiaSMI) Simulated() bool { return false }

// Telemetry runs nvidia-smi once.
func (d *NvidiaSMI) Telemetry(ctx context.Context) (Telemetry, error) {
	d.mu.Lock()
	closed, lim := d.closed, d.limits
	d.mu.Unlock()
	if closed {
		return Telemetry{}, fmt.Errorf("%s: %w", d.Name(), ErrDeviceClosed)
	}
	row, err := d.query(ctx)
	if err != nil {
		return Telemetry{}, err
	}
	t := row.Telemetry
	t.SlowdownTempC, t.ShutdownTempC = lim.SlowdownC, lim.ShutdownC
	return t, nil
}

// Close marks the device closed; there is nothing to release.
func (d *NvidiaSMI) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}
