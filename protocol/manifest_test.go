package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	mh "github.com/multiformats/go-multihash"
)

// fixedCreated is the Created time of test manifests: 2026-01-02T03:04:05Z.
const fixedCreated = 1767323045000

func testOutputs() []Output {
	png := []byte("\x89PNG\r\n\x1a\nnot really a png")
	meta := []byte(`{"steps":20}`)
	return []Output{
		{CID: Link{RawCID(png)}, MediaType: "image/png", Size: uint64(len(png))},
		{CID: Link{RawCID(meta)}, MediaType: "application/json", Size: uint64(len(meta))},
	}
}

func testManifest(tb testing.TB, key crypto.PrivKey) *Manifest {
	tb.Helper()
	m, err := NewManifest(mustNormalize(tb, exampleTask()), testOutputs(), "sketch-v1", fixedCreated, key)
	if err != nil {
		tb.Fatalf("NewManifest: %v", err)
	}
	return m
}

func encodeManifest(tb testing.TB, m *Manifest) []byte {
	tb.Helper()
	b, err := m.Encode()
	if err != nil {
		tb.Fatalf("Encode: %v", err)
	}
	return b
}

// resign signs m with key the way the spec says: the domain string, then the
// encoding of m without its sig field.
func resign(tb testing.TB, m *Manifest, key crypto.PrivKey) {
	tb.Helper()
	m.Sig = nil
	unsigned := mustMarshal(tb, m)
	sig, err := key.Sign(append([]byte("gpunet-manifest-v1\x00"), unsigned...))
	if err != nil {
		tb.Fatal(err)
	}
	m.Sig = sig
}

func TestManifestRoundTrip(t *testing.T) {
	key := testKey(t, 1)
	m := testManifest(t, key)
	if m.Version != ManifestVersion || ManifestVersion != 1 {
		t.Errorf("version %d, want 1", m.Version)
	}
	if m.Host != testID(t, key).String() {
		t.Errorf("host %s, want the signer %s", m.Host, testID(t, key))
	}
	b := encodeManifest(t, m)
	if err := checkDAGCBOR(b); err != nil {
		t.Fatalf("manifest is not canonical DAG-CBOR: %v", err)
	}
	if got, want := mapKeys(t, b), []string{"v", "sig", "host", "task", "kernel", "created", "outputs", "task_cid"}; !slices.Equal(got, want) {
		t.Errorf("manifest keys %v, want %v", got, want)
	}
	got, err := DecodeManifest(b)
	if err != nil {
		t.Fatalf("DecodeManifest: %v", err)
	}
	if !bytes.Equal(encodeManifest(t, got), b) {
		t.Error("decoded manifest re-encodes differently")
	}
	if !got.Task.Equal(m.Task) || !got.TaskCID.Equals(m.TaskCID.Cid) || got.Host != m.Host ||
		got.Kernel != "sketch-v1" || got.Created != fixedCreated || len(got.Outputs) != 2 ||
		!got.Outputs[0].CID.Equals(m.Outputs[0].CID.Cid) || got.Outputs[1].MediaType != "application/json" {
		t.Errorf("decoded %+v, want %+v", got, m)
	}
	tc, _ := m.Task.CID()
	if !m.TaskCID.Equals(tc) {
		t.Errorf("task_cid %s, want the TaskCID %s", m.TaskCID, tc)
	}

	// The signature covers the domain string and the encoding without sig,
	// exactly as documented.
	pub := key.GetPublic()
	unsigned := mustMarshal(t, &Manifest{Version: m.Version, Task: m.Task, TaskCID: m.TaskCID, Outputs: m.Outputs,
		Host: m.Host, Kernel: m.Kernel, Created: m.Created})
	if ok, err := pub.Verify(append([]byte("gpunet-manifest-v1\x00"), unsigned...), m.Sig); !ok || err != nil {
		t.Errorf("signature does not verify over the documented bytes: %v", err)
	}
	if len(m.Sig) != 64 {
		t.Errorf("Ed25519 signature of %d bytes", len(m.Sig))
	}

	// The ResultCID is dag-cbor sha2-256 over the whole encoding.
	rc := ManifestCID(b)
	if p := rc.Prefix(); p.Version != 1 || p.Codec != cid.DagCBOR || p.MhType != mh.SHA2_256 {
		t.Errorf("ResultCID prefix %+v", p)
	}
	if err := VerifyBlock(rc, b); err != nil {
		t.Errorf("ResultCID does not address the encoding: %v", err)
	}
}

func TestManifestTamperingFails(t *testing.T) {
	key := testKey(t, 1)
	other := testKey(t, 2)
	tests := map[string]func(*Manifest){
		"prompt": func(m *Manifest) { m.Task.Prompt = "a loud harbour at dusk" },
		"prompt and task_cid": func(m *Manifest) {
			m.Task.Prompt = "a loud harbour at dusk"
			c, _ := m.Task.CID()
			m.TaskCID = Link{c}
		},
		"seed":              func(m *Manifest) { m.Task.Seed++ },
		"task_cid":          func(m *Manifest) { m.TaskCID = Link{RawCID([]byte("x"))} },
		"output cid":        func(m *Manifest) { m.Outputs[0].CID = Link{RawCID([]byte("another image"))} },
		"output size":       func(m *Manifest) { m.Outputs[0].Size++ },
		"output media type": func(m *Manifest) { m.Outputs[0].MediaType = "image/jpeg" },
		"outputs swapped":   func(m *Manifest) { m.Outputs[0], m.Outputs[1] = m.Outputs[1], m.Outputs[0] },
		"output dropped":    func(m *Manifest) { m.Outputs = m.Outputs[:1] },
		"host":              func(m *Manifest) { m.Host = testID(t, other).String() },
		"created":           func(m *Manifest) { m.Created++ },
		"kernel":            func(m *Manifest) { m.Kernel = "sketch-v2" },
		"signature bit":     func(m *Manifest) { m.Sig[10] ^= 1 },
		"signature removed": func(m *Manifest) { m.Sig = nil },
		"signature by other key": func(m *Manifest) {
			resign(t, m, other)
		},
	}
	for name, tamper := range tests {
		t.Run(name, func(t *testing.T) {
			m := testManifest(t, key)
			m.Outputs = slices.Clone(m.Outputs)
			tamper(m)
			b := encodeManifest(t, m)
			if got, err := DecodeManifest(b); !errors.Is(err, ErrBadManifest) {
				t.Errorf("DecodeManifest = %+v, %v; want ErrBadManifest", got, err)
			}
			if err := m.Verify(); !errors.Is(err, ErrBadManifest) {
				t.Errorf("Verify = %v, want ErrBadManifest", err)
			}
		})
	}
}

func TestManifestByteTamperingFails(t *testing.T) {
	b := encodeManifest(t, testManifest(t, testKey(t, 1)))
	// Flip one bit in every byte in turn: no single-bit change may survive.
	for i := range b {
		c := slices.Clone(b)
		c[i] ^= 0x01
		if _, err := DecodeManifest(c); err == nil {
			t.Errorf("flipping bit 0 of byte %d (0x%02x) still decodes", i, b[i])
		}
	}
}

func TestManifestSignedByAnotherKeyFails(t *testing.T) {
	a, b := testKey(t, 1), testKey(t, 2)
	m := testManifest(t, a)
	m.Host = testID(t, b).String()
	resign(t, m, a) // a valid signature by A, over a manifest that names B
	if _, err := DecodeManifest(encodeManifest(t, m)); !errors.Is(err, ErrBadManifest) {
		t.Errorf("manifest signed by A naming host B: %v, want ErrBadManifest", err)
	}
	// Control: the same manifest signed by B verifies, so the check above
	// failed on the signer alone.
	resign(t, m, b)
	if _, err := DecodeManifest(encodeManifest(t, m)); err != nil {
		t.Errorf("manifest signed by B naming B: %v", err)
	}
}

func TestManifestSignatureDomain(t *testing.T) {
	key := testKey(t, 1)
	m := testManifest(t, key)
	m.Sig = nil
	unsigned := mustMarshal(t, m)
	for _, domain := range []string{"", "gpunet-capacity-v1\x00", "gpunet-manifest-v1", "gpunet-manifest-v2\x00"} {
		sig, err := key.Sign(append([]byte(domain), unsigned...))
		if err != nil {
			t.Fatal(err)
		}
		m.Sig = sig
		if err := m.Verify(); !errors.Is(err, ErrBadManifest) {
			t.Errorf("signature under domain %q verifies: %v", domain, err)
		}
	}
}

func TestManifestValidation(t *testing.T) {
	key := testKey(t, 1)
	tooMany := make([]Output, MaxOutputs+1)
	for i := range tooMany {
		tooMany[i] = testOutputs()[0]
	}
	dagCID := Link{dagCBORCID([]byte("x"))}
	v0, err := cid.Decode("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]func(*Manifest){
		"version 0":               func(m *Manifest) { m.Version = 0 },
		"version 2":               func(m *Manifest) { m.Version = 2 },
		"task not normalised":     func(m *Manifest) { m.Task.Prompt = "a  quiet harbour at dusk" },
		"no outputs":              func(m *Manifest) { m.Outputs = nil },
		"too many outputs":        func(m *Manifest) { m.Outputs = tooMany },
		"output not raw":          func(m *Manifest) { m.Outputs[0].CID = dagCID },
		"output CIDv0":            func(m *Manifest) { m.Outputs[0].CID = Link{v0} },
		"output size 0":           func(m *Manifest) { m.Outputs[0].Size = 0 },
		"output size over cap":    func(m *Manifest) { m.Outputs[0].Size = MaxBlockBytes + 1 },
		"empty media type":        func(m *Manifest) { m.Outputs[0].MediaType = "" },
		"media type over 64":      func(m *Manifest) { m.Outputs[0].MediaType = strings.Repeat("x", 65) },
		"host not a peer id":      func(m *Manifest) { m.Host = "not-a-peer" },
		"host without inline key": func(m *Manifest) { m.Host = "QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC" },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			m := testManifest(t, key)
			m.Outputs = slices.Clone(m.Outputs)
			mutate(m)
			resign(t, m, key) // a valid signature: only the field check can fail
			if err := m.Verify(); !errors.Is(err, ErrBadManifest) {
				t.Errorf("Verify = %v, want ErrBadManifest", err)
			}
		})
	}
	t.Run("limits accepted", func(t *testing.T) {
		m := testManifest(t, key)
		m.Outputs = make([]Output, MaxOutputs)
		for i := range m.Outputs {
			m.Outputs[i] = Output{CID: Link{RawCID([]byte{byte(i)})}, MediaType: strings.Repeat("x", 64), Size: MaxBlockBytes}
		}
		resign(t, m, key)
		if _, err := DecodeManifest(encodeManifest(t, m)); err != nil {
			t.Errorf("manifest at every limit: %v", err)
		}
	})
}

func TestDecodeManifestRejectsEncodings(t *testing.T) {
	m := testManifest(t, testKey(t, 1))
	canon := encodeManifest(t, m)
	unsortedMode, err := cbor.EncOptions{Sort: cbor.SortNone}.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	unsorted, err := unsortedMode.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string][]byte{
		"empty":         nil,
		"unsorted keys": unsorted,
		"trailing byte": append(slices.Clone(canon), 0),
		"truncated":     canon[:len(canon)-1],
		"oversize":      bytes.Repeat([]byte{0}, MaxManifestBytes+1),
		"a task":        mustEncode(t, m.Task),
		// The signature covers the re-encoding, so only the canonical check
		// can catch a second spelling of the same manifest.
		"non-minimal version": replaceOnce(t, canon, []byte("\x61v\x01"), []byte("\x61v\x18\x01")),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if got, err := DecodeManifest(b); !errors.Is(err, ErrBadManifest) {
				t.Errorf("DecodeManifest = %+v, %v; want ErrBadManifest", got, err)
			}
		})
	}
}

func TestLinkEncoding(t *testing.T) {
	c := RawCID([]byte("hello"))
	b, err := Link{c}.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	// tag 42 (0xd8 0x2a), byte string of 37 bytes (0x58 0x25), 0x00, CID.
	want := append([]byte{0xd8, 0x2a, 0x58, byte(1 + len(c.Bytes())), 0x00}, c.Bytes()...)
	if !bytes.Equal(b, want) {
		t.Fatalf("Link encoding\n got %x\nwant %x", b, want)
	}
	if len(c.Bytes()) != 36 || hex.EncodeToString(c.Bytes()[:4]) != "01551220" {
		t.Errorf("raw CID bytes %x: want 01 55 12 20 + 32-byte digest", c.Bytes())
	}
	var l Link
	if err := l.UnmarshalCBOR(b); err != nil || !l.Equals(c) {
		t.Fatalf("UnmarshalCBOR = %s, %v; want %s", l.Cid, err, c)
	}
	// As a struct field it is the same bytes.
	if fb := mustMarshal(t, struct {
		L Link `cbor:"l"`
	}{Link{c}}); !bytes.Contains(fb, want) {
		t.Errorf("Link as a field encodes as %x", fb)
	}
	if _, err := (Link{}).MarshalCBOR(); err == nil {
		t.Error("an undefined CID encodes")
	}
}

func TestLinkUnmarshalRejects(t *testing.T) {
	c := RawCID([]byte("hello"))
	content := append([]byte{0}, c.Bytes()...)
	tests := map[string][]byte{
		"empty":             nil,
		"untagged bytes":    mustMarshal(t, content),
		"tag 43":            mustMarshal(t, cbor.Tag{Number: 43, Content: content}),
		"no 0x00 prefix":    mustMarshal(t, cbor.Tag{Number: 42, Content: c.Bytes()}),
		"prefix 0x01":       mustMarshal(t, cbor.Tag{Number: 42, Content: append([]byte{1}, c.Bytes()...)}),
		"only the prefix":   mustMarshal(t, cbor.Tag{Number: 42, Content: []byte{0}}),
		"garbage CID":       mustMarshal(t, cbor.Tag{Number: 42, Content: []byte{0, 1, 2, 3}}),
		"CID trailing byte": mustMarshal(t, cbor.Tag{Number: 42, Content: append(slices.Clone(content), 7)}),
		"text content":      mustMarshal(t, cbor.Tag{Number: 42, Content: "\x00abc"}),
		"trailing item":     append(mustMarshal(t, cbor.Tag{Number: 42, Content: content}), 0),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			var l Link
			if err := l.UnmarshalCBOR(b); err == nil {
				t.Errorf("UnmarshalCBOR(%x) = %s, want an error", b, l.Cid)
			}
		})
	}
}

func TestRawCIDAndVerifyBlock(t *testing.T) {
	data := []byte("an output file")
	c := RawCID(data)
	if p := c.Prefix(); p.Version != 1 || p.Codec != cid.Raw || p.MhType != mh.SHA2_256 || p.MhLength != 32 {
		t.Fatalf("RawCID prefix %+v", p)
	}
	if err := VerifyBlock(c, data); err != nil {
		t.Errorf("VerifyBlock: %v", err)
	}
	if err := VerifyBlock(c, append(slices.Clone(data), '!')); !errors.Is(err, ErrBadCID) {
		t.Errorf("VerifyBlock(other data) = %v, want ErrBadCID", err)
	}
	id, err := cid.V1Builder{Codec: cid.Raw, MhType: mh.IDENTITY}.Sum(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyBlock(id, data); !errors.Is(err, ErrBadCID) {
		t.Errorf("VerifyBlock(identity CID) = %v, want ErrBadCID", err)
	}
	sha512, err := cid.V1Builder{Codec: cid.Raw, MhType: mh.SHA2_512}.Sum(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyBlock(sha512, data); !errors.Is(err, ErrBadCID) {
		t.Errorf("VerifyBlock(sha2-512 CID) = %v, want ErrBadCID", err)
	}
}

// TestDecodeManifestFrom: a manifest received from the host it names skips
// the signature check (the channel authenticated the host); from anyone
// else, or from nobody in particular, a bad signature is refused.
func TestDecodeManifestFrom(t *testing.T) {
	key := testKey(t, 1)
	m := testManifest(t, key)
	m.Sig[0] ^= 1
	b := encodeManifest(t, m)
	if _, err := DecodeManifestFrom(b, m.Host); err != nil {
		t.Errorf("from its host: %v", err)
	}
	for _, sender := range []string{"", testID(t, testKey(t, 2)).String()} {
		if _, err := DecodeManifestFrom(b, sender); !errors.Is(err, ErrBadManifest) {
			t.Errorf("from %q: %v, want ErrBadManifest", sender, err)
		}
	}
	if err := m.VerifySignature(); !errors.Is(err, ErrBadManifest) {
		t.Errorf("VerifySignature: %v", err)
	}
}
