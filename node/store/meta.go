package store

import (
	"fmt"
	"sync/atomic"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"

	"github.com/gpunet/gpunet/protocol"
)

// Key prefixes; doc.go describes the layout.
const (
	blocksPrefix    = "/blocks/"
	manifestsPrefix = "/manifests/"
	tasksPrefix     = "/tasks/"
	metaPrefix      = "/meta/"
)

// RawKey skips ds.NewKey's path cleaning: a CID's string form holds no '/'
// and no '.', so the key is already clean, and this runs on every read.
func blockKey(c cid.Cid) ds.Key    { return ds.RawKey(blocksPrefix + c.String()) }
func manifestKey(c cid.Cid) ds.Key { return ds.RawKey(manifestsPrefix + c.String()) }
func taskKey(c cid.Cid) ds.Key     { return ds.RawKey(tasksPrefix + c.String()) }
func metaKey(c cid.Cid) ds.Key     { return ds.RawKey(metaPrefix + c.String()) }

// metaVersion is the version of metaRecord's encoding.
const metaVersion = 1

// metaRecord is the value under /meta/<resultCID>. It carries everything the
// in-memory index needs, so Open never decodes a manifest.
type metaRecord struct {
	V    uint64 `cbor:"v"`
	Task []byte `cbor:"task"`
	// Bytes is the manifest plus the result's distinct blocks.
	Bytes      uint64      `cbor:"bytes"`
	Blocks     []metaBlock `cbor:"blocks"`
	LastAccess int64       `cbor:"atime"`
	Created    int64       `cbor:"ctime"`
	Pinned     bool        `cbor:"pinned"`
	// Verified: a re-run on another host agreed (node/trust). Omitted
	// when false, so records written before it decode as unverified.
	Verified bool `cbor:"verified,omitempty"`
	// Quiet: made here and not provided on the DHT (PutQuiet). Omitted
	// when false, so records written before it decode as provided.
	Quiet bool `cbor:"quiet,omitempty"`
}

type metaBlock struct {
	CID  []byte `cbor:"cid"`
	Size uint64 `cbor:"size"`
}

// blockRef is one distinct block of a result.
type blockRef struct {
	cid  cid.Cid
	size int64
}

// ref counts the results that reference a block.
type ref struct {
	size int64
	n    int
}

// entry is the in-memory record of one stored result.
type entry struct {
	result, task cid.Cid
	manifestSize int64
	blocks       []blockRef // distinct, in manifest order
	created      int64      // Unix ms, when this node stored it
	pinned       bool       // guarded by Store.mu (written under the write lock)
	verified     bool       // likewise
	quiet        bool       // likewise

	// lastAccess (Unix ms) moves forward under the read lock, so it is atomic;
	// dirty says it is newer than the value in /meta.
	lastAccess atomic.Int64
	dirty      atomic.Bool
}

// isBlock reports whether e holds a lone block (an input image) rather than
// a result: such an entry has no task and no manifest, and its one block is
// its own CID.
func (e *entry) isBlock() bool { return !e.task.Defined() }

func (e *entry) bytes() int64 {
	n := e.manifestSize
	for _, b := range e.blocks {
		n += b.size
	}
	return n
}

func (e *entry) references(c cid.Cid) bool {
	for _, b := range e.blocks {
		if b.cid.Equals(c) {
			return true
		}
	}
	return false
}

func (e *entry) encodeMeta() ([]byte, error) {
	var task []byte // empty for a lone block
	if !e.isBlock() {
		task = e.task.Bytes()
	}
	m := metaRecord{
		V: metaVersion, Task: task, Bytes: uint64(e.bytes()),
		LastAccess: e.lastAccess.Load(), Created: e.created, Pinned: e.pinned,
		Verified: e.verified, Quiet: e.quiet,
	}
	for _, b := range e.blocks {
		m.Blocks = append(m.Blocks, metaBlock{CID: b.cid.Bytes(), Size: uint64(b.size)})
	}
	return protocol.Marshal(&m)
}

func decodeMeta(result cid.Cid, b []byte) (*entry, error) {
	var m metaRecord
	if err := protocol.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.V != metaVersion {
		return nil, fmt.Errorf("meta version %d, want %d", m.V, metaVersion)
	}
	task := cid.Undef // a lone block has none
	if len(m.Task) > 0 {
		var err error
		if task, err = cid.Cast(m.Task); err != nil {
			return nil, fmt.Errorf("task cid: %w", err)
		}
	}
	e := &entry{result: result, task: task, created: m.Created, pinned: m.Pinned, verified: m.Verified, quiet: m.Quiet}
	var blocks int64
	for _, mb := range m.Blocks {
		c, err := cid.Cast(mb.CID)
		if err != nil {
			return nil, fmt.Errorf("block cid: %w", err)
		}
		if mb.Size > protocol.MaxBlockBytes {
			return nil, fmt.Errorf("block %s: size %d over cap", c, mb.Size)
		}
		e.blocks = append(e.blocks, blockRef{cid: c, size: int64(mb.Size)})
		blocks += int64(mb.Size)
	}
	e.manifestSize = int64(m.Bytes) - blocks
	if e.isBlock() {
		if len(e.blocks) != 1 || !e.blocks[0].cid.Equals(result) || e.manifestSize != 0 {
			return nil, fmt.Errorf("inconsistent lone block record: %d blocks, %d bytes", len(e.blocks), m.Bytes)
		}
	} else if len(e.blocks) == 0 || e.manifestSize <= 0 || e.manifestSize > protocol.MaxManifestBytes {
		return nil, fmt.Errorf("inconsistent sizes: %d bytes, %d in %d blocks", m.Bytes, blocks, len(e.blocks))
	}
	e.lastAccess.Store(m.LastAccess)
	return e, nil
}
