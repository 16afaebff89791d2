package protocol

import (
	"errors"
	"slices"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

func TestFetchRequestRoundTrip(t *testing.T) {
	m := testManifest(t, testKey(t, 1))
	for name, c := range map[string]cid.Cid{
		"TaskCID":   m.TaskCID.Cid,
		"ResultCID": ManifestCID(encodeManifest(t, m)),
		"block CID": RawCID([]byte("an input image")),
	} {
		t.Run(name, func(t *testing.T) {
			b := mustMarshal(t, FetchRequest{CID: Link{c}})
			if err := checkDAGCBOR(b); err != nil {
				t.Fatalf("not canonical: %v", err)
			}
			// {"cid": tag 42 over 0x00 + CID}
			want := append([]byte{0xa1, 0x63, 'c', 'i', 'd', 0xd8, 0x2a, 0x58, byte(1 + len(c.Bytes())), 0x00}, c.Bytes()...)
			if !slices.Equal(b, want) {
				t.Errorf("encoding\n got %x\nwant %x", b, want)
			}
			r, err := DecodeFetchRequest(b)
			if err != nil {
				t.Fatalf("DecodeFetchRequest: %v", err)
			}
			if !r.CID.Equals(c) {
				t.Errorf("decoded %s, want %s", r.CID, c)
			}
		})
	}
}

func TestDecodeFetchRequestRejects(t *testing.T) {
	good := mustMarshal(t, FetchRequest{CID: Link{dagCBORCID([]byte("x"))}})
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"oversize", make([]byte, MaxRequestBytes+1), ErrFrameTooLarge},
		{"empty", nil, ErrBadRequest},
		{"no cid", []byte{0xa0}, ErrBadRequest},
		{"null cid", []byte("\xa1\x63cid\xf6"), ErrBadRequest},
		{"raw block CID, not sha2-256", mustMarshal(t, FetchRequest{CID: Link{mustRawIdentityCID(t)}}), ErrBadRequest},
		{"CIDv1 dag-pb", mustMarshal(t, FetchRequest{CID: Link{cid.NewCidV1(cid.DagProtobuf, RawCID([]byte("x")).Hash())}}), ErrBadRequest},
		{"CIDv0", mustMarshal(t, FetchRequest{CID: Link{mustCIDv0(t)}}), ErrBadRequest},
		{"untagged CID bytes", mustMarshal(t, map[string]any{"cid": append([]byte{0}, dagCBORCID([]byte("x")).Bytes()...)}), ErrBadRequest},
		{"CID as text", mustMarshal(t, map[string]any{"cid": dagCBORCID([]byte("x")).String()}), ErrBadRequest},
		{"wrong tag", mustMarshal(t, map[string]any{"cid": cbor.Tag{Number: 43, Content: append([]byte{0}, dagCBORCID([]byte("x")).Bytes()...)}}), ErrBadRequest},
		{"unknown field", mustMarshal(t, map[string]any{"cid": Link{dagCBORCID([]byte("x"))}, "offset": 1}), ErrBadRequest},
		{"trailing byte", append(slices.Clone(good), 0), ErrBadRequest},
		{"a task request", mustMarshal(t, TaskRequest{Task: mustNormalize(t, exampleTask())}), ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r, err := DecodeFetchRequest(tt.b); !errors.Is(err, tt.want) {
				t.Errorf("DecodeFetchRequest = %+v, %v; want %v", r, err, tt.want)
			}
		})
	}
}

// mustRawIdentityCID is a raw CIDv1 with an identity multihash: a block
// gpunet never makes, which a provider must not be asked to hash.
func mustRawIdentityCID(t *testing.T) cid.Cid {
	t.Helper()
	h, err := mh.Sum([]byte("x"), mh.IDENTITY, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.Raw, h)
}
