package protocol

import (
	"fmt"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// FetchRequest is the single message a client sends on FetchProtocol: the
// TaskCID or ResultCID of a result it wants, or (since 1.2) the CID of one
// raw block, such as a task's input image. For a result the provider
// answers exactly as a host answers a task whose result it holds: one block
// event per output, then a result event (Cached true). For a raw block it
// answers with that one block event and closes the stream. Either way it
// may instead send one error event (not_found, rate_limited, busy).
type FetchRequest struct {
	CID Link `cbor:"cid"`
}

// DecodeFetchRequest decodes a fetch request and checks that it names a
// dag-cbor CIDv1 (a task or a manifest) or a raw CIDv1 with a sha2-256
// multihash (one block).
func DecodeFetchRequest(b []byte) (*FetchRequest, error) {
	if len(b) > MaxRequestBytes {
		return nil, fmt.Errorf("%w: request %d bytes", ErrFrameTooLarge, len(b))
	}
	var r FetchRequest
	if err := Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: decoding fetch request: %v", ErrBadRequest, err)
	}
	if !r.CID.Defined() {
		return nil, fmt.Errorf("%w: fetch request names no CID", ErrBadRequest)
	}
	p := r.CID.Prefix()
	switch {
	case p.Version == 1 && p.Codec == cid.DagCBOR:
	case p.Version == 1 && p.Codec == cid.Raw && p.MhType == mh.SHA2_256:
	default:
		return nil, fmt.Errorf("%w: fetch wants a TaskCID or ResultCID (CIDv1 dag-cbor) or a block's CID (CIDv1 raw, sha2-256), got %s", ErrBadRequest, r.CID)
	}
	return &r, nil
}
