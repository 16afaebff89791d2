package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrBadCapacity is wrapped by every capacity record error.
var ErrBadCapacity = errors.New("invalid capacity record")

// GPUInfo describes one device a host lends.
type GPUInfo struct {
	Name       string `cbor:"name" json:"name"`
	MemoryMB   uint64 `cbor:"memory_mb" json:"memory_mb"`
	TempLimitC uint32 `cbor:"temp_limit_c" json:"temp_limit_c"`
	Simulated  bool   `cbor:"simulated" json:"simulated"`
}

// Capacity is the signed record a host puts in the DHT under its own key:
// what it can serve. Load and temperature change too fast for the DHT and
// travel in gossip beacons instead.
type Capacity struct {
	Peer           string    `cbor:"peer" json:"peer"`
	GPUs           []GPUInfo `cbor:"gpus" json:"gpus"`
	Models         []string  `cbor:"models" json:"models"`
	Kernels        []string  `cbor:"kernels" json:"kernels"`
	MaxConcurrency uint32    `cbor:"max_concurrency" json:"max_concurrency"`
	Version        string    `cbor:"version" json:"version"`
	// Issued is Unix milliseconds; a newer record replaces an older one and
	// validators reject records older than CapacityMaxAge.
	Issued uint64 `cbor:"issued" json:"issued"`
	Sig    []byte `cbor:"sig,omitempty" json:"sig,omitempty"`
	// Digests maps a model of Models to the digest of its weights
	// ("sha256:" + 64 hex, as a task's model_digest), for the models the
	// host names by content (since 1.2); omitted when none. A 1.1 node
	// rejects a record with it (its decoder knows no such key).
	Digests map[string]string `cbor:"digests,omitempty" json:"digests,omitempty"`
}

// CapacityKey is the DHT key of id's capacity record.
func CapacityKey(id peer.ID) string { return "/" + CapacityNamespace + "/" + string(id) }

// Sign sets c.Peer from key and signs the record.
func (c *Capacity) Sign(key crypto.PrivKey) ([]byte, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	c.Peer = id.String()
	c.Sig = nil
	unsigned, err := encMode.Marshal(c)
	if err != nil {
		return nil, err
	}
	if c.Sig, err = key.Sign(append([]byte(capacityDomain), unsigned...)); err != nil {
		return nil, fmt.Errorf("signing capacity record: %w", err)
	}
	b, err := encMode.Marshal(c)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxCapacityBytes {
		return nil, fmt.Errorf("%w: %d bytes, cap %d", ErrBadCapacity, len(b), MaxCapacityBytes)
	}
	return b, nil
}

// DecodeCapacity decodes a record and checks its size, shape, signature and
// freshness at now.
func DecodeCapacity(b []byte, now time.Time) (*Capacity, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadCapacity}, a...)...)
	}
	if len(b) > MaxCapacityBytes {
		return nil, bad("%d bytes, cap %d", len(b), MaxCapacityBytes)
	}
	var c Capacity
	if err := Unmarshal(b, &c); err != nil {
		return nil, bad("%v", err)
	}
	if len(c.Models) == 0 || len(c.Models) > 64 || len(c.GPUs) > 64 || len(c.Kernels) > 64 {
		return nil, bad("want 1..64 models, at most 64 GPUs and kernels")
	}
	for _, m := range c.Models {
		if len(m) > MaxModelLen || !modelName.valid(m) {
			return nil, bad("model %q", m)
		}
	}
	for m, d := range c.Digests {
		if !c.Serves(m) || !modelDigestRE.MatchString(d) {
			return nil, bad("digest %.80q of model %.70q: want sha256: and 64 hex digits, of a model it lists", d, m)
		}
	}
	id, err := peer.Decode(c.Peer)
	if err != nil {
		return nil, bad("peer: %v", err)
	}
	issued := time.UnixMilli(int64(c.Issued))
	if now.Sub(issued) > CapacityMaxAge {
		return nil, bad("stale: issued %s", issued.UTC().Format(time.RFC3339))
	}
	if issued.Sub(now) > MaxClockSkew {
		return nil, bad("issued in the future: %s", issued.UTC().Format(time.RFC3339))
	}
	sig := c.Sig
	c.Sig = nil
	unsigned, err := encMode.Marshal(&c)
	if err != nil {
		return nil, bad("%v", err)
	}
	if err := verifySig(id, append([]byte(capacityDomain), unsigned...), sig); err != nil {
		return nil, bad("%v", err)
	}
	c.Sig = sig
	if again, err := encMode.Marshal(&c); err != nil || !bytes.Equal(again, b) {
		return nil, bad("encoding is not canonical")
	}
	return &c, nil
}

// Serves reports whether the record lists model.
func (c *Capacity) Serves(model string) bool {
	for _, m := range c.Models {
		if m == model {
			return true
		}
	}
	return false
}

// CapacityValidator is the DHT record validator (go-libp2p-record's
// Validator) for the CapacityNamespace: a record is valid only when it is
// signed by the peer whose key it sits under, fits MaxCapacityBytes and is
// fresh. Install it with dht.NamespacedValidator(CapacityNamespace, ...).
type CapacityValidator struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (v CapacityValidator) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// Validate implements record.Validator.
func (v CapacityValidator) Validate(key string, value []byte) error {
	ns, rest, ok := strings.Cut(strings.TrimPrefix(key, "/"), "/")
	if !ok || ns != CapacityNamespace {
		return fmt.Errorf("%w: key not in namespace %s", ErrBadCapacity, CapacityNamespace)
	}
	want, err := peer.IDFromBytes([]byte(rest))
	if err != nil {
		return fmt.Errorf("%w: key holds no peer id: %v", ErrBadCapacity, err)
	}
	c, err := DecodeCapacity(value, v.now())
	if err != nil {
		return err
	}
	if c.Peer != want.String() {
		return fmt.Errorf("%w: signed by %s, stored under %s", ErrBadCapacity, c.Peer, want)
	}
	return nil
}

// Select implements record.Validator: the newest valid record wins; ties go
// to the bytewise-smallest so every node picks the same one.
func (v CapacityValidator) Select(key string, values [][]byte) (int, error) {
	best, bestIssued := -1, uint64(0)
	for i, val := range values {
		if v.Validate(key, val) != nil {
			continue
		}
		var c Capacity
		if Unmarshal(val, &c) != nil {
			continue
		}
		if best < 0 || c.Issued > bestIssued || (c.Issued == bestIssued && bytes.Compare(val, values[best]) < 0) {
			best, bestIssued = i, c.Issued
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("%w: no valid record among %d", ErrBadCapacity, len(values))
	}
	return best, nil
}
