package protocol

import (
	"errors"
	"fmt"
	"slices"
)

// FraudTopic is the GossipSub topic of fraud proofs (since 1.3): the
// evidence that a host signed a wrong result, published by the node that
// caught it and checked by every receiver before it acts or forwards.
const FraudTopic = "/gpunet/fraud/1.0.0"

// Fraud proof caps.
const (
	// MaxFraudProofBytes bounds an encoded fraud proof: a few manifests,
	// each carrying its task (at most MaxTaskBytes) and a handful of output
	// CIDs.
	MaxFraudProofBytes = 48 << 10
	// MaxWitnesses bounds the witness manifests of one proof.
	MaxWitnesses = 4
	// FraudProofVersion is the current version of FraudProof.
	FraudProofVersion = 1
)

// ErrBadProof marks a fraud proof that is malformed or proves nothing.
var ErrBadProof = errors.New("bad fraud proof")

// FraudProof says that the host that signed Accused returned a wrong
// result for its task. It is self-contained: Accused is the host's own
// signed manifest (it names the task and the outputs the host vouched
// for), and Witnesses are the signed manifests of other hosts that ran the
// same task and got different outputs. A receiver checks the signatures and
// then settles it itself: for a kernel whose outputs are exact (ExactKernel)
// re-running the task tells which side is right; otherwise the receiver
// compares the images the manifests name (docs/trust.md).
type FraudProof struct {
	Version   uint64   `cbor:"v"`
	Accused   []byte   `cbor:"accused"`
	Witnesses [][]byte `cbor:"witnesses"`
}

// Proof is a decoded fraud proof whose manifests are all verified.
type Proof struct {
	Accused   *Manifest
	Witnesses []*Manifest
}

// EncodeFraudProof builds a proof from the accused host's manifest and the
// witnesses' manifests (all as encoded and signed by their hosts), and
// checks it as a receiver would.
func EncodeFraudProof(accused []byte, witnesses ...[]byte) ([]byte, error) {
	b, err := Marshal(&FraudProof{Version: FraudProofVersion, Accused: accused, Witnesses: witnesses})
	if err != nil {
		return nil, err
	}
	if _, err := DecodeFraudProof(b); err != nil {
		return nil, err
	}
	return b, nil
}

// DecodeFraudProof decodes a proof and checks everything that needs no
// computation: its size, each manifest's shape and signature, that every
// manifest is for the same task, that the witnesses are distinct hosts other
// than the accused, and that each witness's outputs differ from the
// accused's (a witness that agrees proves nothing).
func DecodeFraudProof(b []byte) (*Proof, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadProof}, a...)...)
	}
	if len(b) > MaxFraudProofBytes {
		return nil, bad("%d bytes, cap %d", len(b), MaxFraudProofBytes)
	}
	var fp FraudProof
	if err := Unmarshal(b, &fp); err != nil {
		return nil, bad("%v", err)
	}
	if fp.Version != FraudProofVersion {
		return nil, bad("version %d, want %d", fp.Version, FraudProofVersion)
	}
	if len(fp.Witnesses) == 0 || len(fp.Witnesses) > MaxWitnesses {
		return nil, bad("%d witnesses, want 1..%d", len(fp.Witnesses), MaxWitnesses)
	}
	accused, err := DecodeManifest(fp.Accused)
	if err != nil {
		return nil, bad("accused manifest: %v", err)
	}
	p := &Proof{Accused: accused}
	hosts := []string{accused.Host}
	for i, w := range fp.Witnesses {
		m, err := DecodeManifest(w)
		if err != nil {
			return nil, bad("witness %d: %v", i, err)
		}
		switch {
		case !m.TaskCID.Equals(accused.TaskCID.Cid):
			return nil, bad("witness %d is for another task", i)
		case slices.Contains(hosts, m.Host):
			return nil, bad("witness %d: host %s appears twice", i, m.Host)
		case SameOutputs(m, accused):
			return nil, bad("witness %d agrees with the accused", i)
		}
		hosts = append(hosts, m.Host)
		p.Witnesses = append(p.Witnesses, m)
	}
	return p, nil
}

// SameOutputs reports whether two manifests name the same output blocks, in
// the same order.
func SameOutputs(a, b *Manifest) bool {
	return slices.EqualFunc(a.Outputs, b.Outputs, func(x, y Output) bool { return x.CID.Equals(y.CID.Cid) })
}

// ExactKernel reports whether the kernel a manifest names makes the same
// bytes for the same task on every host: gpunet's built-in CPU kernels.
// Results of other kernels (GPU generators, whose floating point differs
// across cards and drivers) are compared by how they look, not by bytes.
func ExactKernel(name string) bool {
	switch name {
	case "sketch-v1", "noop-v1":
		return true
	}
	return false
}
