package protocol

import (
	"fmt"

	"github.com/ipfs/go-cid"
)

// FetchRequest is the single message a client sends on FetchProtocol: the
// TaskCID or ResultCID of a result it wants. The provider answers exactly
// as a host answers a task whose result it holds: one block event per
// output, then a result event (Cached true); or one error event
// (not_found, rate_limited, busy).
type FetchRequest struct {
	CID Link `cbor:"cid"`
}

// DecodeFetchRequest decodes a fetch request and checks that it names a
// dag-cbor CIDv1 (a task or a manifest).
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
	if p := r.CID.Prefix(); p.Version != 1 || p.Codec != cid.DagCBOR {
		return nil, fmt.Errorf("%w: fetch wants a TaskCID or ResultCID (CIDv1 dag-cbor), got %s", ErrBadRequest, r.CID)
	}
	return &r, nil
}
