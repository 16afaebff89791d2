package protocol

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// beaconNow is the clock of beacon tests; testBeacon is issued 1 s before.
var beaconNow = capIssued

func testBeacon(tb testing.TB) Beacon {
	return Beacon{
		Peer: testID(tb, testKey(tb, 1)).String(), Seq: 1767323000000, Issued: uint64(beaconNow.Add(-time.Second).UnixMilli()),
		Models: []string{DefaultModel, "other/model-v2"}, Slots: 2, Busy: 1, Queue: 3, Accepting: true,
		ServiceMs: map[string]uint32{DefaultModel: 1800},
		TempDC:    712, SlowdownDC: 900, LimitDC: 830, UtilPm: 640, SpeedPm: 1000, FreeMemMB: 40960, HeatDC: 43,
		Reach: ReachPrivate,
	}
}

func encodeBeacon(tb testing.TB, b Beacon) []byte {
	tb.Helper()
	out, err := b.Encode()
	if err != nil {
		tb.Fatalf("Encode: %v", err)
	}
	return out
}

func beaconsEqual(a, b *Beacon) bool {
	return a.Peer == b.Peer && a.Seq == b.Seq && a.Issued == b.Issued && slices.Equal(a.Models, b.Models) &&
		a.Slots == b.Slots && a.Busy == b.Busy && a.Queue == b.Queue && a.Accepting == b.Accepting &&
		maps.Equal(a.ServiceMs, b.ServiceMs) && a.TempDC == b.TempDC && a.SlowdownDC == b.SlowdownDC &&
		a.LimitDC == b.LimitDC && a.UtilPm == b.UtilPm && a.SpeedPm == b.SpeedPm && a.Throttled == b.Throttled &&
		a.FreeMemMB == b.FreeMemMB && a.HeatDC == b.HeatDC && a.Reach == b.Reach
}

func TestBeaconRoundTrip(t *testing.T) {
	in := testBeacon(t)
	enc := encodeBeacon(t, in)
	if err := checkDAGCBOR(enc); err != nil {
		t.Fatalf("beacon is not canonical DAG-CBOR: %v", err)
	}
	want := []string{"seq", "busy", "peer", "queue", "reach", "slots", "issued", "models", "heat_dc", "temp_dc", "util_pm", "limit_dc",
		"speed_pm", "accepting", "throttled", "service_ms", "free_mem_mb", "slowdown_dc"}
	if got := mapKeys(t, enc); !slices.Equal(got, want) {
		t.Errorf("beacon keys %v, want %v", got, want)
	}
	if len(enc) > 320 {
		t.Errorf("a typical beacon is %d bytes; the cap of %d assumes about 300", len(enc), MaxBeaconBytes)
	}
	got, err := DecodeBeacon(enc, beaconNow)
	if err != nil {
		t.Fatalf("DecodeBeacon: %v", err)
	}
	if !beaconsEqual(got, &in) {
		t.Errorf("round trip %+v, want %+v", got, in)
	}
	// service_ms is omitted when empty.
	in.ServiceMs = nil
	if keys := mapKeys(t, encodeBeacon(t, in)); slices.Contains(keys, "service_ms") {
		t.Errorf("empty service_ms encoded: %v", keys)
	}
}

func TestBeaconEncodeRejectsOversize(t *testing.T) {
	b := testBeacon(t)
	b.Peer = strings.Repeat("p", MaxBeaconBytes)
	if _, err := b.Encode(); !errors.Is(err, ErrBadBeacon) {
		t.Errorf("Encode of an oversize beacon = %v, want ErrBadBeacon", err)
	}
}

func TestDecodeBeaconLimits(t *testing.T) {
	manyModels := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("m%d", i)
		}
		return out
	}
	manyTimes := func(n int) map[string]uint32 {
		out := map[string]uint32{}
		for i := range n {
			out[fmt.Sprintf("m%d", i)] = 1
		}
		return out
	}
	tests := []struct {
		name   string
		mutate func(*Beacon)
		now    time.Time
		ok     bool
	}{
		{"valid", func(*Beacon) {}, beaconNow, true},
		{"16 models", func(b *Beacon) { b.Models = manyModels(16) }, beaconNow, true},
		{"17 models", func(b *Beacon) { b.Models = manyModels(17) }, beaconNow, false},
		{"no models", func(b *Beacon) { b.Models = nil }, beaconNow, false},
		{"bad model", func(b *Beacon) { b.Models = []string{"Upper"} }, beaconNow, false},
		{"model too long", func(b *Beacon) { b.Models = []string{strings.Repeat("m", MaxModelLen+1)} }, beaconNow, false},
		{"16 service times", func(b *Beacon) { b.ServiceMs = manyTimes(16) }, beaconNow, true},
		{"17 service times", func(b *Beacon) { b.ServiceMs = manyTimes(17) }, beaconNow, false},
		{"service time for a bad model", func(b *Beacon) { b.ServiceMs = map[string]uint32{"a b": 1} }, beaconNow, false},
		{"0 slots", func(b *Beacon) { b.Slots, b.Busy = 0, 0 }, beaconNow, false},
		{"1024 slots", func(b *Beacon) { b.Slots = 1024 }, beaconNow, true},
		{"1025 slots", func(b *Beacon) { b.Slots = 1025 }, beaconNow, false},
		{"all busy", func(b *Beacon) { b.Busy = b.Slots }, beaconNow, true},
		{"busy over slots", func(b *Beacon) { b.Busy = b.Slots + 1 }, beaconNow, false},
		{"queue at cap", func(b *Beacon) { b.Queue = 1 << 16 }, beaconNow, true},
		{"queue over cap", func(b *Beacon) { b.Queue = 1<<16 + 1 }, beaconNow, false},
		{"queue max at cap", func(b *Beacon) { b.QueueMax = 1 << 16 }, beaconNow, true},
		{"queue max over cap", func(b *Beacon) { b.QueueMax = 1<<16 + 1 }, beaconNow, false},
		{"gpu name", func(b *Beacon) { b.GPU = "NVIDIA GeForce RTX 4090" }, beaconNow, true},
		{"gpu name at cap", func(b *Beacon) { b.GPU = strings.Repeat("g", MaxGPUNameBytes) }, beaconNow, true},
		{"gpu name over cap", func(b *Beacon) { b.GPU = strings.Repeat("g", MaxGPUNameBytes+1) }, beaconNow, false},
		{"gpu name with a control character", func(b *Beacon) { b.GPU = "rtx\x1b[31m" }, beaconNow, false},
		{"reach public", func(b *Beacon) { b.Reach = ReachPublic }, beaconNow, true},
		{"reach private", func(b *Beacon) { b.Reach = ReachPrivate }, beaconNow, true},
		{"reach unknown word", func(b *Beacon) { b.Reach = "maybe" }, beaconNow, false},
		{"model digest", func(b *Beacon) { b.Digests = map[string]string{"other/model-v2": "9a5a1b2c3d4e5f60"} }, beaconNow, true},
		{"digest of a model not listed", func(b *Beacon) { b.Digests = map[string]string{"nope/x": "9a5a1b2c3d4e5f60"} }, beaconNow, false},
		{"digest not 16 hex", func(b *Beacon) { b.Digests = map[string]string{DefaultModel: "9A5A1B2C3D4E5F60"} }, beaconNow, false},
		{"200 °C", func(b *Beacon) { b.TempDC, b.SlowdownDC, b.LimitDC = 2000, 2000, 2000 }, beaconNow, true},
		{"temp over 200 °C", func(b *Beacon) { b.TempDC = 2001 }, beaconNow, false},
		{"slowdown over 200 °C", func(b *Beacon) { b.SlowdownDC = 2001 }, beaconNow, false},
		{"limit over 200 °C", func(b *Beacon) { b.LimitDC = 2001 }, beaconNow, false},
		{"heat 200 °C", func(b *Beacon) { b.HeatDC = 2000 }, beaconNow, true},
		{"heat over 200 °C", func(b *Beacon) { b.HeatDC = 2001 }, beaconNow, false},
		{"no heat prediction", func(b *Beacon) { b.HeatDC = 0 }, beaconNow, true},
		{"util 1000", func(b *Beacon) { b.UtilPm, b.SpeedPm = 1000, 1000 }, beaconNow, true},
		{"util over 1000", func(b *Beacon) { b.UtilPm = 1001 }, beaconNow, false},
		{"speed over 1000", func(b *Beacon) { b.SpeedPm = 1001 }, beaconNow, false},
		{"at max age", func(b *Beacon) {}, beaconNow.Add(BeaconMaxAge - time.Second), true},
		{"stale", func(b *Beacon) {}, beaconNow.Add(BeaconMaxAge - time.Second + time.Millisecond), false},
		{"within clock skew", func(b *Beacon) {}, beaconNow.Add(-time.Second - MaxClockSkew), true},
		{"future", func(b *Beacon) {}, beaconNow.Add(-time.Second - MaxClockSkew - time.Millisecond), false},
		{"issued beyond int64", func(b *Beacon) { b.Issued = 1<<64 - 1 }, beaconNow, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := testBeacon(t)
			tt.mutate(&b)
			got, err := DecodeBeacon(encodeBeacon(t, b), tt.now)
			if tt.ok && err != nil {
				t.Errorf("DecodeBeacon: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrBadBeacon) {
				t.Errorf("DecodeBeacon = %+v, %v; want ErrBadBeacon", got, err)
			}
			// Gossip ignores stale beacons but penalises malformed ones, so
			// the two must not be confused in either direction.
			timing := strings.Contains(tt.name, "stale") || strings.Contains(tt.name, "future") || strings.Contains(tt.name, "beyond int64")
			if !tt.ok && errors.Is(err, ErrStaleBeacon) != timing {
				t.Errorf("errors.Is(%v, ErrStaleBeacon) = %v, want %v", err, !timing, timing)
			}
		})
	}
}

// TestDecodeBeaconIgnoresUnknownKeys: a beacon from a newer host, with a
// key this version does not know, is read for the keys it does know.
func TestDecodeBeaconIgnoresUnknownKeys(t *testing.T) {
	in := testBeacon(t)
	var m map[string]any
	if err := Unmarshal(encodeBeacon(t, in), &m); err != nil {
		t.Fatal(err)
	}
	m["zz_added_later"] = uint64(7)
	enc, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeBeacon(enc, beaconNow)
	if err != nil {
		t.Fatalf("DecodeBeacon with an unknown key: %v", err)
	}
	if !beaconsEqual(got, &in) {
		t.Errorf("decoded %+v, want %+v", got, in)
	}
}

func TestDecodeBeaconRejectsEncodings(t *testing.T) {
	enc := encodeBeacon(t, testBeacon(t))
	tests := map[string][]byte{
		"empty":         nil,
		"oversize":      make([]byte, MaxBeaconBytes+1),
		"trailing byte": append(slices.Clone(enc), 0),
		"truncated":     enc[:len(enc)-1],
		"duplicate key": replaceOnce(t, enc, []byte("\x64busy"), []byte("\x63seq")),
		"no peer":       replaceOnce(t, enc, []byte("\x64peer"), []byte("\x64peeR")),
		"negative busy": replaceOnce(t, enc, []byte("\x64busy\x01"), []byte("\x64busy\x20")),
		"float temp":    replaceOnce(t, enc, []byte("\x67temp_dc\x19\x02\xc8"), []byte("\x67temp_dc\xfb\x40\x86\x40\x00\x00\x00\x00\x00")),
		"a capacity":    signCapacity(t, testCapacity(capIssued), testKey(t, 1)),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeBeacon(b, beaconNow)
			if !errors.Is(err, ErrBadBeacon) || errors.Is(err, ErrStaleBeacon) {
				t.Errorf("DecodeBeacon = %+v, %v; want ErrBadBeacon, not ErrStaleBeacon", got, err)
			}
		})
	}
}

func TestBeaconShards(t *testing.T) {
	if got := BeaconShardTopic(1, 0); got != BeaconTopic {
		t.Errorf("one shard: topic %q, want %q", got, BeaconTopic)
	}
	if got := BeaconShardTopic(16, 3); got != "/gpunet/beacon/1.0.0/16/3" {
		t.Errorf("shard 3 of 16: topic %q", got)
	}
	// The example of docs/protocol.md: sha2-256 of the ID starts
	// be297f969b1252da, 13702623626074936026, which is 5 mod 7 and 10 mod 16
	// (computed apart from this code, with Python's hashlib).
	id := "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
	if got := BeaconShard(id, 7); got != 5 {
		t.Errorf("shard of %s among 7: %d, want 5", id, got)
	}
	if got := BeaconShard(id, 16); got != 10 {
		t.Errorf("shard of %s among 16: %d, want 10", id, got)
	}
	// Random IDs spread evenly.
	counts := make([]int, 4)
	for i := range 4000 {
		counts[BeaconShard(fmt.Sprintf("peer-%d", i), 4)]++
	}
	for i, c := range counts {
		if c < 850 || c > 1150 {
			t.Errorf("shard %d of 4 got %d of 4000 peers", i, c)
		}
	}
	if BeaconShard(id, 1) != 0 || BeaconShard(id, 0) != 0 {
		t.Error("with one shard every peer is in shard 0")
	}
}
