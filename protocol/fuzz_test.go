package protocol

// Every decoder a remote peer can reach is fuzzed here. Run one for a while
// with, for example:
//
//	go test -run='^$' -fuzz='^FuzzDecodeTask$' -fuzztime=20s ./protocol/
//
// Each target checks more than "no panic": a decoder that accepts an input
// must hand back a value that validates and that encodes and decodes to
// itself, and the canonical decoders (tasks, manifests) must accept only the
// one canonical spelling, checked against the independent DAG-CBOR reader in
// helpers_test.go.
//
// The named seed inputs under testdata/fuzz/ are written by
// TestFuzzSeedCorpus -update from fuzzSeeds; inputs the fuzzer finds to fail
// are kept there under their hash names until the bug is fixed.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
)

// fuzzSeeds returns, for each fuzz target, named seed inputs: valid
// encodings and a few malformed ones near them. Each input is a list of
// arguments to the fuzz function.
func fuzzSeeds(tb testing.TB) map[string]map[string][][]byte {
	key := testKey(tb, 1)
	n := mustNormalize(tb, exampleTask())
	task := mustEncode(tb, n)
	withParams := mustEncode(tb, mustNormalize(tb, Task{Prompt: "静かな港", NegativePrompt: "boats", Seed: 7,
		Params: map[string]string{"sampler": "euler", "cfg": "7.5"}}))
	img := Link{RawCID([]byte("an input image"))}
	withInputs := mustEncode(tb, mustNormalize(tb, Task{Prompt: "as a watercolour", Seed: 7,
		Inputs: []Link{img, {RawCID([]byte("a reference"))}}, Mask: &img}))
	req := mustMarshal(tb, TaskRequest{Task: n, NoCache: true})
	manifest := encodeManifest(tb, testManifest(tb, key))
	capRec := signCapacity(tb, testCapacity(capIssued), key)
	link, err := Link{RawCID([]byte("hello"))}.MarshalCBOR()
	if err != nil {
		tb.Fatal(err)
	}
	one := func(b []byte) [][]byte { return [][]byte{b} }
	frame := func(bodies ...[]byte) []byte {
		var buf bytes.Buffer
		for _, b := range bodies {
			if err := WriteFrame(&buf, b); err != nil {
				tb.Fatal(err)
			}
		}
		return buf.Bytes()
	}
	unsortedMode, err := cbor.EncOptions{Sort: cbor.SortNone}.EncMode()
	if err != nil {
		tb.Fatal(err)
	}
	unsortedTask, err := unsortedMode.Marshal(n)
	if err != nil {
		tb.Fatal(err)
	}
	return map[string]map[string][][]byte{
		"FuzzDecodeTask": {
			"valid-example": one(task),
			"valid-params":  one(withParams),
			"valid-inputs":  one(withInputs),
			"valid-digest": one(mustEncode(tb, mustNormalize(tb, Task{Prompt: "x", Seed: 1, Model: "a1111/sdxl",
				ModelDigest: "sha256:" + strings.Repeat("5d", 32)}))),
			"non-minimal-seed":   one(bytes.Replace(task, []byte("seed\x18\x2a"), []byte("seed\x19\x00\x2a"), 1)),
			"unsorted-keys":      one(unsortedTask),
			"trailing-byte":      one(append(slices.Clone(task), 0)),
			"indefinite-map":     one(append(append([]byte{0xbf}, task[1:]...), 0xff)),
			"not-normalised":     one(bytes.Replace(task, []byte("a quiet"), []byte("A quiet"), 1)),
			"empty-map":          one([]byte{0xa0}),
			"deeply-nested-list": one(bytes.Repeat([]byte{0x81}, 100)),
		},
		"FuzzDecodeTaskRequest": {
			"valid":          one(req),
			"valid-params":   one(mustMarshal(tb, map[string]any{"task": cbor.RawMessage(withParams), "no_cache": false})),
			"bare-task":      one(task),
			"unknown-field":  one(mustMarshal(tb, map[string]any{"task": n, "no_cache": false, "x": 1})),
			"submitter":      one(mustMarshal(tb, TaskRequest{Task: n, Submitter: "alice@laptop"})),
			"submitter-ctrl": one(mustMarshal(tb, map[string]any{"task": n, "no_cache": false, "submitter": "a\x00b"})),
			"previews":       one(mustMarshal(tb, TaskRequest{Task: n, Previews: 2})),
			"previews-over":  one(mustMarshal(tb, TaskRequest{Task: n, Previews: MaxPreviews + 1})),
			"huge-map-claim": one([]byte{0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}),
		},
		"FuzzDecodeEvent": {
			"queued":          one(mustMarshal(tb, Event{Type: EventQueued, Position: 2})),
			"progress":        one(mustMarshal(tb, Event{Type: EventProgress, Step: 3, Total: 20, EtaMs: 900})),
			"preview":         one(mustMarshal(tb, Event{Type: EventPreview, Data: []byte("\x89PNG"), Step: 5, Total: 20})),
			"block":           one(mustMarshal(tb, Event{Type: EventBlock, Data: []byte("\x89PNG")})),
			"result":          one(mustMarshal(tb, Event{Type: EventResult, Manifest: manifest})),
			"error":           one(mustMarshal(tb, ErrorEvent(CodeTooHot, "GPU at 84 C", 30*time.Second))),
			"step-over-total": one(mustMarshal(tb, Event{Type: EventProgress, Step: 21, Total: 20})),
			"unknown-type":    one(mustMarshal(tb, Event{Type: "cancel"})),
			"huge-bytes-claim": one([]byte{0xa2, 0x64, 't', 'y', 'p', 'e', 0x65, 'b', 'l', 'o', 'c', 'k',
				0x64, 'd', 'a', 't', 'a', 0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}),
		},
		"FuzzDecodeManifest": {
			"valid":         one(manifest),
			"trailing-byte": one(append(slices.Clone(manifest), 0)),
			"bad-signature": one(func() []byte {
				m := testManifest(tb, key)
				m.Sig[0] ^= 1
				return encodeManifest(tb, m)
			}()),
			"a-task": one(task),
		},
		"FuzzDecodeCapacity": {
			"valid":         one(capRec),
			"trailing-byte": one(append(slices.Clone(capRec), 0)),
			"no-signature": one(func() []byte {
				c := testCapacity(capIssued)
				c.Peer = testID(tb, key).String()
				return mustMarshal(tb, &c)
			}()),
			"upper-case-key": one(bytes.Replace(capRec, []byte("\x64peer"), []byte("\x64PEER"), 1)),
		},
		"FuzzCapacityValidator": {
			"valid":       {[]byte(CapacityKey(testID(tb, key))), capRec},
			"other-peer":  {[]byte(CapacityKey(testID(tb, testKey(tb, 2)))), capRec},
			"no-prefix":   {[]byte(testID(tb, key)), capRec},
			"text-key-id": {[]byte("/gpunet-cap/" + testID(tb, key).String()), capRec},
		},
		"FuzzReadFrame": {
			"one-request":       one(frame(req)),
			"events":            one(frame([]byte{0xa0}, nil, bytes.Repeat([]byte{7}, 300))),
			"header-only":       one([]byte{0x05}),
			"truncated-body":    one([]byte{0x05, 'a', 'b'}),
			"non-minimal-len":   one([]byte{0x81, 0x00, 'x'}),
			"over-cap":          one(binary.AppendUvarint(nil, 1<<60)),
			"varint-overflow":   one(bytes.Repeat([]byte{0xff}, 11)),
			"truncated-varint":  one([]byte{0x80}),
			"empty-then-frames": one(frame(nil, nil, nil)),
		},
		"FuzzDecodeBeacon": {
			"valid":         one(encodeBeacon(tb, testBeacon(tb))),
			"minimal":       one(encodeBeacon(tb, Beacon{Models: []string{"m"}, Slots: 1, Issued: uint64(beaconNow.UnixMilli())})),
			"busy-over":     one(encodeBeacon(tb, func() Beacon { b := testBeacon(tb); b.Busy = 9; return b }())),
			"trailing-byte": one(append(encodeBeacon(tb, testBeacon(tb)), 0)),
		},
		"FuzzDecodeProbeReply": func() map[string][][]byte {
			b := encodeBeacon(tb, testBeacon(tb))
			return map[string][][]byte{
				"valid":       one(mustMarshal(tb, ProbeReply{Beacon: b, Peers: testDescriptors(tb, 2)})),
				"notice":      one(mustMarshal(tb, ProbeReply{Beacon: b})),
				"too-many":    one(mustMarshal(tb, ProbeReply{Beacon: b, Peers: testDescriptors(tb, MaxDescriptors+1)})),
				"bad-beacon":  one(mustMarshal(tb, ProbeReply{Beacon: append(slices.Clone(b), 0)})),
				"twice":       one(mustMarshal(tb, ProbeReply{Beacon: b, Peers: append(testDescriptors(tb, 1), testDescriptors(tb, 1)...)})),
				"bad-address": one(mustMarshal(tb, ProbeReply{Beacon: b, Peers: []Descriptor{{Peer: testDescriptors(tb, 1)[0].Peer, Addrs: [][]byte{{0xff, 0xff}}}}})),
			}
		}(),
		"FuzzDecodeShuffle": {
			"valid":    one(mustMarshal(tb, Shuffle{Peers: testDescriptors(tb, 8)})),
			"empty":    one(mustMarshal(tb, Shuffle{})),
			"bad-peer": one(mustMarshal(tb, Shuffle{Peers: []Descriptor{{Peer: "not a peer"}}})),
		},
		"FuzzDecodeProbeRequest": {
			"notify": one(mustMarshal(tb, ProbeRequest{Notify: true})),
			"plain":  one(mustMarshal(tb, ProbeRequest{})),
		},
		"FuzzDecodeFetchRequest": {
			"task-cid":   one(mustMarshal(tb, FetchRequest{CID: testManifest(tb, key).TaskCID})),
			"result-cid": one(mustMarshal(tb, FetchRequest{CID: Link{ManifestCID(manifest)}})),
			"raw-cid":    one(mustMarshal(tb, FetchRequest{CID: Link{RawCID([]byte("x"))}})),
			"null-cid":   one([]byte("\xa1\x63cid\xf6")),
		},
		"FuzzDecodeFraudProof": func() map[string][][]byte {
			other := func(k byte, data string) []byte {
				m, err := NewManifest(mustNormalize(tb, exampleTask()), []Output{{CID: Link{RawCID([]byte(data))}, MediaType: "image/png", Size: uint64(len(data))}}, "sketch-v1", fixedCreated, testKey(tb, k))
				if err != nil {
					tb.Fatal(err)
				}
				return encodeManifest(tb, m)
			}
			proof := func(accused []byte, w ...[]byte) []byte {
				return mustMarshal(tb, &FraudProof{Version: FraudProofVersion, Accused: accused, Witnesses: w})
			}
			return map[string][][]byte{
				"valid":          one(proof(manifest, other(2, "right"), other(3, "right"))),
				"witness-agrees": one(proof(manifest, encodeManifest(tb, testManifest(tb, testKey(tb, 2))))),
				"same-host":      one(proof(manifest, other(1, "right"))),
				"no-witness":     one(proof(manifest)),
				"twice":          one(proof(manifest, other(2, "right"), other(2, "also"))),
			}
		}(),
		"FuzzDecodeSessionRequest": {
			"valid-request":  one(mustMarshal(tb, SessionRequest{ID: 1, Request: req})),
			"valid-cancel":   one(mustMarshal(tb, SessionRequest{ID: 7, Cancel: true})),
			"largest-id":     one(mustMarshal(tb, SessionRequest{ID: 1<<64 - 1, Request: req})),
			"id-zero":        one(mustMarshal(tb, SessionRequest{ID: 0, Request: req})),
			"both":           one(mustMarshal(tb, SessionRequest{ID: 1, Request: req, Cancel: true})),
			"neither":        one(mustMarshal(tb, SessionRequest{ID: 1})),
			"bare-task":      one(mustMarshal(tb, SessionRequest{ID: 2, Request: task})),
			"bad-previews":   one(mustMarshal(tb, SessionRequest{ID: 3, Request: mustMarshal(tb, TaskRequest{Task: n, Previews: MaxPreviews + 1})})),
			"request-as-map": one(mustMarshal(tb, map[string]any{"id": 1, "request": TaskRequest{Task: n}})),
			"unknown-field":  one(mustMarshal(tb, map[string]any{"id": 1, "cancel": true, "x": 1})),
			"non-minimal-id": one([]byte{0xa2, 0x62, 'i', 'd', 0x18, 0x07, 0x66, 'c', 'a', 'n', 'c', 'e', 'l', 0xf5}),
		},
		"FuzzDecodeSessionEvents": func() map[string][][]byte {
			queued := frame(mustMarshal(tb, Event{Type: EventQueued, Position: 1}))
			answer := frame(mustMarshal(tb, Event{Type: EventQueued, Position: 2}), mustMarshal(tb, Event{Type: EventProgress, Step: 3, Total: 20}),
				mustMarshal(tb, Event{Type: EventBlock, Data: []byte("\x89PNG")}), mustMarshal(tb, Event{Type: EventResult, Manifest: manifest}))
			events := func(id uint64, b []byte) []byte { return mustMarshal(tb, SessionEvents{ID: id, Events: b}) }
			return map[string][][]byte{
				"one-queued":      one(events(7, queued)),
				"whole-answer":    one(events(1<<32, answer)),
				"error":           one(events(1<<64-1, frame(mustMarshal(tb, ErrorEvent(CodeBusy, "256 tasks in flight", time.Second))))),
				"truncated":       one(events(1, answer[:len(answer)-1])),
				"bad-event":       one(events(1, frame(mustMarshal(tb, Event{Type: "cancel"})))),
				"empty-frame":     one(events(1, []byte{0})),
				"id-zero":         one(events(0, queued)),
				"no-events":       one(events(1, []byte{})),
				"trailing-varint": one(events(1, append(slices.Clone(queued), 0x80))),
				"huge-length":     one(events(1, binary.AppendUvarint(nil, 1<<60))),
			}
		}(),
		"FuzzLinkUnmarshalCBOR": {
			"raw-cid":     one(link),
			"dag-cbor":    one(mustMarshal(tb, testManifest(tb, key).TaskCID)),
			"tag-43":      one(append([]byte{0xd8, 0x2b}, link[2:]...)),
			"no-prefix":   one(mustMarshal(tb, cbor.Tag{Number: 42, Content: RawCID(nil).Bytes()})),
			"cidv0":       one(mustMarshal(tb, cbor.Tag{Number: 42, Content: append([]byte{0}, mustCIDv0(tb).Bytes()...)})),
			"text-inside": one(mustMarshal(tb, cbor.Tag{Number: 42, Content: "\x00\x01\x55"})),
		},
	}
}

func mustCIDv0(tb testing.TB) cid.Cid {
	c, err := cid.Decode("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// corpusFile renders args in the "go test fuzz v1" format.
func corpusFile(args [][]byte) []byte {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		fmt.Fprintf(&b, "[]byte(%q)\n", a)
	}
	return b.Bytes()
}

// TestFuzzSeedCorpus keeps testdata/fuzz/<target>/seed-* in step with
// fuzzSeeds, so the corpus holds real encodings of the current format.
func TestFuzzSeedCorpus(t *testing.T) {
	seeds := fuzzSeeds(t)
	targets := slices.Sorted(func(yield func(string) bool) {
		for k := range seeds {
			if !yield(k) {
				return
			}
		}
	})
	for _, target := range targets {
		dir := filepath.Join("testdata", "fuzz", target)
		names := make([]string, 0, len(seeds[target]))
		for name := range seeds[target] {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			path := filepath.Join(dir, "seed-"+name)
			want := corpusFile(seeds[target][name])
			if *update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%v (run with -update)", err)
				continue
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s is out of date: run go test ./protocol/ -run TestFuzzSeedCorpus -update", path)
			}
		}
	}
}

// addSeeds adds the code-built seeds (the same as the files under
// testdata/fuzz, so fuzzing works before -update was run) plus extra
// hand-written ones.
func addSeeds(f *testing.F, target string, extra ...[]byte) {
	for _, args := range fuzzSeeds(f)[target] {
		vals := make([]any, len(args))
		for i, a := range args {
			vals[i] = a
		}
		f.Add(vals...)
	}
	for _, e := range extra {
		f.Add(e)
	}
}

var malformedCBOR = [][]byte{nil, {0x00}, {0xa0}, {0xbf, 0xff}, {0xf6}, {0x5f}, {0xff}, {0xa1, 0x60, 0x60}}

func FuzzDecodeTask(f *testing.F) {
	addSeeds(f, "FuzzDecodeTask", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		task, err := DecodeTask(b)
		if err != nil {
			if !errors.Is(err, ErrBadTask) {
				t.Fatalf("error %v does not wrap ErrBadTask", err)
			}
			return
		}
		if err := checkDAGCBOR(b); err != nil {
			t.Fatalf("accepted a non-canonical encoding (%v): %x", err, b)
		}
		again, err := task.Encode()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs (%v):\n in %x\nout %x", err, b, again)
		}
		if err := task.Validate(); err != nil {
			t.Fatalf("decoded task does not validate: %v", err)
		}
		if n, err := task.Normalize(); err != nil || !n.Equal(task) {
			t.Fatalf("decoded task is not normalised: %+v, %v", n, err)
		}
		if c, err := task.CID(); err != nil || !c.Equals(dagCBORCID(b)) {
			t.Fatalf("CID %s, %v; want the CID of the input", c, err)
		}
	})
}

func FuzzDecodeTaskRequest(f *testing.F) {
	addSeeds(f, "FuzzDecodeTaskRequest", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeTaskRequest(b)
		if err != nil {
			if !errors.Is(err, ErrBadTask) && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("error %v wraps neither ErrBadTask nor ErrFrameTooLarge", err)
			}
			return
		}
		if err := r.Task.Validate(); err != nil {
			t.Fatalf("decoded task does not validate: %v", err)
		}
		enc := mustMarshal(t, r)
		r2, err := DecodeTaskRequest(enc)
		if err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
		if !r2.Task.Equal(r.Task) || r2.NoCache != r.NoCache {
			t.Fatalf("round trip changed the request: %+v vs %+v", r, r2)
		}
		if !bytes.Equal(mustMarshal(t, r2), enc) {
			t.Fatal("encoding is not stable")
		}
		if _, err := DecodeTask(mustEncode(t, r.Task)); err != nil {
			t.Fatalf("the request's task has no canonical encoding: %v", err)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	addSeeds(f, "FuzzDecodeEvent", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEvent(b)
		if err != nil {
			return
		}
		switch e.Type {
		case EventQueued, EventProgress:
			if e.Step > e.Total {
				t.Fatalf("step %d > total %d accepted", e.Step, e.Total)
			}
		case EventPreview:
			if len(e.Data) == 0 || len(e.Data) > MaxPreviewBytes || e.Step > e.Total {
				t.Fatalf("bad preview accepted: %d bytes, step %d of %d", len(e.Data), e.Step, e.Total)
			}
		case EventBlock:
			if len(e.Data) == 0 || len(e.Data) > MaxBlockBytes {
				t.Fatalf("block of %d bytes accepted", len(e.Data))
			}
		case EventResult:
			if len(e.Manifest) == 0 || len(e.Manifest) > MaxManifestBytes {
				t.Fatalf("manifest of %d bytes accepted", len(e.Manifest))
			}
		case EventError:
			if e.Code == "" || len(e.Message) > 1024 || e.Err() == nil {
				t.Fatalf("bad error event accepted: %+v", e)
			}
		default:
			t.Fatalf("unknown type %q accepted", e.Type)
		}
		enc := mustMarshal(t, e)
		e2, err := DecodeEvent(enc)
		if err != nil {
			t.Fatalf("re-encoded event does not decode: %v", err)
		}
		if !eventsEqual(*e, *e2) {
			t.Fatalf("round trip changed the event: %+v vs %+v", e, e2)
		}
	})
}

func FuzzDecodeManifest(f *testing.F) {
	addSeeds(f, "FuzzDecodeManifest", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("error %v does not wrap ErrBadManifest", err)
			}
			return
		}
		if err := checkDAGCBOR(b); err != nil {
			t.Fatalf("accepted a non-canonical encoding (%v): %x", err, b)
		}
		if again, err := m.Encode(); err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		if err := m.Verify(); err != nil {
			t.Fatalf("decoded manifest does not verify: %v", err)
		}
		if c, err := m.Task.CID(); err != nil || !c.Equals(m.TaskCID.Cid) {
			t.Fatalf("task_cid %s does not match the task (%s, %v)", m.TaskCID, c, err)
		}
		if err := VerifyBlock(ManifestCID(b), b); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzDecodeCapacity(f *testing.F) {
	addSeeds(f, "FuzzDecodeCapacity", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCapacity(b, capNow)
		if err != nil {
			if !errors.Is(err, ErrBadCapacity) {
				t.Fatalf("error %v does not wrap ErrBadCapacity", err)
			}
			return
		}
		if len(b) > MaxCapacityBytes || len(c.Models) == 0 {
			t.Fatalf("accepted a record of %d bytes with %d models", len(b), len(c.Models))
		}
		enc := mustMarshal(t, c)
		c2, err := DecodeCapacity(enc, capNow)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !bytes.Equal(mustMarshal(t, c2), enc) {
			t.Fatal("round trip changed the record")
		}
		id, err := peer.Decode(c.Peer)
		if err != nil {
			t.Fatal(err)
		}
		v := CapacityValidator{Now: func() time.Time { return capNow }}
		if err := v.Validate(CapacityKey(id), enc); err != nil {
			t.Fatalf("decoded record does not validate under its own key: %v", err)
		}
	})
}

func FuzzCapacityValidator(f *testing.F) {
	for _, args := range fuzzSeeds(f)["FuzzCapacityValidator"] {
		f.Add(args[0], args[1])
	}
	f.Add([]byte("/gpunet-cap/"), []byte{})
	f.Add([]byte("/gpunet-cap//"), []byte{0xa0})
	f.Fuzz(func(t *testing.T, key, value []byte) {
		v := CapacityValidator{Now: func() time.Time { return capNow }}
		if err := v.Validate(string(key), value); err != nil {
			if !errors.Is(err, ErrBadCapacity) {
				t.Fatalf("error %v does not wrap ErrBadCapacity", err)
			}
			return
		}
		c, err := DecodeCapacity(value, capNow)
		if err != nil {
			t.Fatalf("Validate accepted a record DecodeCapacity rejects: %v", err)
		}
		id, err := peer.Decode(c.Peer)
		if err != nil {
			t.Fatal(err)
		}
		if CapacityKey(id) != string(key) {
			t.Fatalf("record of %s accepted under key %q", c.Peer, key)
		}
		if i, err := v.Select(string(key), [][]byte{value}); err != nil || i != 0 {
			t.Fatalf("Select of the one valid record = %d, %v", i, err)
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	addSeeds(f, "FuzzReadFrame", nil, []byte{0}, []byte{0x01})
	const max = 1 << 12
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		off := 0
		for range 64 {
			body, err := ReadFrame(r, max)
			if err != nil {
				if err == io.EOF && off != len(b) {
					// Only a clean end between frames may be plain io.EOF.
					t.Fatalf("io.EOF at offset %d of %d", off, len(b))
				}
				return
			}
			n, k := binary.Uvarint(b[off:])
			if k <= 0 || n != uint64(len(body)) || len(body) > max {
				t.Fatalf("frame at %d: header says %d (%d bytes), body %d", off, n, k, len(body))
			}
			if !bytes.Equal(body, b[off+k:off+k+len(body)]) {
				t.Fatalf("frame at %d: body differs from the input", off)
			}
			off += k + len(body)
		}
	})
}

func FuzzLinkUnmarshalCBOR(f *testing.F) {
	addSeeds(f, "FuzzLinkUnmarshalCBOR", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		var l Link
		if err := l.UnmarshalCBOR(b); err != nil {
			return
		}
		if !l.Defined() {
			t.Fatal("decoded an undefined CID")
		}
		enc, err := l.MarshalCBOR()
		if err != nil {
			t.Fatalf("decoded link does not encode: %v", err)
		}
		if err := checkDAGCBOR(enc); err != nil {
			t.Fatalf("link encodes as non-canonical DAG-CBOR: %v", err)
		}
		var l2 Link
		if err := l2.UnmarshalCBOR(enc); err != nil || !l2.Equals(l.Cid) {
			t.Fatalf("round trip: %s, %v; want %s", l2.Cid, err, l.Cid)
		}
	})
}

func FuzzDecodeBeacon(f *testing.F) {
	addSeeds(f, "FuzzDecodeBeacon", malformedCBOR...)
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := DecodeBeacon(data, beaconNow)
		if err != nil {
			if !errors.Is(err, ErrBadBeacon) {
				t.Fatalf("error %v does not wrap ErrBadBeacon", err)
			}
			return
		}
		if len(b.Models) == 0 || len(b.Models) > 16 || b.Slots == 0 || b.Busy > b.Slots ||
			b.TempDC > 2000 || b.HeatDC > 2000 || b.UtilPm > 1000 || b.SpeedPm > 1000 {
			t.Fatalf("accepted an out-of-range beacon: %+v", b)
		}
		enc, err := b.Encode()
		if err != nil {
			t.Fatalf("decoded beacon does not encode: %v", err)
		}
		b2, err := DecodeBeacon(enc, beaconNow)
		if err != nil {
			t.Fatalf("re-encoded beacon does not decode: %v", err)
		}
		if !beaconsEqual(b, b2) {
			t.Fatalf("round trip changed the beacon: %+v vs %+v", b, b2)
		}
	})
}

func FuzzDecodeFetchRequest(f *testing.F) {
	addSeeds(f, "FuzzDecodeFetchRequest", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeFetchRequest(b)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("error %v wraps neither ErrBadRequest nor ErrFrameTooLarge", err)
			}
			return
		}
		if p := r.CID.Prefix(); p.Version != 1 || (p.Codec != cid.DagCBOR && (p.Codec != cid.Raw || p.MhType != mh.SHA2_256)) {
			t.Fatalf("accepted CID %s", r.CID)
		}
		r2, err := DecodeFetchRequest(mustMarshal(t, r))
		if err != nil || !r2.CID.Equals(r.CID.Cid) {
			t.Fatalf("round trip: %v, %v", r2, err)
		}
	})
}

func FuzzDecodeSessionRequest(f *testing.F) {
	addSeeds(f, "FuzzDecodeSessionRequest", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, req, err := DecodeSessionRequest(b)
		if err != nil {
			if errors.Is(err, ErrBadSession) {
				// A protocol error: the host resets the session, and has
				// no ID to answer.
				if s != nil || req != nil {
					t.Fatalf("returned %+v, %+v with %v", s, req, err)
				}
				return
			}
			// An invalid request in a good frame: the host answers its ID
			// with bad_request, so it needs the ID, and the error must be
			// the one a task stream's host gets for those bytes.
			if !errors.Is(err, ErrBadTask) && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("error %v wraps neither ErrBadSession, ErrBadTask nor ErrFrameTooLarge", err)
			}
			if s == nil || s.ID == 0 || s.Cancel || len(s.Request) == 0 || req != nil {
				t.Fatalf("invalid request returned %+v, %+v", s, req)
			}
			if _, err := DecodeTaskRequest(s.Request); err == nil {
				t.Fatal("DecodeTaskRequest accepts the request DecodeSessionRequest rejected")
			}
			return
		}
		if len(b) > MaxSessionRequestBytes || s.ID == 0 {
			t.Fatalf("accepted a %d-byte frame with ID %d", len(b), s.ID)
		}
		if s.Cancel != (req == nil) || s.Cancel != (len(s.Request) == 0) {
			t.Fatalf("accepted cancel %v with a %d-byte request (decoded: %v)", s.Cancel, len(s.Request), req != nil)
		}
		if req != nil {
			if err := req.Task.Validate(); err != nil {
				t.Fatalf("decoded task does not validate: %v", err)
			}
			if r2, err := DecodeTaskRequest(s.Request); err != nil || !r2.Task.Equal(req.Task) {
				t.Fatalf("the request does not decode alone as it did in the frame: %v", err)
			}
		}
		enc := mustMarshal(t, s)
		if err := checkDAGCBOR(enc); err != nil {
			t.Fatalf("re-encoding is not canonical: %v", err)
		}
		s2, _, err := DecodeSessionRequest(enc)
		if err != nil || s2.ID != s.ID || s2.Cancel != s.Cancel || !bytes.Equal(s2.Request, s.Request) {
			t.Fatalf("round trip: %+v, %v; want %+v", s2, err, s)
		}
		if !bytes.Equal(mustMarshal(t, s2), enc) {
			t.Fatal("encoding is not stable")
		}
	})
}

func FuzzDecodeSessionEvents(f *testing.F) {
	addSeeds(f, "FuzzDecodeSessionEvents", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		id, evs, err := DecodeSessionEvents(b)
		if err != nil {
			if !errors.Is(err, ErrBadSession) {
				t.Fatalf("error %v does not wrap ErrBadSession", err)
			}
			if id != 0 || evs != nil {
				t.Fatalf("returned task %d and %d events with %v", id, len(evs), err)
			}
			return
		}
		if len(b) > MaxSessionEventBytes || id == 0 || len(evs) == 0 {
			t.Fatalf("accepted a %d-byte frame for task %d with %d events", len(b), id, len(evs))
		}
		for i, e := range evs {
			e2, err := DecodeEvent(mustMarshal(t, e))
			if err != nil || !eventsEqual(*e, *e2) {
				t.Fatalf("event %d (%+v) does not pass DecodeEvent re-encoded: %v", i, e, err)
			}
		}
		// The events are whole frames: a host splitting them for another
		// frame gets them back whole, and a frame rebuilt from them by
		// AppendSessionEvents is their canonical encoding and decodes the same.
		var s SessionEvents
		if err := Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		chunks, err := SplitEventFrames(s.Events, 0)
		if err != nil || len(chunks) != len(evs) {
			t.Fatalf("SplitEventFrames: %d frames, %v; want %d", len(chunks), err, len(evs))
		}
		if whole, err := SplitEventFrames(s.Events, MaxSessionEventBytes); err != nil || len(whole) != 1 || !bytes.Equal(whole[0], s.Events) {
			t.Fatalf("SplitEventFrames under the cap: %d chunks, %v; want the events in one", len(whole), err)
		}
		enc := append(AppendSessionEvents(nil, id, len(s.Events)), s.Events...)
		if !bytes.Equal(enc, mustMarshal(t, SessionEvents{ID: id, Events: s.Events})) {
			t.Fatalf("AppendSessionEvents differs from Marshal for task %d", id)
		}
		id2, evs2, err := DecodeSessionEvents(enc)
		if err != nil || id2 != id || len(evs2) != len(evs) {
			t.Fatalf("round trip: task %d with %d events, %v", id2, len(evs2), err)
		}
		for i := range evs {
			if !eventsEqual(*evs[i], *evs2[i]) {
				t.Fatalf("round trip changed event %d: %+v vs %+v", i, evs[i], evs2[i])
			}
		}
	})
}

// FuzzNormalize is not a decoder, but every task a client submits goes
// through it: a normalised task must validate, be a fixed point, and have a
// canonical encoding that decodes to itself.
func FuzzNormalize(f *testing.F) {
	f.Add("a quiet harbour at dusk", "", "", uint64(42), uint32(0), uint32(0), uint32(0), "", "")
	f.Add(" A\u00a0b\t", "x\ny", "GPUNET/Sketch-v1", uint64(0), uint32(150), uint32(2048), uint32(64), "Sampler", " euler  a ")
	f.Add("p", "", "m", uint64(MaxSeed), uint32(1), uint32(64), uint32(2048), "k", "\xff")
	f.Fuzz(func(t *testing.T, prompt, neg, model string, seed uint64, steps, width, height uint32, pk, pv string) {
		in := Task{Prompt: prompt, NegativePrompt: neg, Model: model, Seed: seed, Steps: steps, Width: width, Height: height}
		if pk != "" || pv != "" {
			in.Params = map[string]string{pk: pv}
		}
		n, err := in.Normalize()
		if err != nil {
			if !errors.Is(err, ErrBadTask) {
				t.Fatalf("error %v does not wrap ErrBadTask", err)
			}
			return
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("normalised task does not validate: %v", err)
		}
		if n2, err := n.Normalize(); err != nil || !n2.Equal(n) {
			t.Fatalf("Normalize is not idempotent: %+v then %+v (%v)", n, n2, err)
		}
		if n.Seed == 0 || (seed != 0 && n.Seed != seed) || strings.Contains(n.Prompt, "  ") {
			t.Fatalf("normalised %+v from %+v", n, in)
		}
		enc, err := n.Encode()
		if err != nil {
			return // over MaxTaskBytes: see TestNormalizedTaskAtEveryCapEncodes
		}
		if err := checkDAGCBOR(enc); err != nil {
			t.Fatalf("encoding is not canonical: %v", err)
		}
		got, err := DecodeTask(enc)
		if err != nil || !got.Equal(n) {
			t.Fatalf("DecodeTask(Encode(n)) = %+v, %v; want %+v", got, err, n)
		}
	})
}

func FuzzDecodeFraudProof(f *testing.F) {
	addSeeds(f, "FuzzDecodeFraudProof", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeFraudProof(b)
		if err != nil {
			if !errors.Is(err, ErrBadProof) {
				t.Fatalf("error %v does not wrap ErrBadProof", err)
			}
			return
		}
		if len(p.Witnesses) == 0 || len(p.Witnesses) > MaxWitnesses {
			t.Fatalf("%d witnesses accepted", len(p.Witnesses))
		}
		hosts := map[string]bool{p.Accused.Host: true}
		for _, w := range p.Witnesses {
			if hosts[w.Host] || SameOutputs(w, p.Accused) || !w.TaskCID.Equals(p.Accused.TaskCID.Cid) {
				t.Fatalf("a witness that proves nothing was accepted: %+v", w)
			}
			hosts[w.Host] = true
		}
	})
}

func FuzzDecodeProbeReply(f *testing.F) {
	addSeeds(f, "FuzzDecodeProbeReply", malformedCBOR...)
	from := testID(f, testKey(f, 1)).String()
	f.Fuzz(func(t *testing.T, b []byte) {
		r, bc, err := DecodeProbeReply(b, from, beaconNow)
		if err != nil {
			if !errors.Is(err, ErrBadSample) {
				t.Fatalf("error %v does not wrap ErrBadSample", err)
			}
			return
		}
		if bc.Peer != from || len(r.Peers) > MaxDescriptors {
			t.Fatalf("accepted a reply about %q with %d descriptors", bc.Peer, len(r.Peers))
		}
		checkDescriptorsAccepted(t, r.Peers)
	})
}

func FuzzDecodeShuffle(f *testing.F) {
	addSeeds(f, "FuzzDecodeShuffle", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeShuffle(b)
		if err != nil {
			if !errors.Is(err, ErrBadSample) {
				t.Fatalf("error %v does not wrap ErrBadSample", err)
			}
			return
		}
		checkDescriptorsAccepted(t, s.Peers)
	})
}

func FuzzDecodeProbeRequest(f *testing.F) {
	addSeeds(f, "FuzzDecodeProbeRequest", malformedCBOR...)
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := DecodeProbeRequest(b); err != nil && !errors.Is(err, ErrBadSample) {
			t.Fatalf("error %v does not wrap ErrBadSample", err)
		}
	})
}

// checkDescriptorsAccepted fails t if an accepted descriptor list breaks
// a rule a node relies on.
func checkDescriptorsAccepted(t *testing.T, ds []Descriptor) {
	t.Helper()
	if len(ds) > MaxDescriptors {
		t.Fatalf("%d descriptors accepted", len(ds))
	}
	seen := map[string]bool{}
	for _, d := range ds {
		if _, err := peer.Decode(d.Peer); err != nil || seen[d.Peer] || len(d.Addrs) > MaxDescriptorAddrs {
			t.Fatalf("accepted descriptor %+v", d)
		}
		seen[d.Peer] = true
	}
}
