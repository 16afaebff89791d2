package store

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
)

// Pin keeps the result c names (a TaskCID or a ResultCID) from eviction.
func (s *Store) Pin(ctx context.Context, c cid.Cid) error { return s.setPinned(ctx, c, true) }

// Unpin makes the result c names evictable again. It evicts nothing itself:
// a caller unpinning several results then calls GC.
func (s *Store) Unpin(ctx context.Context, c cid.Cid) error { return s.setPinned(ctx, c, false) }

func (s *Store) setPinned(ctx context.Context, c cid.Cid, pinned bool) error {
	// Synced: a pin is a person's instruction and rare, and one lost to a
	// crash would let the result be evicted.
	_, err := s.mark(ctx, c, "pin", func(e *entry) *bool { return &e.pinned }, pinned, pebble.Sync)
	return err
}

// MarkVerified records that a re-run on another host agreed with the
// result c names (a TaskCID or a ResultCID): node/trust need not check it
// again. Not synced: a mark lost to a crash costs one more check.
func (s *Store) MarkVerified(ctx context.Context, c cid.Cid) error {
	_, err := s.mark(ctx, c, "verified mark", resultFlag(func(e *entry) *bool { return &e.verified }), true, pebble.NoSync)
	return err
}

// Unquiet clears the Quiet mark of the result c names (a TaskCID or a
// ResultCID), and reports whether it was set: the node provides the result
// from then on.
func (s *Store) Unquiet(ctx context.Context, c cid.Cid) (bool, error) {
	// Synced as a Put: the node announces the result next, and this write
	// makes the quiet Put's before it durable too (doc.go, Durability).
	return s.mark(ctx, c, "quiet mark", resultFlag(func(e *entry) *bool { return &e.quiet }), false, s.putSync)
}

// resultFlag is flag for results only: a lone block has none.
func resultFlag(flag func(*entry) *bool) func(*entry) *bool {
	return func(e *entry) *bool {
		if e.isBlock() {
			return nil
		}
		return flag(e)
	}
}

// mark sets one of the flags of the entry c names (flag picks it; nil when
// the entry has no such flag) to want and writes its record with w, and
// reports whether the flag changed.
func (s *Store) mark(ctx context.Context, c cid.Cid, what string, flag func(*entry) *bool, want bool, w *pebble.WriteOptions) (bool, error) {
	if err := s.lockOpen(ctx); err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	e := s.resolveLocked(c)
	var f *bool
	if e != nil {
		f = flag(e)
	}
	if f == nil {
		return false, fmt.Errorf("saving %s of %s: %w", what, c, ErrNotFound)
	}
	if *f == want {
		return false, nil
	}
	*f = want
	v, err := e.encodeMeta()
	if err == nil {
		b := s.ds.DB.NewBatch()
		defer b.Close()
		if err = b.Set(metaKey(e.result).Bytes(), v, nil); err == nil {
			err = s.commit(b, w)
		}
	}
	if err != nil {
		*f = !want
		return false, fmt.Errorf("saving %s of %s: %w", what, e.result, err)
	}
	e.dirty.Store(false) // the record just written holds the last access too
	return true, nil
}

// Remove deletes the result c names (a TaskCID or a ResultCID), pinned or
// not, and the blocks no other result references.
func (s *Store) Remove(ctx context.Context, c cid.Cid) error {
	if err := s.lockOpen(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	e := s.resolveLocked(c)
	if e == nil {
		return fmt.Errorf("removing %s: %w", c, ErrNotFound)
	}
	if _, err := s.removeLocked(ctx, []*entry{e}); err != nil {
		return fmt.Errorf("removing %s: %w", e.result, err)
	}
	return nil
}

// GC saves last-access times, evicts least-recently-used unpinned results
// until the store is within budget, and deletes orphan records: blocks no
// result references, and manifests and task index entries without a result.
// removed counts evicted results plus orphan records; freed is their bytes.
func (s *Store) GC(ctx context.Context) (removed int, freed int64, err error) {
	if err := s.lockOpen(ctx); err != nil {
		return 0, 0, err
	}
	defer s.mu.Unlock()
	if err := s.flushLocked(ctx); err != nil {
		return 0, 0, err
	}
	removed, freed, err = s.evictLocked(ctx, nil)
	if err != nil {
		return removed, freed, err
	}
	n, f, err := s.sweepLocked(ctx)
	removed, freed = removed+n, freed+f
	if removed > 0 {
		s.log.Info("results store garbage collected", "removed", removed, "freed", freed,
			"entries", s.nEntries.Load(), "bytes", s.nBytes.Load())
	}
	return removed, freed, err
}

// evictLocked removes least-recently-used unpinned results, other than keep,
// until the store is within budget. Called with mu held for writing.
func (s *Store) evictLocked(ctx context.Context, keep *entry) (removed int, freed int64, err error) {
	over := s.nBytes.Load() - s.budget
	if over <= 0 {
		return 0, 0, nil
	}
	cands := make([]*entry, 0, len(s.entries))
	for _, e := range s.entries {
		if !e.pinned && e != keep {
			cands = append(cands, e)
		}
	}
	// A full sort per eviction is O(n log n) over a few thousand entries at
	// the default budget: microseconds next to the disk writes, and simpler
	// than keeping a heap in step with every touch. Ties (same millisecond)
	// go to the older result, then to CID order, so eviction is deterministic.
	slices.SortFunc(cands, func(a, b *entry) int {
		return cmp.Or(
			cmp.Compare(a.lastAccess.Load(), b.lastAccess.Load()),
			cmp.Compare(a.created, b.created),
			strings.Compare(a.result.KeyString(), b.result.KeyString()),
		)
	})
	// Removing a result frees its manifest and only the blocks whose last
	// reference it holds; count as removeLocked will.
	dec := make(map[cid.Cid]int)
	var victims []*entry
	for _, e := range cands {
		if over <= 0 {
			break
		}
		victims = append(victims, e)
		over -= e.manifestSize
		for _, b := range e.blocks {
			dec[b.cid]++
			if s.refs[b.cid].n == dec[b.cid] {
				over -= b.size
			}
		}
	}
	if over > 0 {
		s.log.Warn("results store stays over budget: the rest is pinned or just stored; unpin results or raise the budget",
			"bytes", s.nBytes.Load(), "budget", s.budget)
	}
	freed, err = s.removeLocked(ctx, victims)
	if err != nil {
		return 0, 0, fmt.Errorf("evicting results: %w", err)
	}
	s.evictions.Add(uint64(len(victims)))
	for _, e := range victims {
		s.log.Debug("evicted result", "task", e.task, "result", e.result)
	}
	return len(victims), freed, nil
}

// removeLocked deletes victims (no duplicates), and every block no remaining
// result references, in one batch; memory changes only once it is committed.
// Called with mu held for writing.
func (s *Store) removeLocked(ctx context.Context, victims []*entry) (freed int64, err error) {
	if len(victims) == 0 {
		return 0, nil
	}
	b := s.ds.DB.NewBatch()
	defer b.Close()
	var keys []ds.Key
	dec := make(map[cid.Cid]int)
	for _, e := range victims {
		keys = append(keys, metaKey(e.result), manifestKey(e.result))
		if s.tasks[e.task] == e {
			keys = append(keys, taskKey(e.task))
		}
		freed += e.manifestSize
		for _, r := range e.blocks {
			dec[r.cid]++
			if s.refs[r.cid].n == dec[r.cid] {
				keys = append(keys, blockKey(r.cid))
				freed += r.size
			}
		}
	}
	for _, k := range keys {
		if err := b.Delete(k.Bytes(), nil); err != nil {
			return 0, err
		}
	}
	// Not synced: a removal lost to a crash brings back a whole result
	// (batches are atomic), still valid since it is content-addressed; Open
	// evicts again if that puts the store over budget.
	if err := s.commit(b, pebble.NoSync); err != nil {
		return 0, err
	}

	for _, e := range victims {
		delete(s.entries, e.result)
		if s.tasks[e.task] == e {
			delete(s.tasks, e.task)
		}
	}
	for c, n := range dec {
		if r := s.refs[c]; r.n == n {
			delete(s.refs, c)
		} else {
			r.n -= n
		}
	}
	s.nEntries.Add(-int64(len(victims)))
	s.nBytes.Add(-freed)
	return freed, nil
}

// sweepLocked deletes records no result accounts for. They cannot arise from
// the store's own batches; they come from damage, or from a result record
// Open could not read. Called with mu held for writing.
func (s *Store) sweepLocked(ctx context.Context) (removed int, freed int64, err error) {
	sweeps := []struct {
		prefix string
		// keep reports whether the record named by rest (the key past
		// prefix) with value v belongs to a stored result.
		keep     func(rest string, v []byte) bool
		keysOnly bool
	}{
		{blocksPrefix, func(rest string, _ []byte) bool {
			c, err := cid.Decode(rest)
			return err == nil && s.refs[c] != nil
		}, true},
		{manifestsPrefix, func(rest string, _ []byte) bool {
			c, err := cid.Decode(rest)
			return err == nil && s.entries[c] != nil
		}, true},
		{metaPrefix, func(rest string, _ []byte) bool {
			c, err := cid.Decode(rest)
			return err == nil && s.entries[c] != nil
		}, true},
		{tasksPrefix, func(rest string, v []byte) bool {
			tc, err1 := cid.Decode(rest)
			rc, err2 := cid.Cast(v)
			e := s.tasks[tc]
			return err1 == nil && err2 == nil && e != nil && e.result.Equals(rc)
		}, false},
	}
	b := s.ds.DB.NewBatch()
	defer b.Close()
	for _, sw := range sweeps {
		recs, err := s.queryAll(ctx, sw.prefix, sw.keysOnly)
		if err != nil {
			return 0, 0, err
		}
		for _, r := range recs {
			if sw.keep(strings.TrimPrefix(r.Key, sw.prefix), r.Value) {
				continue
			}
			s.log.Debug("removing orphan record", "key", r.Key, "bytes", r.Size)
			if err := b.Delete([]byte(r.Key), nil); err != nil {
				return 0, 0, err
			}
			removed++
			freed += int64(r.Size)
		}
	}
	if removed == 0 {
		return 0, 0, nil
	}
	// Not synced: orphans a crash brings back go at the next GC.
	if err := s.commit(b, pebble.NoSync); err != nil {
		return 0, 0, fmt.Errorf("removing orphan records: %w", err)
	}
	return removed, freed, nil
}
