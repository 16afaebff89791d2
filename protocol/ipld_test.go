package protocol

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/ipld/go-ipld-prime/codec/dagcbor"
	"github.com/ipld/go-ipld-prime/datamodel"
	cidlink "github.com/ipld/go-ipld-prime/linking/cid"
	"github.com/ipld/go-ipld-prime/node/basicnode"
)

// ipldRoundTrip decodes b with go-ipld-prime's DAG-CBOR codec (the reference
// implementation) and encodes the result again. DAG-CBOR has exactly one
// encoding per data model value, so equal bytes mean b is canonical.
func ipldRoundTrip(tb testing.TB, b []byte) (datamodel.Node, []byte) {
	tb.Helper()
	nb := basicnode.Prototype.Any.NewBuilder()
	if err := dagcbor.Decode(nb, bytes.NewReader(b)); err != nil {
		tb.Fatalf("go-ipld-prime cannot decode %x: %v", b, err)
	}
	n := nb.Build()
	var out bytes.Buffer
	if err := dagcbor.Encode(n, &out); err != nil {
		tb.Fatalf("go-ipld-prime cannot encode: %v", err)
	}
	return n, out.Bytes()
}

func TestEncodingsMatchGoIPLDPrime(t *testing.T) {
	key := testKey(t, 1)
	params := map[string]string{}
	for i := range MaxParams {
		params[fmt.Sprintf("%s%d", strings.Repeat("k", i%5+1), i)] = strings.Repeat("v", i*16)
	}
	encodings := map[string][]byte{
		"example task": mustEncode(t, mustNormalize(t, exampleTask())),
		"task with params and unicode": mustEncode(t, mustNormalize(t, Task{
			Prompt: "静かな港 — ein ruhiger Hafen", NegativePrompt: "boats", Model: "org/model:v2",
			Seed: MaxSeed, Steps: 150, Width: 2048, Height: 64, Params: params,
		})),
		"long prompt (2-byte string length)": mustEncode(t, mustNormalize(t, Task{Prompt: strings.Repeat("x", 300), Seed: 1 << 32})),
		"manifest":                           encodeManifest(t, testManifest(t, key)),
		"capacity":                           signCapacity(t, testCapacity(capIssued), key),
		"capacity without GPUs":              signCapacity(t, Capacity{Models: []string{"m"}, Issued: 1}, key),
		"task request":                       mustMarshal(t, TaskRequest{Task: mustNormalize(t, exampleTask())}),
		"progress event":                     mustMarshal(t, Event{Type: EventProgress, Step: 3, Total: 20, EtaMs: 70000}),
		"block event":                        mustMarshal(t, Event{Type: EventBlock, Data: make([]byte, 70000)}),
		"error event":                        mustMarshal(t, ErrorEvent(CodeBusy, "full", 0)),
		"beacon":                             encodeBeacon(t, testBeacon(t)),
		"fetch request":                      mustMarshal(t, FetchRequest{CID: testManifest(t, key).TaskCID}),
	}
	for name, b := range encodings {
		t.Run(name, func(t *testing.T) {
			_, again := ipldRoundTrip(t, b)
			if !bytes.Equal(again, b) {
				t.Errorf("go-ipld-prime re-encodes differently\n ours %x\nipld  %x", b, again)
			}
		})
	}
}

// The links in a manifest are real IPLD links that IPFS tools can follow.
func TestManifestLinksAreIPLDLinks(t *testing.T) {
	m := testManifest(t, testKey(t, 1))
	n, _ := ipldRoundTrip(t, encodeManifest(t, m))
	tc, err := n.LookupByString("task_cid")
	if err != nil {
		t.Fatal(err)
	}
	l, err := tc.AsLink()
	if err != nil {
		t.Fatalf("task_cid is a %s, want a link", tc.Kind())
	}
	if got := l.(cidlink.Link).Cid; !got.Equals(m.TaskCID.Cid) {
		t.Errorf("task_cid link %s, want %s", got, m.TaskCID)
	}
	outs, err := n.LookupByString("outputs")
	if err != nil {
		t.Fatal(err)
	}
	first, err := outs.LookupByIndex(0)
	if err != nil {
		t.Fatal(err)
	}
	oc, err := first.LookupByString("cid")
	if err != nil {
		t.Fatal(err)
	}
	if l, err := oc.AsLink(); err != nil || !l.(cidlink.Link).Cid.Equals(m.Outputs[0].CID.Cid) {
		t.Errorf("outputs[0].cid = %v, %v; want a link to %s", l, err, m.Outputs[0].CID)
	}
}

// TestSumCIDMatchesMultihash checks the hand-written sha2-256 multihash of
// sumCID against go-multihash's own over inputs of many lengths, for both
// codecs gpunet uses: a CID differing by one byte would split the cache.
func TestSumCIDMatchesMultihash(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		b := make([]byte, n*n%5000)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		for _, codec := range []uint64{cid.Raw, cid.DagCBOR} {
			h, err := mh.Sum(b, mh.SHA2_256, -1)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := sumCID(codec, b), cid.NewCidV1(codec, h); !got.Equals(want) {
				t.Fatalf("%d bytes, codec 0x%x: %s, go-multihash makes %s", len(b), codec, got, want)
			}
		}
	}
}

// TestLinkEncodingMatchesGeneric checks Link's hand-written encoding
// against the generic encoder's tag 42 over 0x00 and the CID's bytes, for
// CIDs whose byte strings need each length of head (identity multihashes
// make them as long as wanted).
func TestLinkEncodingMatchesGeneric(t *testing.T) {
	for _, size := range []int{1, 10, 19, 20, 21, 22, 30, 249, 250, 251, 252, 300, 65528, 65529, 65530, 70000} {
		h, err := mh.Sum(bytes.Repeat([]byte{7}, size), mh.IDENTITY, -1)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []cid.Cid{cid.NewCidV1(cid.Raw, h), RawCID([]byte{byte(size)})} {
			got, err := Link{c}.MarshalCBOR()
			if err != nil {
				t.Fatal(err)
			}
			want, err := encMode.Marshal(cbor.Tag{Number: cidTag, Content: append([]byte{0}, c.Bytes()...)})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("CID of %d bytes: % x, want % x", len(c.Bytes()), got[:min(len(got), 16)], want[:min(len(want), 16)])
			}
			var back Link
			if err := back.UnmarshalCBOR(got); err != nil || !back.Equals(c) {
				t.Fatalf("CID of %d bytes does not decode back: %v", len(c.Bytes()), err)
			}
		}
	}
	if _, err := (Link{}).MarshalCBOR(); err == nil {
		t.Error("an undefined CID encoded")
	}
}
