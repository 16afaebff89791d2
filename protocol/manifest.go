package protocol

import (
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrBadManifest is wrapped by every manifest decoding or verification error.
var ErrBadManifest = errors.New("invalid manifest")

// Signing domains keep a signature made for one kind of object from being
// replayed as another.
const (
	manifestDomain = "gpunet-manifest-v1\x00"
	capacityDomain = "gpunet-capacity-v1\x00"
)

// Output is one file a task produced, stored as one raw block.
type Output struct {
	CID       Link   `cbor:"cid" json:"cid"`
	MediaType string `cbor:"media_type" json:"media_type"`
	Size      uint64 `cbor:"size" json:"size"`
}

// Manifest ties a task to its outputs and to the host that made them. Its own
// CID (dag-cbor, sha2-256 over Encode's bytes, signature included) is the
// ResultCID.
type Manifest struct {
	Version uint64   `cbor:"v" json:"v"`
	Task    Task     `cbor:"task" json:"task"`
	TaskCID Link     `cbor:"task_cid" json:"task_cid"`
	Outputs []Output `cbor:"outputs" json:"outputs"`
	// Host is the peer ID (base58) of the host that ran the kernel. Its
	// Ed25519 public key is inlined in the ID, so no key field is needed.
	Host   string `cbor:"host" json:"host"`
	Kernel string `cbor:"kernel" json:"kernel"`
	// Created is when the kernel finished, Unix milliseconds.
	Created uint64 `cbor:"created" json:"created"`
	// Sig signs manifestDomain + the encoding of the manifest with Sig empty.
	Sig []byte `cbor:"sig,omitempty" json:"sig,omitempty"`
}

// ManifestVersion is the current manifest version.
const ManifestVersion = 1

// NewManifest builds and signs a manifest for task (normalised) and outputs.
func NewManifest(task Task, outputs []Output, kernel string, createdMs uint64, key crypto.PrivKey) (*Manifest, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("deriving host id: %w", err)
	}
	return NewManifestBy(id.String(), task, outputs, kernel, createdMs, key)
}

// NewManifestBy is NewManifest for a host that has its peer ID as a string
// at hand (host, which must be key's): a host signing result after result
// need not derive and encode it each time.
func NewManifestBy(host string, task Task, outputs []Output, kernel string, createdMs uint64, key crypto.PrivKey) (*Manifest, error) {
	tc, err := task.CID()
	if err != nil {
		return nil, err
	}
	m := &Manifest{Version: ManifestVersion, Task: task, TaskCID: Link{tc}, Outputs: outputs,
		Host: host, Kernel: kernel, Created: createdMs}
	unsigned, err := m.unsignedBytes()
	if err != nil {
		return nil, err
	}
	m.Sig, err = key.Sign(append([]byte(manifestDomain), unsigned...))
	if err != nil {
		return nil, fmt.Errorf("signing manifest: %w", err)
	}
	return m, nil
}

func (m *Manifest) unsignedBytes() ([]byte, error) {
	c := *m
	c.Sig = nil
	return encMode.Marshal(&c)
}

// Encode returns the manifest's DAG-CBOR encoding.
func (m *Manifest) Encode() ([]byte, error) { return encMode.Marshal(m) }

// CID returns the ResultCID of an encoded manifest.
func ManifestCID(encoded []byte) cid.Cid { return dagCBORCID(encoded) }

// DecodeManifest decodes and fully verifies an encoded manifest: size, shape,
// the task, the TaskCID, the outputs and the host's signature.
func DecodeManifest(b []byte) (*Manifest, error) { return DecodeManifestFrom(b, "") }

// DecodeManifestFrom decodes and verifies an encoded manifest as
// DecodeManifest does, except the signature when the manifest names sender
// as its host: a result received straight from its host over a channel that
// authenticated the host (Noise or TLS) needs no signature to know who made
// it, so a client checks the signature only before it hands the manifest to
// anyone else (serving it, or putting it in a fraud proof). Any other
// sender's manifest has its signature checked. sender is a peer ID in its
// text form, or empty.
func DecodeManifestFrom(b []byte, sender string) (*Manifest, error) {
	if len(b) > MaxManifestBytes {
		return nil, fmt.Errorf("%w: %d bytes, cap %d", ErrBadManifest, len(b), MaxManifestBytes)
	}
	var m Manifest
	if err := Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	if err := m.verifyFields(); err != nil {
		return nil, err
	}
	if sender == "" || m.Host != sender {
		if err := m.VerifySignature(); err != nil {
			return nil, err
		}
	}
	if again, err := m.Encode(); err != nil || string(again) != string(b) {
		return nil, fmt.Errorf("%w: encoding is not canonical", ErrBadManifest)
	}
	return &m, nil
}

// Verify checks the manifest's fields and signature.
func (m *Manifest) Verify() error {
	if err := m.verifyFields(); err != nil {
		return err
	}
	return m.VerifySignature()
}

// verifyFields checks everything but the signature.
func (m *Manifest) verifyFields() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadManifest}, a...)...)
	}
	if m.Version != ManifestVersion {
		return bad("version %d, want %d", m.Version, ManifestVersion)
	}
	if err := m.Task.Validate(); err != nil {
		return bad("task: %v", err)
	}
	tc, err := m.Task.CID()
	if err != nil || !m.TaskCID.Defined() || !tc.Equals(m.TaskCID.Cid) {
		return bad("task_cid does not match task")
	}
	if len(m.Outputs) == 0 || len(m.Outputs) > MaxOutputs {
		return bad("%d outputs, want 1..%d", len(m.Outputs), MaxOutputs)
	}
	for i, o := range m.Outputs {
		if !o.CID.Defined() {
			return bad("output %d has no CID", i)
		}
		p := o.CID.Prefix()
		if p.Version != 1 || p.Codec != cid.Raw {
			return bad("output %d: want a CIDv1 raw block", i)
		}
		if o.Size == 0 || o.Size > MaxBlockBytes {
			return bad("output %d: size %d outside 1..%d", i, o.Size, MaxBlockBytes)
		}
		if o.MediaType == "" || len(o.MediaType) > 64 {
			return bad("output %d: media type", i)
		}
	}
	if _, err := peer.Decode(m.Host); err != nil {
		return bad("host: %v", err)
	}
	if len(m.Sig) == 0 || len(m.Sig) > 1024 {
		return bad("missing signature")
	}
	return nil
}

// VerifySignature checks the host's signature of the manifest.
func (m *Manifest) VerifySignature() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadManifest}, a...)...)
	}
	id, err := peer.Decode(m.Host)
	if err != nil {
		return bad("host: %v", err)
	}
	if len(m.Sig) == 0 || len(m.Sig) > 1024 {
		return bad("missing signature")
	}
	unsigned, err := m.unsignedBytes()
	if err != nil {
		return bad("%v", err)
	}
	if err := verifySig(id, append([]byte(manifestDomain), unsigned...), m.Sig); err != nil {
		return bad("%v", err)
	}
	return nil
}

// verifySig checks sig over msg with the public key inlined in id.
func verifySig(id peer.ID, msg, sig []byte) error {
	pk, err := id.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("peer id carries no public key: %w", err)
	}
	ok, err := pk.Verify(msg, sig)
	if err != nil {
		return fmt.Errorf("checking signature: %w", err)
	}
	if !ok {
		return errors.New("bad signature")
	}
	return nil
}
