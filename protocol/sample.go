package protocol

import (
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Load information by probing (since 1.4; docs/protocol.md, "Probes, idle
// notices and peer sampling"). A swarm too large for every node to hear
// every beacon runs with probes instead: a client asks a few hosts for
// their beacon as it is now, hosts tell recent probers when a slot comes
// free, and every node keeps a small random sample of the hosts by a
// Cyclon shuffle. None of these costs a node bytes in proportion to the
// swarm.
const (
	// ProbeProtocol: a client sends one ProbeRequest; the host answers with
	// one ProbeReply and closes.
	ProbeProtocol = "/gpunet/probe/1.0.0"
	// IdleProtocol: a host sends one ProbeReply (an idle notice, with no
	// peers) to a client that probed it, and closes; nothing comes back.
	IdleProtocol = "/gpunet/idle/1.0.0"
	// SampleProtocol: one Cyclon shuffle. The initiator sends a Shuffle,
	// the partner answers with a Shuffle and closes.
	SampleProtocol = "/gpunet/sample/1.0.0"
)

// Probe caps.
const (
	// MaxSampleBytes bounds one frame on the probe, idle and sample
	// protocols: a beacon (at most MaxBeaconBytes) plus MaxDescriptors
	// descriptors.
	MaxSampleBytes = 16 << 10
	// MaxDescriptors bounds the descriptors of one message.
	MaxDescriptors = 16
	// MaxDescriptorAddrs bounds the addresses of one descriptor.
	MaxDescriptorAddrs = 4
	// MaxAddrBytes bounds one binary multiaddr of a descriptor.
	MaxAddrBytes = 256
	// SampleTimeout bounds one exchange on the probe, idle and sample
	// protocols, from opening the stream to the last byte.
	SampleTimeout = 5 * time.Second
)

// ErrBadSample is wrapped by every error decoding a probe, idle or sample
// message.
var ErrBadSample = errors.New("invalid sampling message")

// Descriptor is a host as a peer-sampling view knows it: who it is, where
// to reach it and how much work it can do, without its load. It is the
// word of whoever sent it; a node checks it by probing the host.
type Descriptor struct {
	Peer string `cbor:"peer"`
	// Addrs are the host's addresses as binary multiaddrs.
	Addrs [][]byte `cbor:"addrs,omitempty"`
	// Age counts the shuffle periods since the host itself issued the
	// descriptor (Cyclon's age).
	Age uint32 `cbor:"age"`
	// CapMilli is the host's nominal throughput at full clock in
	// thousandths of a task per second: slots × 10⁶ / its mean service
	// time in ms. 0: unknown.
	CapMilli uint32 `cbor:"cap_milli"`
}

// ProbeRequest is what a client sends on ProbeProtocol.
type ProbeRequest struct {
	// Notify asks the host to send this client idle notices
	// (IdleProtocol) when a slot comes free with nobody queued.
	Notify bool `cbor:"notify"`
}

// ProbeReply is a host's answer to a probe and, with no peers, the body of
// an idle notice.
type ProbeReply struct {
	// Beacon is the host's beacon as it is now, in its usual encoding. The
	// secure channel authenticates the host, so a reply carries no
	// signature of its own; its Peer must be the remote peer.
	Beacon []byte `cbor:"beacon"`
	// Peers are descriptors from the host's own view, for the client's.
	Peers []Descriptor `cbor:"peers,omitempty"`
}

// Shuffle is one half of a Cyclon exchange on SampleProtocol.
type Shuffle struct {
	Peers []Descriptor `cbor:"peers"`
}

func badSample(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadSample}, a...)...)
}

// DecodeProbeRequest decodes a probe request.
func DecodeProbeRequest(b []byte) (*ProbeRequest, error) {
	if len(b) > MaxSampleBytes {
		return nil, badSample("%d bytes, cap %d", len(b), MaxSampleBytes)
	}
	var r ProbeRequest
	if err := unmarshalWith(lenientDecMode, b, &r); err != nil {
		return nil, badSample("%v", err)
	}
	return &r, nil
}

// DecodeProbeReply decodes a probe reply or idle notice from host from,
// checking the beacon at now (DecodeBeacon) and that it is from's own.
func DecodeProbeReply(b []byte, from string, now time.Time) (*ProbeReply, *Beacon, error) {
	if len(b) > MaxSampleBytes {
		return nil, nil, badSample("%d bytes, cap %d", len(b), MaxSampleBytes)
	}
	var r ProbeReply
	if err := unmarshalWith(lenientDecMode, b, &r); err != nil {
		return nil, nil, badSample("%v", err)
	}
	bc, err := DecodeBeacon(r.Beacon, now)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadSample, err)
	}
	if bc.Peer != from {
		return nil, nil, badSample("beacon of %.60q from %.60q", bc.Peer, from)
	}
	if err := checkDescriptors(r.Peers); err != nil {
		return nil, nil, err
	}
	return &r, bc, nil
}

// DecodeShuffle decodes one half of a shuffle.
func DecodeShuffle(b []byte) (*Shuffle, error) {
	if len(b) > MaxSampleBytes {
		return nil, badSample("%d bytes, cap %d", len(b), MaxSampleBytes)
	}
	var s Shuffle
	if err := unmarshalWith(lenientDecMode, b, &s); err != nil {
		return nil, badSample("%v", err)
	}
	if err := checkDescriptors(s.Peers); err != nil {
		return nil, err
	}
	return &s, nil
}

// checkDescriptors checks what a node can without asking the hosts: the
// count, that each peer ID and address parses, and that no peer is listed
// twice.
func checkDescriptors(ds []Descriptor) error {
	if len(ds) > MaxDescriptors {
		return badSample("%d descriptors, at most %d", len(ds), MaxDescriptors)
	}
	seen := make(map[string]bool, len(ds))
	for _, d := range ds {
		if _, err := peer.Decode(d.Peer); err != nil || len(d.Peer) > 128 {
			return badSample("descriptor peer %.60q", d.Peer)
		}
		if seen[d.Peer] {
			return badSample("peer %.60q listed twice", d.Peer)
		}
		seen[d.Peer] = true
		if len(d.Addrs) > MaxDescriptorAddrs {
			return badSample("%d addresses for one peer, at most %d", len(d.Addrs), MaxDescriptorAddrs)
		}
		for _, a := range d.Addrs {
			if len(a) > MaxAddrBytes {
				return badSample("address of %d bytes, cap %d", len(a), MaxAddrBytes)
			}
			if _, err := ma.NewMultiaddrBytes(a); err != nil {
				return badSample("address: %v", err)
			}
		}
	}
	return nil
}
