package store

import (
	"context"
	"fmt"

	"github.com/ipfs/go-cid"

	"github.com/gpunet/gpunet/protocol"
)

// PutBlock stores data as a lone raw block, such as a task's input image,
// and returns its CID (CIDv1, codec raw, sha2-256). A lone block is kept and
// evicted like a result (it counts against the budget, LRU by its reads
// through GetBlock, Pin keeps it) but it is no result: Get, GetByResult and
// List do not see it, and GetBlock serves it. Storing a block already held
// only counts as a use of it.
func (s *Store) PutBlock(ctx context.Context, data []byte) (cid.Cid, error) {
	if err := ctx.Err(); err != nil {
		return cid.Undef, err
	}
	if len(data) == 0 || len(data) > protocol.MaxBlockBytes {
		return cid.Undef, fmt.Errorf("storing block: %d bytes, want 1..%d", len(data), protocol.MaxBlockBytes)
	}
	c := protocol.RawCID(data)
	size := int64(len(data))
	if size > s.budget {
		return cid.Undef, fmt.Errorf("storing block %s: %w: %d bytes, budget %d", c, ErrTooLarge, size, s.budget)
	}
	if err := s.lockOpen(ctx); err != nil {
		return cid.Undef, err
	}
	defer s.mu.Unlock()
	if e := s.entries[c]; e != nil {
		s.touch(e)
		return c, nil
	}
	now := s.nowMs()
	e := &entry{result: c, task: cid.Undef, blocks: []blockRef{{cid: c, size: size}}, created: now}
	e.lastAccess.Store(now)
	meta, err := e.encodeMeta()
	if err != nil {
		return cid.Undef, err
	}
	b := s.ds.DB.NewBatch()
	defer b.Close()
	if err := b.Set(blockKey(c).Bytes(), data, nil); err != nil {
		return cid.Undef, err
	}
	if err := b.Set(metaKey(c).Bytes(), meta, nil); err != nil {
		return cid.Undef, err
	}
	// Synced as Put is: the block is named in a task a peer is about to
	// fetch it for.
	if err := s.commit(b, s.putSync); err != nil {
		return cid.Undef, fmt.Errorf("storing block %s: %w", c, err)
	}
	s.addLocked(e)
	if _, _, err := s.evictLocked(ctx, e); err != nil {
		s.log.Error("evicting after storing a block failed", "err", err)
	}
	return c, nil
}

// HasBlock reports whether the store holds block c (an output or a lone
// block) without reading it.
func (s *Store) HasBlock(c cid.Cid) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.unusable() == nil && s.refs[c] != nil
}
