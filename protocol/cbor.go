package protocol

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// encMode writes DAG-CBOR: map keys sorted length-first then bytewise, no
// indefinite lengths, floats never shrunk (gpunet messages carry no floats in
// canonical data, and DAG-CBOR requires 64-bit floats anyway).
var encMode = func() cbor.EncMode {
	em, err := cbor.EncOptions{
		Sort:          cbor.SortLengthFirst,
		ShortestFloat: cbor.ShortestFloatNone,
		IndefLength:   cbor.IndefLengthForbidden,
		NaNConvert:    cbor.NaNConvertReject,
		InfConvert:    cbor.InfConvertReject,
		Time:          cbor.TimeUnix,
	}.EncMode()
	if err != nil {
		panic(err)
	}
	return em
}()

// decMode bounds what a remote peer can make us allocate: nesting, array and
// map sizes, and rejects duplicate keys and indefinite lengths so that every
// accepted encoding has exactly one meaning.
var decMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:   16,
		MaxArrayElements:  4096,
		MaxMapPairs:       256,
		IndefLength:       cbor.IndefLengthForbidden,
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		TagsMd:            cbor.TagsAllowed,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		FieldNameMatching: cbor.FieldNameMatchingCaseSensitive,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// lenientDecMode is decMode without the unknown-field error, for messages
// that must stay readable when newer peers add fields (beacons).
var lenientDecMode = func() cbor.DecMode {
	opts := decMode.DecOptions()
	opts.ExtraReturnErrors = cbor.ExtraDecErrorNone
	dm, err := opts.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// Marshal encodes v as DAG-CBOR.
func Marshal(v any) ([]byte, error) { return encMode.Marshal(v) }

// Unmarshal decodes DAG-CBOR b into v, refusing trailing bytes, unknown
// fields and anything over the decoder's bounds.
func Unmarshal(b []byte, v any) error { return unmarshalWith(decMode, b, v) }

func unmarshalWith(dm cbor.DecMode, b []byte, v any) error {
	rest, err := dm.UnmarshalFirst(b, v)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%d trailing bytes after CBOR value", len(rest))
	}
	return nil
}

// dagCBORCID is CIDv1, codec dag-cbor, sha2-256 over b.
func dagCBORCID(b []byte) cid.Cid { return sumCID(cid.DagCBOR, b) }

// RawCID is the CID of an output block: CIDv1, codec raw, sha2-256 over
// exactly the bytes of the file.
func RawCID(b []byte) cid.Cid { return sumCID(cid.Raw, b) }

// sumCID is the CIDv1 of b under codec, with a sha2-256 multihash. The
// multihash is written by hand (its code, its length, the digest: both
// prefixes fit a byte) because mh.Sum allocates a hasher for every call,
// and every task and result makes several CIDs.
func sumCID(codec uint64, b []byte) cid.Cid {
	d := sha256.Sum256(b)
	h := make([]byte, 0, 2+sha256.Size)
	h = append(append(h, mh.SHA2_256, sha256.Size), d[:]...)
	return cid.NewCidV1(codec, h)
}

// VerifyBlock reports whether data hashes to c. Only sha2-256 CIDs are
// accepted: gpunet never produces others, and refusing them means a peer
// cannot make us run an expensive or broken hash.
func VerifyBlock(c cid.Cid, data []byte) error {
	p := c.Prefix()
	if p.MhType != mh.SHA2_256 {
		return fmt.Errorf("%w: unsupported multihash 0x%x", ErrBadCID, p.MhType)
	}
	if got := sumCID(p.Codec, data); !got.Equals(c) {
		return fmt.Errorf("%w: block hashes to %s, want %s", ErrBadCID, got, c)
	}
	return nil
}

// ErrBadCID means a block did not match the CID it was sent or stored under.
var ErrBadCID = errors.New("block does not match its CID")

// cidTag is the CBOR tag DAG-CBOR uses for links.
const cidTag = 42

// Link is a CID encoded as a DAG-CBOR link (tag 42 over 0x00 + CID bytes), so
// manifests are real IPLD data that IPFS tools can traverse.
type Link struct{ cid.Cid }

// MarshalCBOR implements cbor.Marshaler. The encoding is written by hand,
// in one allocation: tag 42's head (0xd8 0x2a), a byte string's head,
// 0x00 and the CID's bytes. Every manifest and task holds links, and the
// generic encoder cost a boxed tag and two copies each.
func (l Link) MarshalCBOR() ([]byte, error) {
	if !l.Defined() {
		return nil, errors.New("cannot encode an undefined CID")
	}
	c := l.KeyString() // the CID's binary form, without a copy
	b := make([]byte, 0, 2+9+1+len(c))
	b = appendHead(b, 0xc0, cidTag)           // tag 42
	b = appendHead(b, 0x40, uint64(len(c)+1)) // byte string
	b = append(b, 0)
	return append(b, c...), nil
}

// UnmarshalCBOR implements cbor.Unmarshaler.
func (l *Link) UnmarshalCBOR(b []byte) error {
	var t cbor.RawTag
	if err := decMode.Unmarshal(b, &t); err != nil {
		return fmt.Errorf("decoding link: %w", err)
	}
	if t.Number != cidTag {
		return fmt.Errorf("decoding link: tag %d, want %d", t.Number, cidTag)
	}
	var raw []byte
	if err := decMode.Unmarshal(t.Content, &raw); err != nil {
		return fmt.Errorf("decoding link: %w", err)
	}
	if len(raw) < 2 || raw[0] != 0 {
		return errors.New("decoding link: missing 0x00 multibase prefix")
	}
	c, err := cid.Cast(raw[1:])
	if err != nil {
		return fmt.Errorf("decoding link: %w", err)
	}
	l.Cid = c
	return nil
}

// appendHead appends a CBOR head of major type major (the top three bits)
// and argument v, in its shortest form.
func appendHead(dst []byte, major byte, v uint64) []byte {
	switch {
	case v < 24:
		return append(dst, major|byte(v))
	case v <= 0xff:
		return append(dst, major|24, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, major|25), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(dst, major|26), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(dst, major|27), v)
	}
}
