package protocol

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"math"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// update rewrites the files under testdata/ that the tests compare against:
// the worked example and the named seed corpora. Run
//
//	go test ./protocol/ -run 'TestWorkedExample|TestFuzzSeedCorpus' -update
//
// after a deliberate change to an encoding, and review the diff.
var update = flag.Bool("update", false, "rewrite golden files and seed corpora in testdata/")

// testKey returns a fixed Ed25519 key, so that signed fixtures (and the
// seed corpora made from them) are the same on every run: Ed25519 signatures
// are deterministic.
func testKey(tb testing.TB, n byte) crypto.PrivKey {
	tb.Helper()
	k, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{n}, ed25519.SeedSize)))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func testID(tb testing.TB, k crypto.PrivKey) peer.ID {
	tb.Helper()
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

func mustNormalize(tb testing.TB, t Task) Task {
	tb.Helper()
	n, err := t.Normalize()
	if err != nil {
		tb.Fatalf("Normalize(%+v): %v", t, err)
	}
	return n
}

func mustEncode(tb testing.TB, t Task) []byte {
	tb.Helper()
	b, err := t.Encode()
	if err != nil {
		tb.Fatalf("Encode: %v", err)
	}
	return b
}

func mustMarshal(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := Marshal(v)
	if err != nil {
		tb.Fatalf("Marshal(%T): %v", v, err)
	}
	return b
}

// exampleTask is the worked example of docs/protocol.md.
func exampleTask() Task { return Task{Prompt: "a quiet harbour at dusk", Seed: 42} }

// ---- A small CBOR reader, independent of fxamacker/cbor ----
//
// The tests use it to check the DAG-CBOR rules (minimal heads, no indefinite
// lengths, length-first sorted text keys, tag 42 only, 64-bit floats only)
// without trusting the encoder under test to check itself.

type cborHead struct {
	major byte
	info  byte   // the low 5 bits of the initial byte
	arg   uint64 // the argument: value, length or tag number
	size  int    // bytes taken by the head
}

func readHead(b []byte) (cborHead, error) {
	if len(b) == 0 {
		return cborHead{}, errors.New("unexpected end")
	}
	h := cborHead{major: b[0] >> 5, info: b[0] & 0x1f, size: 1}
	switch {
	case h.info < 24:
		h.arg = uint64(h.info)
	case h.info <= 27:
		n := 1 << (h.info - 24)
		if len(b) < 1+n {
			return h, errors.New("truncated head")
		}
		for _, c := range b[1 : 1+n] {
			h.arg = h.arg<<8 | uint64(c)
		}
		h.size += n
	case h.info == 31:
		return h, fmt.Errorf("indefinite length (major %d)", h.major)
	default:
		return h, fmt.Errorf("reserved additional info %d", h.info)
	}
	return h, nil
}

// minimal reports whether the head used the shortest form for its argument.
func (h cborHead) minimal() bool {
	switch h.info {
	case 24:
		return h.arg >= 24
	case 25:
		return h.arg > math.MaxUint8
	case 26:
		return h.arg > math.MaxUint16
	case 27:
		return h.arg > math.MaxUint32
	}
	return true
}

// checkDAGCBOR checks that b is exactly one DAG-CBOR item in canonical form.
func checkDAGCBOR(b []byte) error {
	n, err := dagItem(b, 0)
	if err != nil {
		return err
	}
	if n != len(b) {
		return fmt.Errorf("%d trailing bytes", len(b)-n)
	}
	return nil
}

func dagItem(b []byte, depth int) (int, error) {
	if depth > 64 {
		return 0, errors.New("too deep")
	}
	h, err := readHead(b)
	if err != nil {
		return 0, err
	}
	if h.major != 7 && !h.minimal() {
		return 0, fmt.Errorf("non-minimal head 0x%x for %d", b[0], h.arg)
	}
	switch h.major {
	case 0, 1:
		return h.size, nil
	case 2, 3:
		if uint64(len(b)-h.size) < h.arg {
			return 0, errors.New("truncated string")
		}
		return h.size + int(h.arg), nil
	case 4:
		off := h.size
		for i := uint64(0); i < h.arg; i++ {
			n, err := dagItem(b[off:], depth+1)
			if err != nil {
				return 0, err
			}
			off += n
		}
		return off, nil
	case 5:
		off := h.size
		var prev []byte
		for i := uint64(0); i < h.arg; i++ {
			kh, err := readHead(b[off:])
			if err != nil {
				return 0, err
			}
			if kh.major != 3 {
				return 0, fmt.Errorf("map key of major type %d, want text", kh.major)
			}
			n, err := dagItem(b[off:], depth+1)
			if err != nil {
				return 0, err
			}
			key := b[off : off+n]
			if prev != nil && !lengthFirstLess(prev, key) {
				return 0, fmt.Errorf("map key %q not after %q in length-first order", key[kh.size:], prev)
			}
			prev = key
			off += n
			n, err = dagItem(b[off:], depth+1)
			if err != nil {
				return 0, err
			}
			off += n
		}
		return off, nil
	case 6:
		if h.arg != 42 {
			return 0, fmt.Errorf("tag %d: DAG-CBOR allows only tag 42", h.arg)
		}
		ch, err := readHead(b[h.size:])
		if err != nil {
			return 0, err
		}
		if ch.major != 2 {
			return 0, errors.New("tag 42 over a non-byte-string")
		}
		n, err := dagItem(b[h.size:], depth+1)
		return h.size + n, err
	default: // 7
		switch {
		case h.info >= 20 && h.info <= 22: // false, true, null
			return 1, nil
		case h.info == 27:
			return h.size, nil
		}
		return 0, fmt.Errorf("simple value or float 0x%x not allowed in DAG-CBOR", b[0])
	}
}

// lengthFirstLess orders encoded keys as DAG-CBOR does: shorter first, then
// bytewise. Comparing the encoded keys (head included) is the same thing.
func lengthFirstLess(a, b []byte) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return bytes.Compare(a, b) < 0
}

type cborEntry struct {
	Key      string
	KeyBytes []byte // the encoded key, head included
	Val      []byte // the encoded value
}

// mapEntries splits a CBOR map with text keys into its entries, in the order
// they appear on the wire.
func mapEntries(b []byte) ([]cborEntry, error) {
	h, err := readHead(b)
	if err != nil {
		return nil, err
	}
	if h.major != 5 {
		return nil, fmt.Errorf("major type %d, want a map", h.major)
	}
	off := h.size
	var out []cborEntry
	for i := uint64(0); i < h.arg; i++ {
		kh, err := readHead(b[off:])
		if err != nil {
			return nil, err
		}
		n, err := dagItem(b[off:], 1)
		if err != nil {
			return nil, err
		}
		e := cborEntry{Key: string(b[off+kh.size : off+n]), KeyBytes: b[off : off+n]}
		off += n
		if n, err = dagItem(b[off:], 1); err != nil {
			return nil, err
		}
		e.Val = b[off : off+n]
		off += n
		out = append(out, e)
	}
	if off != len(b) {
		return nil, fmt.Errorf("%d trailing bytes", len(b)-off)
	}
	return out, nil
}

func mapKeys(tb testing.TB, b []byte) []string {
	tb.Helper()
	es, err := mapEntries(b)
	if err != nil {
		tb.Fatalf("mapEntries(%x): %v", b, err)
	}
	keys := make([]string, len(es))
	for i, e := range es {
		keys[i] = e.Key
	}
	return keys
}

// replaceOnce replaces the single occurrence of old in b, failing the test if
// there is not exactly one: fixtures built by byte surgery must not silently
// stop testing what they claim to.
func replaceOnce(tb testing.TB, b []byte, old, new []byte) []byte {
	tb.Helper()
	if c := bytes.Count(b, old); c != 1 {
		tb.Fatalf("%x occurs %d times in %x, want once", old, c, b)
	}
	return bytes.Replace(b, old, new, 1)
}
