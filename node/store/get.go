package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"

	"github.com/gpunet/gpunet/protocol"
)

// Get returns the result stored for taskCID, every block verified against
// its CID. It returns an error wrapping ErrNotFound when the store holds no
// result for the task, and one wrapping protocol.ErrBadCID when stored data no
// longer matches its CID; the result is then dropped, so the caller computes
// or fetches it again. A hit moves the result to the front of the LRU order.
func (s *Store) Get(ctx context.Context, taskCID cid.Cid) (*Result, error) {
	return s.result(ctx, taskCID, byTask, true)
}

// GetByResult is Get by ResultCID (the manifest's CID).
func (s *Store) GetByResult(ctx context.Context, resultCID cid.Cid) (*Result, error) {
	return s.result(ctx, resultCID, byResult, true)
}

// Has reports whether the store holds a result for taskCID. It reads no data,
// so it neither verifies the result nor counts as a hit or a miss.
func (s *Store) Has(ctx context.Context, taskCID cid.Cid) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.unusable() == nil && s.tasks[taskCID] != nil
}

// GetManifest returns the encoded manifest of resultCID, verified against it.
// It counts as a use of the result for LRU, not as a hit.
func (s *Store) GetManifest(ctx context.Context, resultCID cid.Cid) ([]byte, error) {
	if err := s.rlockOpen(ctx); err != nil {
		return nil, err
	}
	e := s.entries[resultCID]
	if e == nil || e.isBlock() {
		s.mu.RUnlock()
		return nil, fmt.Errorf("manifest %s: %w", resultCID, ErrNotFound)
	}
	b, err := s.readVerified(ctx, manifestKey(resultCID), resultCID)
	if err == nil {
		s.touch(e)
	}
	s.mu.RUnlock()
	if err != nil {
		s.dropIfCorrupt(ctx, err, resultCID, e)
		return nil, fmt.Errorf("reading manifest %s: %w", resultCID, err)
	}
	return b, nil
}

// GetBlock returns the block c, an output of a stored result or a lone
// block (PutBlock), verified against c. Reading a lone block counts as its
// use for LRU; an output's read does not change the LRU order, since a
// block may belong to several results.
func (s *Store) GetBlock(ctx context.Context, c cid.Cid) ([]byte, error) {
	if err := s.rlockOpen(ctx); err != nil {
		return nil, err
	}
	// Only blocks of indexed results are served, not orphans awaiting GC.
	if s.refs[c] == nil {
		s.mu.RUnlock()
		return nil, fmt.Errorf("block %s: %w", c, ErrNotFound)
	}
	b, err := s.readVerified(ctx, blockKey(c), c)
	if e := s.entries[c]; err == nil && e != nil && e.isBlock() {
		s.touch(e)
	}
	s.mu.RUnlock()
	if err != nil {
		s.dropIfCorrupt(ctx, err, c, nil)
		return nil, fmt.Errorf("reading block %s: %w", c, err)
	}
	return b, nil
}

type lookupBy int

const (
	byTask lookupBy = iota
	byResult
	byEither
)

// result reads and verifies a whole result. count says whether the lookup
// counts as a hit or miss.
func (s *Store) result(ctx context.Context, c cid.Cid, by lookupBy, count bool) (*Result, error) {
	if err := s.rlockOpen(ctx); err != nil {
		return nil, err
	}
	var e *entry
	switch by {
	case byTask:
		e = s.tasks[c]
	case byResult:
		e = s.entries[c]
	case byEither:
		e = s.resolveLocked(c)
	}
	if e != nil && e.isBlock() {
		e = nil // a lone block is not a result
	}
	if e == nil {
		s.mu.RUnlock()
		if count {
			s.misses.Add(1)
		}
		return nil, fmt.Errorf("result for %s: %w", c, ErrNotFound)
	}
	r, bad, err := s.readResult(ctx, e)
	if err == nil {
		s.touch(e)
	}
	s.mu.RUnlock()

	if err != nil {
		// A cancelled or failed read is neither; data that is gone or bad is
		// a miss: the caller has to go and get the result.
		if count && (errors.Is(err, protocol.ErrBadCID) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt)) {
			s.misses.Add(1)
		}
		if bad.Defined() {
			s.dropIfCorrupt(ctx, err, bad, e)
		}
		return nil, fmt.Errorf("reading result %s: %w", e.result, err)
	}
	if count {
		s.hits.Add(1)
	}
	return r, nil
}

// readResult reads e's manifest and blocks, verifying each. On a hash
// mismatch or missing data it also returns the CID of the bad item. Called
// with mu held for reading.
func (s *Store) readResult(ctx context.Context, e *entry) (*Result, cid.Cid, error) {
	mb, err := s.readVerified(ctx, manifestKey(e.result), e.result)
	if err != nil {
		return nil, e.result, fmt.Errorf("manifest: %w", err)
	}
	m := new(protocol.Manifest)
	// mb hashes to the ResultCID, so it is the encoding DecodeManifest
	// accepted in Put: decoding is enough, the signature needs no re-check.
	if err := protocol.Unmarshal(mb, m); err != nil {
		return nil, cid.Undef, fmt.Errorf("decoding stored manifest: %w", err)
	}
	blocks := make([][]byte, len(m.Outputs))
	for i, o := range m.Outputs {
		if err := ctx.Err(); err != nil {
			return nil, cid.Undef, err
		}
		if blocks[i], err = s.readVerified(ctx, blockKey(o.CID.Cid), o.CID.Cid); err != nil {
			return nil, o.CID.Cid, fmt.Errorf("output %d: %w", i, err)
		}
	}
	return &Result{CID: e.result, Manifest: m, ManifestBytes: mb, Blocks: blocks, Verified: e.verified, Quiet: e.quiet}, cid.Undef, nil
}

// errMissing marks data the index lists but the disk lacks; it wraps
// ErrNotFound, so callers see a miss.
var errMissing = fmt.Errorf("missing from disk: %w", ErrNotFound)

// readVerified reads key and checks that it hashes to c. Errors wrap
// protocol.ErrBadCID (the data does not match c), errMissing, or ErrCorrupt
// (pebble cannot read it: see doc.go, Damage); others are I/O.
func (s *Store) readVerified(ctx context.Context, key ds.Key, c cid.Cid) (_ []byte, err error) {
	defer s.catch(&err)
	b, err := s.ds.Get(ctx, key)
	if errors.Is(err, ds.ErrNotFound) {
		return nil, fmt.Errorf("%s %w", c, errMissing)
	}
	if err != nil {
		return nil, asCorrupt(s.dir, err)
	}
	if err := protocol.VerifyBlock(c, b); err != nil {
		return nil, err
	}
	return b, nil
}

// touch marks e used now. Called with mu held for reading, so eviction, which
// holds it for writing, sees a stable LRU order.
func (s *Store) touch(e *entry) {
	now := s.nowMs()
	for {
		old := e.lastAccess.Load()
		if now <= old {
			return
		}
		if e.lastAccess.CompareAndSwap(old, now) {
			e.dirty.Store(true)
			return
		}
	}
}

// dropIfCorrupt drops every result that depends on bad (a manifest or a
// block) when err says bad is corrupt or missing. owner is the result a
// manifest belongs to; for a block, every result referencing it is dropped.
func (s *Store) dropIfCorrupt(ctx context.Context, err error, bad cid.Cid, owner *entry) {
	if !errors.Is(err, protocol.ErrBadCID) && !errors.Is(err, errMissing) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unusable() != nil {
		return
	}
	isManifest := owner != nil && bad.Equals(owner.result)
	key := blockKey(bad)
	if isManifest {
		key = manifestKey(bad)
	}
	// Between the read lock and this one a Put may have rewritten the data
	// with verified bytes; then there is nothing to drop.
	if _, err := s.readVerified(ctx, key, bad); err == nil {
		return
	}
	var victims []*entry
	if isManifest {
		if s.entries[bad] == owner {
			victims = append(victims, owner)
		}
	} else {
		for _, e := range s.entries {
			if e.references(bad) {
				victims = append(victims, e)
			}
		}
	}
	s.log.Warn("stored data does not match its CID; dropping the results that use it so they are fetched or computed again",
		"cid", bad, "err", err, "results", len(victims))
	if _, err := s.removeLocked(ctx, victims); err != nil {
		s.log.Error("dropping corrupt results failed", "cid", bad, "err", err)
	}
}
