package protocol

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/libp2p/go-libp2p/core/crypto"
)

// capIssued is the Issued time of test capacity records: 2026-01-02T03:04:05Z.
var capIssued = time.UnixMilli(1767323045000)

// capNow is a moment at which records issued at capIssued are fresh.
var capNow = capIssued.Add(time.Minute)

func testCapacity(issued time.Time) Capacity {
	return Capacity{
		GPUs:           []GPUInfo{{Name: "NVIDIA H100 80GB HBM3", MemoryMB: 81559, TempLimitC: 83}},
		Models:         []string{DefaultModel, "other/model-v2"},
		Kernels:        []string{"sketch-v1"},
		MaxConcurrency: 2,
		Version:        "gpunet/0.1.0",
		Issued:         uint64(issued.UnixMilli()),
	}
}

func signCapacity(tb testing.TB, c Capacity, key crypto.PrivKey) []byte {
	tb.Helper()
	b, err := c.Sign(key)
	if err != nil {
		tb.Fatalf("Sign: %v", err)
	}
	return b
}

// resignCapacity signs c as the spec says, without Capacity.Sign, so tests
// can sign records Sign would refuse or alter.
func resignCapacity(tb testing.TB, c Capacity, key crypto.PrivKey) []byte {
	tb.Helper()
	c.Sig = nil
	unsigned := mustMarshal(tb, &c)
	sig, err := key.Sign(append([]byte("gpunet-capacity-v1\x00"), unsigned...))
	if err != nil {
		tb.Fatal(err)
	}
	c.Sig = sig
	return mustMarshal(tb, &c)
}

func TestCapacityKey(t *testing.T) {
	id := testID(t, testKey(t, 1))
	k := CapacityKey(id)
	if want := "/gpunet-cap/" + string(id); k != want {
		t.Errorf("CapacityKey = %q, want %q", k, want)
	}
	// An Ed25519 peer ID inlines the key, as docs/protocol.md describes:
	// identity multihash (00 24) of the protobuf public key (08 01 12 20 + key).
	if b := []byte(id); len(b) != 38 || string(b[:6]) != "\x00\x24\x08\x01\x12\x20" || !strings.HasPrefix(id.String(), "12D3KooW") {
		t.Errorf("peer ID %s = %x, want 00 24 08 01 12 20 + 32-byte key", id, b)
	}
	// The key carries the binary peer ID, not its base58 text.
	if strings.Contains(k, id.String()) {
		t.Errorf("CapacityKey %q holds the text form of the ID", k)
	}
}

func TestCapacitySignDecodeRoundTrip(t *testing.T) {
	key := testKey(t, 1)
	c := testCapacity(capIssued)
	c.Peer = "whatever the caller left here"
	b := signCapacity(t, c, key)
	if err := checkDAGCBOR(b); err != nil {
		t.Fatalf("capacity record is not canonical DAG-CBOR: %v", err)
	}
	if got, want := mapKeys(t, b), []string{"sig", "gpus", "peer", "issued", "models", "kernels", "version", "max_concurrency"}; !slices.Equal(got, want) {
		t.Errorf("keys %v, want %v", got, want)
	}
	got, err := DecodeCapacity(b, capNow)
	if err != nil {
		t.Fatalf("DecodeCapacity: %v", err)
	}
	if got.Peer != testID(t, key).String() {
		t.Errorf("peer %q, want the signer %s", got.Peer, testID(t, key))
	}
	if !slices.Equal(got.Models, c.Models) || !slices.Equal(got.Kernels, c.Kernels) || !slices.Equal(got.GPUs, c.GPUs) ||
		got.MaxConcurrency != 2 || got.Version != c.Version || got.Issued != c.Issued || len(got.Sig) != 64 {
		t.Errorf("decoded %+v, want %+v", got, c)
	}
	if !got.Serves("other/model-v2") || got.Serves("missing/model") {
		t.Error("Serves disagrees with Models")
	}
	if again := mustMarshal(t, got); !bytes.Equal(again, b) {
		t.Error("decoded record re-encodes differently")
	}
	// The signature covers the domain and the encoding without sig.
	if !bytes.Equal(b, resignCapacity(t, *got, key)) {
		t.Error("Sign disagrees with the documented signing procedure")
	}
}

func TestCapacitySignRejectsOversize(t *testing.T) {
	c := testCapacity(capIssued)
	for i := range 64 {
		c.Kernels = append(c.Kernels, strings.Repeat("k", 60)+string(rune('a'+i%26)))
	}
	if _, err := c.Sign(testKey(t, 1)); !errors.Is(err, ErrBadCapacity) {
		t.Errorf("Sign of a %d-kernel record = %v, want ErrBadCapacity", len(c.Kernels), err)
	}
}

func TestCapacityValidator(t *testing.T) {
	key, other := testKey(t, 1), testKey(t, 2)
	id, otherID := testID(t, key), testID(t, other)
	good := signCapacity(t, testCapacity(capIssued), key)
	at := func(now time.Time) CapacityValidator { return CapacityValidator{Now: func() time.Time { return now }} }
	withFields := func(mutate func(*Capacity)) []byte {
		c := testCapacity(capIssued)
		c.Peer = id.String()
		mutate(&c)
		return resignCapacity(t, c, key)
	}
	badSig := slices.Clone(good)
	badSig[bytes.Index(badSig, []byte("\x63sig\x58\x40"))+6] ^= 1

	tests := []struct {
		name  string
		key   string
		value []byte
		now   time.Time
		ok    bool
	}{
		{"valid", CapacityKey(id), good, capNow, true},
		{"valid at issue time", CapacityKey(id), good, capIssued, true},
		{"valid at max age", CapacityKey(id), good, capIssued.Add(CapacityMaxAge), true},
		{"valid within clock skew", CapacityKey(id), good, capIssued.Add(-MaxClockSkew), true},
		{"stale", CapacityKey(id), good, capIssued.Add(CapacityMaxAge + time.Millisecond), false},
		{"far stale", CapacityKey(id), good, capIssued.Add(30 * 24 * time.Hour), false},
		{"future", CapacityKey(id), good, capIssued.Add(-MaxClockSkew - time.Millisecond), false},
		{"wrong namespace", "/gpunet-caps/" + string(id), good, capNow, false},
		{"pk namespace", "/pk/" + string(id), good, capNow, false},
		{"no namespace", string(id), good, capNow, false},
		{"namespace only", "/gpunet-cap", good, capNow, false},
		{"text peer id in key", "/gpunet-cap/" + id.String(), good, capNow, false},
		{"another peer's key", CapacityKey(otherID), good, capNow, false},
		{"bad signature", CapacityKey(id), badSig, capNow, false},
		{"control: signed by the documented procedure", CapacityKey(id), withFields(func(c *Capacity) {}), capNow, true},
		{"oversize", CapacityKey(id), append(slices.Clone(good), make([]byte, MaxCapacityBytes)...), capNow, false},
		{"trailing byte", CapacityKey(id), append(slices.Clone(good), 0), capNow, false},
		{"empty", CapacityKey(id), nil, capNow, false},
		{"not CBOR", CapacityKey(id), []byte("hello"), capNow, false},
		{"no models", CapacityKey(id), withFields(func(c *Capacity) { c.Models = nil }), capNow, false},
		{"65 models", CapacityKey(id), withFields(func(c *Capacity) { c.Models = slices.Repeat([]string{"m"}, 65) }), capNow, false},
		{"65 kernels", CapacityKey(id), withFields(func(c *Capacity) { c.Kernels = slices.Repeat([]string{"k"}, 65) }), capNow, false},
		{"65 GPUs", CapacityKey(id), withFields(func(c *Capacity) { c.GPUs = slices.Repeat([]GPUInfo{{}}, 65) }), capNow, false},
		{"bad model name", CapacityKey(id), withFields(func(c *Capacity) { c.Models = []string{"Upper/Case"} }), capNow, false},
		{"peer field is another peer", CapacityKey(id), withFields(func(c *Capacity) { c.Peer = otherID.String() }), capNow, false},
		{"peer field not an id", CapacityKey(id), withFields(func(c *Capacity) { c.Peer = "nobody" }), capNow, false},
		{"issued beyond int64", CapacityKey(id), withFields(func(c *Capacity) { c.Issued = 1<<64 - 1 }), capNow, false},
		{"no signature", CapacityKey(id), func() []byte {
			c := testCapacity(capIssued)
			c.Peer = id.String()
			return mustMarshal(t, &c)
		}(), capNow, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := at(tt.now).Validate(tt.key, tt.value)
			if tt.ok && err != nil {
				t.Errorf("Validate: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrBadCapacity) {
				t.Errorf("Validate = %v, want ErrBadCapacity", err)
			}
		})
	}
}

func TestCapacityValidatorDefaultClock(t *testing.T) {
	key := testKey(t, 1)
	fresh := signCapacity(t, testCapacity(time.Now()), key)
	if err := (CapacityValidator{}).Validate(CapacityKey(testID(t, key)), fresh); err != nil {
		t.Errorf("fresh record with the wall clock: %v", err)
	}
	stale := signCapacity(t, testCapacity(time.Now().Add(-CapacityMaxAge-time.Minute)), key)
	if err := (CapacityValidator{}).Validate(CapacityKey(testID(t, key)), stale); !errors.Is(err, ErrBadCapacity) {
		t.Errorf("stale record with the wall clock: %v, want ErrBadCapacity", err)
	}
}

func TestCapacitySelect(t *testing.T) {
	key := testKey(t, 1)
	id := testID(t, key)
	v := CapacityValidator{Now: func() time.Time { return capNow }}
	rec := func(ago time.Duration, version string) []byte {
		c := testCapacity(capIssued.Add(-ago))
		c.Version = version
		return signCapacity(t, c, key)
	}
	newest := rec(0, "new")
	older := rec(time.Minute, "old")
	oldest := rec(time.Hour, "oldest")
	invalidNewer := append(rec(-time.Second, "newer but bad"), 0) // trailing byte
	otherPeer := signCapacity(t, testCapacity(capIssued.Add(time.Second)), testKey(t, 2))
	tieA, tieB := rec(0, "tie-a"), rec(0, "tie-b")
	tieWinner := tieA
	if bytes.Compare(tieB, tieA) < 0 {
		tieWinner = tieB
	}

	tests := []struct {
		name   string
		values [][]byte
		want   []byte
	}{
		{"newest wins", [][]byte{older, newest, oldest}, newest},
		{"invalid newer record skipped", [][]byte{older, invalidNewer, oldest}, older},
		{"other peer's record skipped", [][]byte{otherPeer, oldest}, oldest},
		{"tie goes to bytewise smallest", [][]byte{tieA, tieB}, tieWinner},
		{"single", [][]byte{oldest}, oldest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Every order of the values must select the same record.
			for _, perm := range permutations(len(tt.values)) {
				vals := make([][]byte, len(perm))
				for i, p := range perm {
					vals[i] = tt.values[p]
				}
				i, err := v.Select(CapacityKey(id), vals)
				if err != nil {
					t.Fatalf("Select(order %v): %v", perm, err)
				}
				if !bytes.Equal(vals[i], tt.want) {
					t.Errorf("Select(order %v) picked index %d, not the expected record", perm, i)
				}
			}
		})
	}
	t.Run("none valid", func(t *testing.T) {
		if _, err := v.Select(CapacityKey(id), [][]byte{invalidNewer, otherPeer}); !errors.Is(err, ErrBadCapacity) {
			t.Errorf("Select = %v, want ErrBadCapacity", err)
		}
		if _, err := v.Select(CapacityKey(id), nil); !errors.Is(err, ErrBadCapacity) {
			t.Errorf("Select(nil) = %v, want ErrBadCapacity", err)
		}
	})
}

func permutations(n int) [][]int {
	if n == 0 {
		return [][]int{{}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := slices.Insert(slices.Clone(p), i, n-1)
			out = append(out, q)
		}
	}
	return out
}

// A capacity record's signature covers the re-encoding of what was decoded,
// so every spelling that decodes to the same struct verifies. BUG:
// DecodeCapacity does not check that the input is the canonical spelling (as
// DecodeTask and DecodeManifest do), so anyone can re-spell a host's signed
// record (non-minimal integers, keys out of order, keys in another case) into
// different bytes that every node accepts, stores and serves: one record,
// many byte strings, and Select's bytewise tie-break then depends on what a
// third party wrote.
func TestDecodeCapacityRejectsNonCanonical(t *testing.T) {
	key := testKey(t, 1)
	rec := signCapacity(t, testCapacity(capIssued), key)
	decoded, err := DecodeCapacity(rec, capNow)
	if err != nil {
		t.Fatal(err)
	}
	unsortedMode, err := cbor.EncOptions{Sort: cbor.SortNone}.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	unsorted, err := unsortedMode.Marshal(decoded)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string][]byte{
		"non-minimal max_concurrency": replaceOnce(t, rec, []byte("max_concurrency\x02"), []byte("max_concurrency\x18\x02")),
		"keys in declaration order":   unsorted,
		"key in upper case":           replaceOnce(t, rec, []byte("\x64peer"), []byte("\x64PEER")),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeCapacity(b, capNow); !errors.Is(err, ErrBadCapacity) {
				t.Errorf("DecodeCapacity = %v, want ErrBadCapacity", err)
			}
			v := CapacityValidator{Now: func() time.Time { return capNow }}
			if err := v.Validate(CapacityKey(testID(t, key)), b); !errors.Is(err, ErrBadCapacity) {
				t.Errorf("Validate = %v, want ErrBadCapacity", err)
			}
		})
	}
}

// The spec says map keys are case-sensitive; a key in another case is an
// unknown field. BUG: fxamacker/cbor matches keys to struct fields
// case-insensitively unless DecOptions.FieldNameMatching is
// FieldNameMatchingCaseSensitive, so "Task" decodes as "task". DecodeTask and
// DecodeManifest reject such input only thanks to their canonical check.
func TestDecodersRejectKeysInAnotherCase(t *testing.T) {
	req := mustMarshal(t, TaskRequest{Task: mustNormalize(t, exampleTask())})
	ev := mustMarshal(t, Event{Type: EventQueued, Position: 3})
	beacon := encodeBeacon(t, testBeacon(t))
	fetch := mustMarshal(t, FetchRequest{CID: Link{dagCBORCID([]byte("x"))}})
	tests := []struct {
		name   string
		decode func([]byte) error
		b      []byte
	}{
		{"task request", func(b []byte) error { _, err := DecodeTaskRequest(b); return err },
			replaceOnce(t, req, []byte("\x64task"), []byte("\x64Task"))},
		{"task request inner", func(b []byte) error { _, err := DecodeTaskRequest(b); return err },
			replaceOnce(t, req, []byte("\x64seed"), []byte("\x64Seed"))},
		{"event", func(b []byte) error { _, err := DecodeEvent(b); return err },
			replaceOnce(t, ev, []byte("\x64type"), []byte("\x64TYPE"))},
		{"beacon", func(b []byte) error { _, err := DecodeBeacon(b, beaconNow); return err },
			replaceOnce(t, beacon, []byte("\x64peer"), []byte("\x64Peer"))},
		{"fetch request", func(b []byte) error { _, err := DecodeFetchRequest(b); return err },
			replaceOnce(t, fetch, []byte("\x63cid"), []byte("\x63CID"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.decode(tt.b); err == nil {
				t.Errorf("a key in another case decodes: %x", tt.b)
			}
		})
	}
}

// A record may name models by content: each digest signed with the rest,
// each of a model the record lists.
func TestCapacityDigests(t *testing.T) {
	key := testKey(t, 1)
	c := testCapacity(capIssued)
	d := "sha256:" + strings.Repeat("ab", 32)
	c.Digests = map[string]string{"other/model-v2": d}
	got, err := DecodeCapacity(signCapacity(t, c, key), capNow)
	if err != nil || got.Digests["other/model-v2"] != d {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for name, digests := range map[string]map[string]string{
		"a model not listed": {"missing/model": d},
		"not a digest":       {"other/model-v2": "ab"},
	} {
		c.Digests = digests
		if _, err := DecodeCapacity(resignCapacity(t, c, key), capNow); !errors.Is(err, ErrBadCapacity) {
			t.Errorf("%s: %v, want ErrBadCapacity", name, err)
		}
	}
}
