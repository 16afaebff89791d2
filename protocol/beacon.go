package protocol

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// MaxBeaconBytes bounds one encoded beacon. A beacon for a host with a
// handful of models is about 200 bytes.
const MaxBeaconBytes = 1 << 10

// Beacon timing.
const (
	// BeaconMaxAge: older beacons are ignored, so a view never trusts load
	// or heat figures staler than this.
	BeaconMaxAge = 30 * time.Second
	// BeaconMinInterval: a peer publishing faster than this is flooding;
	// the extra beacons are dropped.
	BeaconMinInterval = 100 * time.Millisecond
)

// ErrBadBeacon is wrapped by every beacon decoding error; ErrStaleBeacon by
// those about a beacon that is well formed but too old (or from the future):
// gossip ignores those rather than punishing the peer that relayed them.
var (
	ErrBadBeacon   = errors.New("invalid beacon")
	ErrStaleBeacon = fmt.Errorf("%w: stale", ErrBadBeacon)
)

// Beacon is a host's load and heat, published on BeaconTopic every couple
// of seconds and on significant change. Temperatures are in tenths of a
// degree Celsius and ratios in per mille, so the encoding has no floats.
//
// Beacons are not signed in a field of their own: GossipSub's strict
// signing signs every message with the publisher's key, and validators
// require Peer to equal the message's signed author.
type Beacon struct {
	Peer string `cbor:"peer"`
	// Seq increases with every beacon of a peer (it starts at the Unix time
	// in milliseconds of the host's start, so a restart does not go back);
	// a beacon with a Seq not above the last one seen is a replay.
	Seq    uint64   `cbor:"seq"`
	Issued uint64   `cbor:"issued"` // Unix ms
	Models []string `cbor:"models"`
	// Load.
	Slots     uint32 `cbor:"slots"`
	Busy      uint32 `cbor:"busy"`
	Queue     uint32 `cbor:"queue"`
	Accepting bool   `cbor:"accepting"`
	// QueueMax is how many tasks the host's queue holds (0: not said), so
	// that a client counting its own placements since this beacon knows
	// when the host is full without being refused.
	QueueMax uint32 `cbor:"queue_max,omitempty"`
	// ServiceMs is the recent mean service time per model at full clock.
	ServiceMs map[string]uint32 `cbor:"service_ms,omitempty"`
	// Heat.
	TempDC     uint32 `cbor:"temp_dc"`     // current GPU temperature
	SlowdownDC uint32 `cbor:"slowdown_dc"` // hardware slowdown temperature
	LimitDC    uint32 `cbor:"limit_dc"`    // the owner's limit (≤ slowdown)
	UtilPm     uint32 `cbor:"util_pm"`
	SpeedPm    uint32 `cbor:"speed_pm"` // clock factor: 1000 full, ≤500 throttled
	Throttled  bool   `cbor:"throttled"`
	FreeMemMB  uint64 `cbor:"free_mem_mb"`
	// GPU names the host's GPU for people (dashboards), at most
	// MaxGPUNameBytes of printable text; placement never reads it.
	GPU string `cbor:"gpu,omitempty"`
	// HeatDC is the host's prediction of how much warmer its GPU will be
	// after one more reference task, queued behind its current work, has
	// run for a long time (three mean service times); 0 when the host
	// cannot predict it.
	HeatDC uint32 `cbor:"heat_dc,omitempty"`
	// Inflight lists the tasks the host is running or has queued, each as
	// its TaskKey (8 bytes), at most MaxBeaconInflight: a client with an
	// identical task joins it there at no cost to the GPU.
	Inflight [][]byte `cbor:"inflight,omitempty"`
	// Reach is whether the host is reachable directly from the Internet,
	// as its AutoNAT says (since 1.2): ReachPublic, ReachPrivate (behind a
	// NAT: reached through a relay until a direct connection is made), or
	// empty while the host does not know.
	Reach string `cbor:"reach,omitempty"`
	// Digests maps a model of Models to the DigestKey (16 hex digits) of
	// the weights the host serves it with, for the models it names by
	// content (since 1.2); omitted when none.
	Digests map[string]string `cbor:"digests,omitempty"`
}

var digestKeyRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// Beacon reachability values.
const (
	ReachPublic  = "public"
	ReachPrivate = "private"
)

// MaxGPUNameBytes bounds a beacon's GPU name.
const MaxGPUNameBytes = 64

// MaxBeaconInflight bounds a beacon's Inflight list.
const MaxBeaconInflight = 32

// TaskKeyLen is the length of a TaskKey.
const TaskKeyLen = 8

// TaskKey is a short name for a TaskCID in beacons: the first 8 bytes of
// its sha2-256 digest. A collision only sends a task to a host that then
// runs it normally, so 64 bits are plenty.
func TaskKey(taskCID cid.Cid) []byte {
	d, err := mh.Decode(taskCID.Hash())
	if err != nil || len(d.Digest) < TaskKeyLen {
		return nil
	}
	return append([]byte(nil), d.Digest[:TaskKeyLen]...)
}

// Encode returns the beacon's DAG-CBOR encoding.
func (b *Beacon) Encode() ([]byte, error) {
	out, err := encMode.Marshal(b)
	if err != nil {
		return nil, err
	}
	if len(out) > MaxBeaconBytes {
		return nil, fmt.Errorf("%w: %d bytes, cap %d", ErrBadBeacon, len(out), MaxBeaconBytes)
	}
	return out, nil
}

// DecodeBeacon decodes a beacon and checks its shape and freshness at now.
// Replay and rate checks need per-peer state and are the view's job.
func DecodeBeacon(data []byte, now time.Time) (*Beacon, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadBeacon}, a...)...)
	}
	if len(data) > MaxBeaconBytes {
		return nil, bad("%d bytes, cap %d", len(data), MaxBeaconBytes)
	}
	var b Beacon
	// Unknown keys are ignored: beacons are advisory, and a field added by a
	// newer host must not make older nodes reject it and penalise its
	// relays. A change old nodes must not misread gets a new topic.
	if err := unmarshalWith(lenientDecMode, data, &b); err != nil {
		return nil, bad("%v", err)
	}
	if b.Peer == "" || len(b.Peer) > 128 {
		return nil, bad("peer %q", b.Peer)
	}
	if len(b.Models) == 0 || len(b.Models) > 16 || len(b.ServiceMs) > 16 {
		return nil, bad("want 1..16 models")
	}
	for _, m := range b.Models {
		if len(m) > MaxModelLen || !modelName.valid(m) {
			return nil, bad("model %q", m)
		}
	}
	for m := range b.ServiceMs {
		if len(m) > MaxModelLen || !modelName.valid(m) {
			return nil, bad("service time for model %q", m)
		}
	}
	switch {
	case len(b.GPU) > MaxGPUNameBytes || ValidSubmitter(b.GPU) != nil:
		return nil, bad("gpu name %q", b.GPU)
	case b.Slots == 0 || b.Slots > 1024 || b.Busy > b.Slots || b.Queue > 1<<16 || b.QueueMax > 1<<16:
		return nil, bad("load %d/%d busy, %d queued of %d", b.Busy, b.Slots, b.Queue, b.QueueMax)
	case b.TempDC > 2000 || b.LimitDC > 2000 || b.SlowdownDC > 2000 || b.HeatDC > 2000:
		return nil, bad("temperature beyond 200 °C")
	case b.UtilPm > 1000 || b.SpeedPm > 1000:
		return nil, bad("ratio beyond 1000 per mille")
	case len(b.Inflight) > MaxBeaconInflight:
		return nil, bad("%d in-flight tasks listed, at most %d", len(b.Inflight), MaxBeaconInflight)
	case b.Reach != "" && b.Reach != ReachPublic && b.Reach != ReachPrivate:
		return nil, bad("reach %.20q, want public or private", b.Reach)
	case len(b.Digests) > len(b.Models):
		return nil, bad("%d model digests for %d models", len(b.Digests), len(b.Models))
	}
	for m, k := range b.Digests {
		if !slices.Contains(b.Models, m) || !digestKeyRE.MatchString(k) {
			return nil, bad("digest %.20q of model %.70q: want 16 hex digits of a model it lists", k, m)
		}
	}
	for _, k := range b.Inflight {
		if len(k) != TaskKeyLen {
			return nil, bad("in-flight task key of %d bytes, want %d", len(k), TaskKeyLen)
		}
	}
	issued := time.UnixMilli(int64(b.Issued))
	if now.Sub(issued) > BeaconMaxAge {
		return nil, fmt.Errorf("%w: issued %s ago", ErrStaleBeacon, now.Sub(issued).Round(time.Millisecond))
	}
	if issued.Sub(now) > MaxClockSkew {
		return nil, fmt.Errorf("%w: issued %s in the future", ErrStaleBeacon, issued.Sub(now).Round(time.Second))
	}
	return &b, nil
}

// MaxBeaconShards bounds how many shards a swarm's beacons may be split
// into.
const MaxBeaconShards = 1024

// BeaconShardTopic is the GossipSub topic of shard i of k: BeaconTopic
// itself when k is 1 (no sharding), else BeaconTopic + "/k/i". A swarm
// splits its beacons into k shards so that a node hears only the shards it
// subscribes to, not every host.
func BeaconShardTopic(k, i int) string {
	if k <= 1 {
		return BeaconTopic
	}
	return fmt.Sprintf("%s/%d/%d", BeaconTopic, k, i)
}

// BeaconShard is the shard, 0 … k−1, whose topic the peer with this ID (in
// its text form) publishes its beacons on: the first 8 bytes of the
// sha2-256 of the ID, big-endian, modulo k.
func BeaconShard(peerID string, k int) int {
	if k <= 1 {
		return 0
	}
	sum := sha256.Sum256([]byte(peerID))
	return int(binary.BigEndian.Uint64(sum[:8]) % uint64(k))
}
