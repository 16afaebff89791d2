package store

import (
	"bytes"
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
	// Verified: a re-run on another host agreed with it (MarkVerified).
	Verified bool
	// Quiet: this node made it and does not provide it (PutQuiet).
	Quiet bool
}

// Entry describes one stored result for listings.
type Entry struct {
	TaskCID   cid.Cid
	ResultCID cid.Cid
	// Bytes is the manifest plus the result's distinct blocks, counting blocks
	// shared with other results too.
	Bytes    int64
	Pinned   bool
	Verified bool
	// Quiet: stored with PutQuiet, and not announced since (Unquiet).
	Quiet bool
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
	// Evictions counts results evicted for the budget since Open.
	Evictions uint64
	Budget    int64
}

// diskSlowThreshold is how long one write may block before the store warns
// that its disk is slow: pebble's own default.
const diskSlowThreshold = 5 * time.Second

// Store is the results store. See the package doc for its rules; it is safe
// for concurrent use.
type Store struct {
	dir      string
	ds       *pebbleds.Datastore
	fsCloser io.Closer // stops the disk-health checker after ds is closed
	budget   int64
	now      func() time.Time
	log      *slog.Logger
	damage   *damage
	// putSync is the write option of Put's batch: pebble.Sync unless
	// WithoutSync (see doc.go, Durability).
	putSync *pebble.WriteOptions
	// unsynced counts the results stored without a sync since the last
	// Sync, in a store that syncs.
	unsynced atomic.Int64

	// failed is set when pebble panicked (see catch); every later call
	// returns it.
	failed atomic.Pointer[corruptError]

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

	hits, misses, evictions atomic.Uint64
}

// Open opens (creating it if needed) the store in dir, reads all of it
// once to find damage, and rebuilds its index. If the store is over the
// budget, say because the budget shrank, Open evicts down to it.
//
// A store pebble finds damaged is not opened: the error wraps ErrCorrupt and
// says what to do (Repair). Reading everything costs about as long as
// reading the store's bytes from disk (docs/cache.md has a figure); it finds
// a damaged table at start, where it can be repaired, instead of on a read
// or in a compaction while the node serves.
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
	s := &Store{
		dir: dir, fsCloser: fsCloser, budget: cfg.budget, now: cfg.now, log: log,
		damage:  &damage{dir: dir, log: log},
		putSync: pebble.Sync,
		entries: make(map[cid.Cid]*entry),
		tasks:   make(map[cid.Cid]*entry),
		refs:    make(map[cid.Cid]*ref),
	}
	if cfg.noSync {
		s.putSync = pebble.NoSync
	}
	if err := s.open(fs); err != nil {
		return nil, errors.Join(err, s.closeDB())
	}
	s.damage.opened.Store(true)
	s.log.Info("results store opened", "dir", dir, "entries", s.nEntries.Load(), "bytes", s.nBytes.Load(), "budget", s.budget)
	return s, nil
}

// open is Open's work on the database; on an error Open closes what it
// opened.
func (s *Store) open(fs vfs.FS) (err error) {
	defer s.catch(&err)
	d, err := pebbleds.NewDatastore(s.dir, pebbleds.WithPebbleOpts(&pebble.Options{
		FS: fs, Logger: pebbleLogger{s.log}, EventListener: s.damage.listener(),
	}))
	if err != nil {
		if err := asCorrupt(s.dir, err); errors.Is(err, ErrCorrupt) {
			return err // a damaged MANIFEST or write-ahead log
		}
		return fmt.Errorf("opening results store in %s (is another gpunet process using it?): %w", s.dir, err)
	}
	s.ds = d
	ctx := context.Background()
	// Before load, which may write: a damaged store is moved aside as it is.
	if err := s.readAll(ctx); err != nil {
		return err
	}
	if err := s.load(ctx); err != nil {
		return fmt.Errorf("loading results store index in %s: %w", s.dir, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _, err = s.evictLocked(ctx, nil)
	return err
}

// readAll reads every record, so that pebble checks the checksum of every
// block on disk. Pebble also reports damage its background work met
// meanwhile (the damage listener); either way the error wraps ErrCorrupt.
func (s *Store) readAll(ctx context.Context) (err error) {
	defer s.catch(&err)
	it, err := s.ds.DB.NewIter(nil)
	if err != nil {
		return asCorrupt(s.dir, err)
	}
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		// The value too: pebble may keep large values apart from the keys.
		if _, err = it.ValueAndErr(); err != nil {
			break
		}
		if n++; n%1024 == 0 {
			if err = ctx.Err(); err != nil {
				break
			}
		}
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err == nil && s.damage.seen.Load() {
		err = fmt.Errorf("%w: pebble reported damage while the store opened", pebble.ErrCorruption)
	}
	if err != nil {
		err = fmt.Errorf("reading the whole store: %w", err)
		if c := asCorrupt(s.dir, err); c != err {
			return c
		}
		return fmt.Errorf("results store %s: %w", s.dir, err)
	}
	return nil
}

// load rebuilds the in-memory index from /meta and /tasks. Records that do not
// decode are deleted (GC removes what they leave behind); a result the task
// index lost is indexed again.
func (s *Store) load(ctx context.Context) error {
	metas, err := s.queryAll(ctx, metaPrefix, false)
	if err != nil {
		return err
	}
	b := s.ds.DB.NewBatch()
	defer b.Close()
	for _, m := range metas {
		c, err := cid.Decode(strings.TrimPrefix(m.Key, metaPrefix))
		var e *entry
		if err == nil {
			e, err = decodeMeta(c, m.Value)
		}
		if err != nil {
			s.log.Warn("dropping unreadable result record", "key", m.Key, "err", err)
			if err := b.Delete([]byte(m.Key), nil); err != nil {
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
			if err := b.Delete([]byte(t.Key), nil); err != nil {
				return err
			}
			continue
		}
		s.tasks[tc] = e
	}
	for _, e := range s.entries {
		if e.isBlock() || s.tasks[e.task] != nil {
			continue
		}
		// Only reachable if /tasks was damaged: batches write both or neither.
		s.tasks[e.task] = e
		if err := b.Set(taskKey(e.task).Bytes(), e.result.Bytes(), nil); err != nil {
			return err
		}
	}
	if b.Empty() {
		return nil
	}
	// Not synced: a repair lost to a crash is made again by the next Open.
	return s.commit(b, pebble.NoSync)
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
//
// It iterates in the calling goroutine rather than through go-ds-pebble's
// Query, which iterates in a goroutine of its own (where a panic cannot be
// recovered) and ends its results early, with no error, when pebble fails
// to read a block: a store with a damaged table would then look smaller
// than it is, and GC would delete the records of the results it missed.
func (s *Store) queryAll(ctx context.Context, prefix string, keysOnly bool) (es []query.Entry, err error) {
	defer s.catch(&err)
	// Every prefix ends in '/', so its successor bounds it above.
	upper := []byte(prefix)
	upper[len(upper)-1]++
	it, err := s.ds.DB.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: upper})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", prefix, asCorrupt(s.dir, err))
	}
	for valid := it.First(); valid; valid = it.Next() {
		var v []byte
		if v, err = it.ValueAndErr(); err != nil {
			break
		}
		e := query.Entry{Key: string(it.Key()), Size: len(v)}
		if !keysOnly {
			e.Value = bytes.Clone(v)
		}
		es = append(es, e)
		if len(es)%1024 == 0 {
			if err = ctx.Err(); err != nil {
				break
			}
		}
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", prefix, asCorrupt(s.dir, err))
	}
	return es, nil
}

// commit applies b; the caller closes it. With pebble.Sync it returns once
// the write-ahead log holding b, and everything logged before it, is on
// disk; doc.go (Durability) says which writes need that.
func (s *Store) commit(b *pebble.Batch, w *pebble.WriteOptions) (err error) {
	defer s.catch(&err)
	return asCorrupt(s.dir, b.Commit(w))
}

// flushLocked writes the last-access times that reads moved forward back to
// /meta. Called with mu held for writing.
func (s *Store) flushLocked(ctx context.Context) error {
	b := s.ds.DB.NewBatch()
	defer b.Close()
	var dirty []*entry
	for _, e := range s.entries {
		if !e.dirty.Load() {
			continue
		}
		v, err := e.encodeMeta()
		if err != nil {
			return err
		}
		if err := b.Set(metaKey(e.result).Bytes(), v, nil); err != nil {
			return err
		}
		dirty = append(dirty, e)
	}
	if len(dirty) == 0 {
		return nil
	}
	// Not synced: last-access times only order eviction, and a crash that
	// loses some costs a less apt eviction, not a result.
	if err := s.commit(b, pebble.NoSync); err != nil {
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
	var err error
	if s.failed.Load() == nil {
		err = s.flushLocked(context.Background())
	}
	return errors.Join(err, s.closeDB())
}

// closeDB closes the database, then the file system wrapper it used. After
// pebble panicked it leaves the database open: pebble may hold its own locks
// then, and closing it could wait for ever. Its goroutines and the
// directory's lock stay with the process.
func (s *Store) closeDB() (err error) {
	if s.ds != nil && s.failed.Load() == nil {
		err = s.closeDS()
	}
	return errors.Join(err, s.fsCloser.Close())
}

func (s *Store) closeDS() (err error) {
	defer s.catch(&err)
	return asCorrupt(s.dir, s.ds.Close())
}

// Stats returns the store's counters without touching the disk.
func (s *Store) Stats() Stats {
	return Stats{
		Entries:   int(s.nEntries.Load()),
		Bytes:     s.nBytes.Load(),
		Hits:      s.hits.Load(),
		Misses:    s.misses.Load(),
		Evictions: s.evictions.Load(),
		Budget:    s.budget,
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
	if err := s.unusable(); err != nil {
		s.mu.Unlock()
		return err
	}
	return nil
}

// rlockOpen is lockOpen for reading.
func (s *Store) rlockOpen(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	if err := s.unusable(); err != nil {
		s.mu.RUnlock()
		return err
	}
	return nil
}

// unusable returns ErrClosed after Close, the failure after pebble
// panicked, else nil. Called with mu held.
func (s *Store) unusable() error {
	if s.closed {
		return ErrClosed
	}
	if e := s.failed.Load(); e != nil {
		return e
	}
	return nil
}
