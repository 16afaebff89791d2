package protocol

import (
	"errors"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

// testDescriptors returns n descriptors of distinct peers, each with an
// address.
func testDescriptors(tb testing.TB, n int) []Descriptor {
	tb.Helper()
	a, err := ma.NewMultiaddr("/ip4/127.0.0.1/tcp/4001")
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]Descriptor, n)
	for i := range out {
		out[i] = Descriptor{Peer: testID(tb, testKey(tb, byte(10+i))).String(), Addrs: [][]byte{a.Bytes()}, Age: uint32(i), CapMilli: 500}
	}
	return out
}

func TestProbeReplyRoundTrip(t *testing.T) {
	b := testBeacon(t)
	enc, err := Marshal(ProbeReply{Beacon: encodeBeacon(t, b), Peers: testDescriptors(t, 2)})
	if err != nil {
		t.Fatal(err)
	}
	r, bc, err := DecodeProbeReply(enc, b.Peer, beaconNow)
	if err != nil {
		t.Fatal(err)
	}
	if bc.Peer != b.Peer || bc.Slots != b.Slots || len(r.Peers) != 2 || r.Peers[1].Age != 1 {
		t.Fatalf("round trip: %+v %+v", r, bc)
	}
	// The beacon must be the sender's own: a host cannot answer for another.
	other := testID(t, testKey(t, 2)).String()
	if _, _, err := DecodeProbeReply(enc, other, beaconNow); !errors.Is(err, ErrBadSample) {
		t.Fatalf("a beacon of another peer: %v", err)
	}
	// A stale beacon is refused as the beacon decoder refuses it.
	if _, _, err := DecodeProbeReply(enc, b.Peer, beaconNow.Add(2*BeaconMaxAge)); !errors.Is(err, ErrStaleBeacon) {
		t.Fatalf("a stale beacon: %v", err)
	}
}

func TestShuffleLimits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peers []Descriptor
		ok    bool
	}{
		{"full", testDescriptors(t, MaxDescriptors), true},
		{"one over", testDescriptors(t, MaxDescriptors+1), false},
		{"twice", append(testDescriptors(t, 1), testDescriptors(t, 1)...), false},
		{"bad peer", []Descriptor{{Peer: "QmNot"}}, false},
		{"too many addresses", []Descriptor{{Peer: testDescriptors(t, 1)[0].Peer, Addrs: make([][]byte, MaxDescriptorAddrs+1)}}, false},
		{"garbage address", []Descriptor{{Peer: testDescriptors(t, 1)[0].Peer, Addrs: [][]byte{{0x04, 1}}}}, false},
	} {
		enc, err := Marshal(Shuffle{Peers: tc.peers})
		if err != nil {
			t.Fatal(err)
		}
		_, err = DecodeShuffle(enc)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadSample) {
			t.Errorf("%s: %v does not wrap ErrBadSample", tc.name, err)
		}
	}
}
