package store

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"

	"github.com/gpunet/gpunet/protocol"
)

// Put verifies and stores a result: manifestBytes, an encoded signed
// manifest, and blocks, one per manifest output in the same order. It returns
// the ResultCID stored for the manifest's task, which is an earlier result's
// CID when the task already had one (the first result for a task wins and the
// new one is not stored). Then, if the store is over budget, it evicts
// least-recently-used unpinned results, never the one just stored.
//
// A manifest that does not verify or does not match the blocks is rejected
// with an error wrapping protocol.ErrBadManifest; a block that does not hash
// to its output CID with one wrapping protocol.ErrBadCID. A result larger than
// the whole budget is rejected with ErrTooLarge. A rejected Put stores nothing.
func (s *Store) Put(ctx context.Context, manifestBytes []byte, blocks [][]byte) (cid.Cid, error) {
	m, err := protocol.DecodeManifest(manifestBytes)
	if err != nil {
		return cid.Undef, fmt.Errorf("storing result: %w", err)
	}
	return s.put(ctx, m, manifestBytes, blocks, false, true)
}

// PutVerified is Put for a manifest the caller has just decoded with
// protocol.DecodeManifest or DecodeManifestFrom, or built and signed itself:
// it skips the signature check, the slow part of a small Put, but still
// checks that manifestBytes encode m and every block against its CID. A
// manifest decoded with DecodeManifestFrom from its own host may carry a
// signature nobody checked yet: the node checks it before serving the
// result to another peer (node/verify.go, reservable).
func (s *Store) PutVerified(ctx context.Context, m *protocol.Manifest, manifestBytes []byte, blocks [][]byte) (cid.Cid, error) {
	if again, err := m.Encode(); err != nil || string(again) != string(manifestBytes) {
		return cid.Undef, fmt.Errorf("storing result: %w: bytes do not encode the manifest", protocol.ErrBadManifest)
	}
	return s.put(ctx, m, manifestBytes, blocks, false, true)
}

// PutEncoded is PutVerified for manifest bytes known to encode m: the
// bytes protocol.DecodeManifest or DecodeManifestFrom decoded m from
// (both refuse bytes that m does not encode back to), or the bytes m.Encode
// returned. It skips PutVerified's encoding of m, the one check of a
// small Put besides the blocks' hashes; those are still checked. Bytes
// that do not encode m would index the result under the wrong outputs:
// callers with bytes from anywhere else use PutVerified.
func (s *Store) PutEncoded(ctx context.Context, m *protocol.Manifest, manifestBytes []byte, blocks [][]byte) (cid.Cid, error) {
	return s.put(ctx, m, manifestBytes, blocks, false, true)
}

// PutQuiet is PutEncoded for a result the node made and does not provide on
// the DHT: one cheaper to compute again than to find (node/announce.go).
// The entry is marked Quiet, in the same write, until Unquiet. Nothing
// announces it, so it is not synced (doc.go, Durability): Unquiet's write
// is, and makes it durable before the node announces it.
func (s *Store) PutQuiet(ctx context.Context, m *protocol.Manifest, manifestBytes []byte, blocks [][]byte) (cid.Cid, error) {
	return s.put(ctx, m, manifestBytes, blocks, true, false)
}

// PutReceived is PutEncoded for a result this node got from another and
// does not announce, or not yet: a client's copy of what it submitted. It
// is not synced (doc.go, Durability), since a crash loses nothing anyone
// was told of; a node that comes to announce it calls Sync first.
func (s *Store) PutReceived(ctx context.Context, m *protocol.Manifest, manifestBytes []byte, blocks [][]byte) (cid.Cid, error) {
	return s.put(ctx, m, manifestBytes, blocks, false, false)
}

// Sync makes every write before it durable: a result stored with
// PutReceived or PutQuiet is on disk once Sync returns. It writes nothing
// when no such result was stored since the last Sync, and nothing in a
// store opened WithoutSync.
func (s *Store) Sync(ctx context.Context) error {
	n := s.unsynced.Load()
	if n == 0 {
		return nil
	}
	if err := s.rlockOpen(ctx); err != nil {
		return err
	}
	defer s.mu.RUnlock()
	if err := s.ds.DB.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("syncing results store: %w", asCorrupt(s.dir, err))
	}
	s.unsynced.Add(-n) // those stored since the Load are synced too, and counted for next time
	return nil
}

// Unsynced is the number of results stored without a sync since the last
// Sync (PutReceived, PutQuiet): 0 in a store opened WithoutSync.
func (s *Store) Unsynced() int64 { return s.unsynced.Load() }

// put stores a verified result, quiet or not, and synced (unless
// WithoutSync) or not.
func (s *Store) put(ctx context.Context, m *protocol.Manifest, manifestBytes []byte, blocks [][]byte, quiet, synced bool) (cid.Cid, error) {
	if err := ctx.Err(); err != nil {
		return cid.Undef, err
	}
	e, distinct, err := s.verify(m, manifestBytes, blocks)
	if err != nil {
		return cid.Undef, fmt.Errorf("storing result: %w", err)
	}
	if n := e.bytes(); n > s.budget {
		return cid.Undef, fmt.Errorf("storing result %s: %w: %d bytes, budget %d", e.result, ErrTooLarge, n, s.budget)
	}

	if err := s.lockOpen(ctx); err != nil {
		return cid.Undef, err
	}
	defer s.mu.Unlock()
	if old := s.tasks[e.task]; old != nil {
		if !old.result.Equals(e.result) {
			s.log.Debug("keeping the first result for task", "task", e.task, "kept", old.result, "offered", e.result)
		}
		return old.result, nil
	}
	now := s.nowMs()
	e.created = now
	e.quiet = quiet
	e.lastAccess.Store(now)
	// Synced unless the caller does not announce it: Put's callers
	// announce the result on the DHT once it returns, so it must survive
	// the process being killed.
	w := s.putSync
	if !synced {
		w = pebble.NoSync
	}
	if err := s.writeLocked(ctx, e, manifestBytes, distinct, w); err != nil {
		return cid.Undef, fmt.Errorf("storing result %s: %w", e.result, err)
	}
	if s.putSync.Sync && !synced {
		s.unsynced.Add(1)
	}
	s.addLocked(e)
	s.tasks[e.task] = e
	s.log.Debug("stored result", "task", e.task, "result", e.result, "bytes", e.bytes())

	// The result is stored whatever eviction does; a failed eviction is
	// retried by the next Put or GC.
	if _, _, err := s.evictLocked(ctx, e); err != nil {
		s.log.Error("evicting results after a put failed", "err", err)
	}
	return e.result, nil
}

// verify checks a decoded result's blocks before any lock is taken (hashing
// a few MiB is the slow part of a large Put). It returns the result's
// entry and its distinct blocks, in the order of e.blocks.
func (s *Store) verify(m *protocol.Manifest, manifestBytes []byte, blocks [][]byte) (*entry, [][]byte, error) {
	if len(blocks) != len(m.Outputs) {
		return nil, nil, fmt.Errorf("%w: %d outputs, got %d blocks", protocol.ErrBadManifest, len(m.Outputs), len(blocks))
	}
	var distinct [][]byte
	e := &entry{
		result:       protocol.ManifestCID(manifestBytes),
		task:         m.TaskCID.Cid,
		manifestSize: int64(len(manifestBytes)),
	}
	for i, o := range m.Outputs {
		b := blocks[i]
		// Bound before hashing: VerifyBlock reads all of b, and no block over
		// the cap can be the one a verified manifest names.
		if len(b) > protocol.MaxBlockBytes {
			return nil, nil, fmt.Errorf("output %d: %w: block of %d bytes, cap %d", i, protocol.ErrBadCID, len(b), protocol.MaxBlockBytes)
		}
		if err := protocol.VerifyBlock(o.CID.Cid, b); err != nil {
			return nil, nil, fmt.Errorf("output %d: %w", i, err)
		}
		if uint64(len(b)) != o.Size {
			return nil, nil, fmt.Errorf("%w: output %d says %d bytes, block has %d", protocol.ErrBadManifest, i, o.Size, len(b))
		}
		if !e.references(o.CID.Cid) {
			e.blocks = append(e.blocks, blockRef{cid: o.CID.Cid, size: int64(len(b))})
			distinct = append(distinct, b)
		}
	}
	return e, distinct, nil
}

// writeLocked writes a result in one batch, committed with w. Blocks are
// written even when a result already holds them: the bytes were just
// verified, so rewriting heals a copy that rotted on disk. blocks are e's
// distinct blocks, in the order of e.blocks. Called with mu held for
// writing.
func (s *Store) writeLocked(ctx context.Context, e *entry, manifestBytes []byte, blocks [][]byte, w *pebble.WriteOptions) error {
	meta, err := e.encodeMeta()
	if err != nil {
		return err
	}
	b := s.ds.DB.NewBatch()
	defer b.Close()
	for i, r := range e.blocks {
		if err := b.Set(blockKey(r.cid).Bytes(), blocks[i], nil); err != nil {
			return err
		}
	}
	for _, kv := range []struct {
		k ds.Key
		v []byte
	}{
		{manifestKey(e.result), manifestBytes},
		{metaKey(e.result), meta},
		{taskKey(e.task), e.result.Bytes()},
	} {
		if err := b.Set(kv.k.Bytes(), kv.v, nil); err != nil {
			return err
		}
	}
	return s.commit(b, w)
}
