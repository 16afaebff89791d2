package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	pebbleds "github.com/ipfs/go-ds-pebble"

	"github.com/gpunet/gpunet/protocol"
)

// Sentinel errors callers branch on. Data that fails its hash check is
// reported with an error wrapping protocol.ErrBadCID.
var (
	// ErrNotFound means the store holds no such task, result or block.
	ErrNotFound = errors.New("not in the results store")
	// ErrClosed means the store was used after Close.
	ErrClosed = errors.New("results store closed")
	// ErrTooLarge means a result alone exceeds the store's budget.
	ErrTooLarge = errors.New("result larger than the store budget")
)

// Result is a stored result: its manifest and output blocks, verified
// against their CIDs on the way out of the store.
type Result struct {
	// CID is the ResultCID, the CID of ManifestBytes.
	CID           cid.Cid
	Manifest      *protocol.Manifest
	ManifestBytes []byte
	// Blocks holds one block per Manifest.Outputs entry, in the same order.
	Blocks [][]byte
}

// Entry describes one stored result for listings.
type Entry struct {
	TaskCID   cid.Cid
	ResultCID cid.Cid
	// Bytes is the manifest plus the result's distinct blocks, counting blocks
	// shared with other results too.
	Bytes  int64
	Pinned bool
	// LastAccess is the last read through Get, GetByResult, GetManifest or
	// ExportCAR (or the Put).
	LastAccess time.Time
	// Created is when this node stored the result; the manifest's Created is
	// when the host made it.
	Created time.Time
	Prompt  string
	Host    string
}

// Stats are the store's counters.
type Stats struct {
	// Entries is the number of results held.
	Entries int
	// Bytes is what the budget counts: manifests plus distinct blocks.
	Bytes int64
	// Hits and Misses count Get and GetByResult since Open.
	Hits, Misses uint64
	Budget       int64
}

// diskSlowThreshold is how long one write may block before the store warns
// that its disk is slow: pebble's own default.
const diskSlowThreshold = 5 * time.Second

// Store is the results store. See the package doc for its rules; it is safe
// for concurrent use.
type Store struct {
	ds       *pebbleds.Datastore
	fsCloser io.Closer // stops the disk-health checker after ds is closed
	budget   int64
	now      func() time.Time
	log      *slog.Logger

	// mu guards the maps, closed and entry.pinned. Readers hold it for
	// reading while they read from ds, so nothing they read is removed
	// under them; every mutation of ds holds it for writing.
	mu      sync.RWMutex
	closed  bool
	entries map[cid.Cid]*entry // by ResultCID
	tasks   map[cid.Cid]*entry // by TaskCID
	refs    map[cid.Cid]*ref   // by block CID

	// Written under mu (write), read without it by Stats.
	nEntries atomic.Int64
	nBytes   atomic.Int64

	hits, misses atomic.Uint64
}

// Open opens (creating it if needed) the store in dir and rebuilds its index.
// If the store is over the budget, say because the budget shrank, Open evicts
// down to it.
func Open(dir string, opts ...Option) (*Store, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating results store directory: %w", err)
	}
	// Pebble wraps its file system in a disk-health checker whose goroutine it
	// stops in DB.Close but leaks when Open fails (a locked directory, say).
	// Building the wrapper here makes it ours to stop either way.
	log := cfg.logger
	fs, fsCloser := vfs.WithDiskHealthChecks(vfs.Default, diskSlowThreshold, nil, func(i vfs.DiskSlowInfo) {
		log.Warn("results store disk is slow", "op", i.String(), "for", i.Duration)
	})
	d, err := pebbleds.NewDatastore(dir, pebbleds.WithPebbleOpts(&pebble.Options{FS: fs, Logger: pebbleLogger{log}}))
	if err != nil {
		return nil, errors.Join(
			fmt.Errorf("opening results store in %s (is another gpunet process using it?): %w", dir, err),
			fsCloser.Close())
	}
	s := &Store{
		ds: d, fsCloser: fsCloser, budget: cfg.budget, now: cfg.now, log: log,
		entries: make(map[cid.Cid]*entry),
		tasks:   make(map[cid.Cid]*entry),
		refs:    make(map[cid.Cid]*ref),
	}
	ctx := context.Background()
	if err := s.load(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("loading results store index in %s: %w", dir, err), s.closeDB())
	}
	s.mu.Lock()
	_, _, err = s.evictLocked(ctx, nil)
	s.mu.Unlock()
	if err != nil {
		return nil, errors.Join(err, s.closeDB())
	}
	s.log.Info("results store opened", "dir", dir, "entries", s.nEntries.Load(), "bytes", s.nBytes.Load(), "budget", s.budget)
	return s, nil
}

// load rebuilds the in-memory index from /meta and /tasks. Records that do not
// decode are deleted (GC removes what they leave behind); a result the task
// index lost is indexed again.
func (s *Store) load(ctx context.Context) error {
	metas, err := s.queryAll(ctx, metaPrefix, false)
	if err != nil {
		return err
	}
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return err
	}
	for _, m := range metas {
		c, err := cid.Decode(strings.TrimPrefix(m.Key, metaPrefix))
		var e *entry
		if err == nil {
			e, err = decodeMeta(c, m.Value)
		}
		if err != nil {
			s.log.Warn("dropping unreadable result record", "key", m.Key, "err", err)
			if err := b.Delete(ctx, ds.RawKey(m.Key)); err != nil {
				return err
			}
			continue
		}
		s.addLocked(e)
	}

	idx, err := s.queryAll(ctx, tasksPrefix, false)
	if err != nil {
		return err
	}
	for _, t := range idx {
		tc, err1 := cid.Decode(strings.TrimPrefix(t.Key, tasksPrefix))
		rc, err2 := cid.Cast(t.Value)
		e := s.entries[rc]
		if err1 != nil || err2 != nil || e == nil || !e.task.Equals(tc) {
			s.log.Warn("dropping stale task index record", "key", t.Key)
			if err := b.Delete(ctx, ds.RawKey(t.Key)); err != nil {
				return err
			}
			continue
		}
		s.tasks[tc] = e
	}
	for _, e := range s.entries {
		if s.tasks[e.task] != nil {
			continue
		}
		// Only reachable if /tasks was damaged: batches write both or neither.
		s.tasks[e.task] = e
		if err := b.Put(ctx, taskKey(e.task), e.result.Bytes()); err != nil {
			return err
		}
	}
	return b.Commit(ctx)
}

// addLocked enters e into the result map, the block reference counts and the
// counters; the caller indexes its task. Called with mu held for writing (or
// before the store is shared).
func (s *Store) addLocked(e *entry) {
	s.entries[e.result] = e
	added := e.manifestSize
	for _, b := range e.blocks {
		r := s.refs[b.cid]
		if r == nil {
			r = &ref{size: b.size}
			s.refs[b.cid] = r
			added += b.size
		}
		r.n++
	}
	s.nEntries.Add(1)
	s.nBytes.Add(added)
}

// queryAll returns every record under prefix, values included unless
// keysOnly (sizes are returned either way).
func (s *Store) queryAll(ctx context.Context, prefix string, keysOnly bool) ([]query.Entry, error) {
	res, err := s.ds.Query(ctx, query.Query{Prefix: prefix, KeysOnly: keysOnly, ReturnsSizes: true})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", prefix, err)
	}
	defer res.Close()
	es, err := res.Rest()
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", prefix, err)
	}
	return es, nil
}

// flushLocked writes the last-access times that reads moved forward back to
// /meta. Called with mu held for writing.
func (s *Store) flushLocked(ctx context.Context) error {
	b, err := s.ds.Batch(ctx)
	if err != nil {
		return err
	}
	var dirty []*entry
	for _, e := range s.entries {
		if !e.dirty.Load() {
			continue
		}
		v, err := e.encodeMeta()
		if err != nil {
			return err
		}
		if err := b.Put(ctx, metaKey(e.result), v); err != nil {
			return err
		}
		dirty = append(dirty, e)
	}
	if len(dirty) == 0 {
		return nil
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("saving last-access times: %w", err)
	}
	for _, e := range dirty {
		e.dirty.Store(false)
	}
	return nil
}

// Close saves last-access times and closes the database. Calls after the
// first return nil; other methods then return ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return errors.Join(s.flushLocked(context.Background()), s.closeDB())
}

// closeDB closes the database, then the file system wrapper it used.
func (s *Store) closeDB() error {
	return errors.Join(s.ds.Close(), s.fsCloser.Close())
}

// Stats returns the store's counters without touching the disk.
func (s *Store) Stats() Stats {
	return Stats{
		Entries: int(s.nEntries.Load()),
		Bytes:   s.nBytes.Load(),
		Hits:    s.hits.Load(),
		Misses:  s.misses.Load(),
		Budget:  s.budget,
	}
}

// resolveLocked finds the result c names, c being a ResultCID or a TaskCID.
// Called with mu held.
func (s *Store) resolveLocked(c cid.Cid) *entry {
	if e := s.entries[c]; e != nil {
		return e
	}
	return s.tasks[c]
}

func (s *Store) nowMs() int64 { return s.now().UnixMilli() }

// lockOpen takes mu for writing, unless ctx is done or the store is
// closed; on an error mu is not held.
func (s *Store) lockOpen(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// rlockOpen is lockOpen for reading.
func (s *Store) rlockOpen(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	return nil
}
