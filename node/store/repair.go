package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ipfs/go-cid"

	"github.com/gpunet/gpunet/protocol"
)

// RepairReport is what Repair did.
type RepairReport struct {
	// Damaged is where the damaged store now lies, untouched. Nothing reads
	// it again: delete it once the repaired store has served a while.
	Damaged string `json:"damaged"`
	// Kept counts the results copied into the fresh store: each one's
	// manifest and blocks verified against their CIDs, so each is exactly
	// the result first stored.
	Kept int `json:"kept"`
	// Lost lists the ResultCIDs the damaged store names whose manifest or
	// blocks could not be read or did not verify. The node computes or
	// fetches them again when asked.
	Lost []cid.Cid `json:"lost"`
	// Unlisted, when not empty, says why part of the damaged store's index
	// could not be read: results named only there are lost without being
	// counted in Lost.
	Unlisted string `json:"unlisted,omitempty"`
}

// Repair moves the store in dir aside, to dir.damaged-<UTC time>, and
// starts a fresh store in dir holding every result of the old one that
// still verifies: results are content-addressed, so anything that verifies
// is the result as first stored, whatever else is damaged. Pins and
// last-access times are kept where their records can be read.
//
// The store must not be open, in this process or another: Repair takes
// the directory's lock first and fails if it cannot. opts are those the
// store is opened with (the budget applies to the fresh store). Once the
// store is moved aside, Repair returns a report even when it fails later,
// so the caller can say where the damaged store went.
func Repair(dir string, opts ...Option) (RepairReport, error) {
	var rep RepairReport
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return rep, err
	}
	if _, err := os.Stat(dir); err != nil {
		return rep, fmt.Errorf("repairing results store: %w", err)
	}
	damaged, err := moveAside(dir, cfg.now())
	if err != nil {
		return rep, err
	}
	rep.Damaged = damaged
	log := cfg.logger.With("damaged", damaged)
	log.Info("moved the damaged results store aside", "dir", dir)

	fresh, err := Open(dir, opts...)
	if err != nil {
		return rep, fmt.Errorf("starting a fresh results store in %s: %w", dir, err)
	}
	err = fresh.salvage(damaged, &rep)
	err = errors.Join(err, fresh.Close())
	log.Info("results store repaired", "dir", dir, "kept", rep.Kept, "lost", len(rep.Lost), "unlisted", rep.Unlisted)
	return rep, err
}

// moveAside renames dir to dir.damaged-<time>, holding the store's lock
// meanwhile so that no process has it open.
func moveAside(dir string, now time.Time) (string, error) {
	lock, err := pebble.LockDirectory(dir, vfs.Default)
	if err != nil {
		return "", fmt.Errorf("repairing results store %s (is a gpunet process using it? stop it first): %w", dir, err)
	}
	defer lock.Close()
	base := dir + ".damaged-" + now.UTC().Format("20060102T150405Z")
	to := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(to); errors.Is(err, fs.ErrNotExist) {
			break
		}
		to = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(dir, to); err != nil {
		return "", fmt.Errorf("moving the damaged results store aside: %w", err)
	}
	return to, nil
}

// salvage copies into s every result of the store in damaged that
// verifies. It reads the damaged store through pebble, read-only, one key
// at a time, so that a damaged block costs only the results whose records
// it holds.
func (s *Store) salvage(damaged string, rep *RepairReport) (err error) {
	// Damage is expected here: Info, once.
	dmg := &damage{dir: damaged, log: s.log, msg: "skipping damaged data in the results store moved aside", level: slog.LevelInfo}
	dmg.opened.Store(true)
	db, err := openDamaged(damaged, s, dmg)
	if err != nil {
		rep.Unlisted = firstLine(err)
		return nil // nothing to salvage; the fresh store stands
	}
	// After a panic pebble cannot be closed safely (see Store.catch).
	panicked := true
	defer func() {
		if !panicked {
			err = errors.Join(err, db.Close())
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("salvaging results: %w: %v", errPebblePanic, r)
		}
	}()
	ctx := context.Background()

	// Three records name each result, each in its own key range: its
	// manifest's key, its meta's key and its task index entry's value. A
	// damaged block hides one range's names only from the point where it
	// lies on, so every name readable anywhere is tried.
	seen := make(map[cid.Cid]bool)
	var names []cid.Cid
	var unlisted []string
	for _, src := range []struct {
		prefix string
		name   func(key, value []byte) (cid.Cid, error)
	}{
		{manifestsPrefix, func(k, _ []byte) (cid.Cid, error) { return cid.Decode(string(k[len(manifestsPrefix):])) }},
		{metaPrefix, func(k, _ []byte) (cid.Cid, error) { return cid.Decode(string(k[len(metaPrefix):])) }},
		{tasksPrefix, func(_, v []byte) (cid.Cid, error) { return cid.Cast(v) }},
	} {
		err := scanPrefix(db, src.prefix, func(k, v []byte) {
			if c, err := src.name(k, v); err == nil && !seen[c] {
				seen[c] = true
				names = append(names, c)
			}
		})
		if err != nil {
			unlisted = append(unlisted, fmt.Sprintf("%s: %s", strings.Trim(src.prefix, "/"), firstLine(err)))
		}
	}
	if len(unlisted) == 3 {
		rep.Unlisted = strings.Join(unlisted, "; ")
	}

	for _, rc := range names {
		if err := s.salvageOne(ctx, db, rc); err != nil {
			s.log.Debug("result lost with the damaged store", "result", rc, "err", firstLine(err))
			rep.Lost = append(rep.Lost, rc)
			continue
		}
		rep.Kept++
	}
	// One sync for all the puts (salvageOne does not sync each).
	err = s.ds.DB.LogData(nil, pebble.Sync)
	panicked = false
	return err
}

// openDamaged opens the damaged store read-only: pebble replays its
// write-ahead log in memory and writes nothing, so the damaged store stays
// as it was found.
func openDamaged(dir string, s *Store, dmg *damage) (db *pebble.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errPebblePanic, r)
		}
	}()
	return pebble.Open(dir, &pebble.Options{
		ReadOnly: true, Logger: pebbleLogger{s.log}, EventListener: dmg.listener(),
	})
}

// scanPrefix calls fn for each record under prefix until the end or the
// first error.
func scanPrefix(db *pebble.DB, prefix string, fn func(k, v []byte)) (err error) {
	upper := []byte(prefix)
	upper[len(upper)-1]++ // every prefix ends in '/'
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: upper})
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
		var v []byte
		if v, err = it.ValueAndErr(); err != nil {
			break
		}
		fn(it.Key(), v)
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	return err
}

// salvageOne copies result rc from db into s if its manifest hashes to rc
// and Put accepts it (signature, every block against its CID). It keeps
// the result's pin and times when its meta record can be read.
func (s *Store) salvageOne(ctx context.Context, db *pebble.DB, rc cid.Cid) error {
	get := func(k []byte) ([]byte, error) {
		v, closer, err := db.Get(k)
		if err != nil {
			return nil, err
		}
		defer closer.Close()
		return bytes.Clone(v), nil
	}
	if rc.Prefix().Codec == cid.Raw {
		// A lone block (an input image): its bytes are all there is.
		b, err := get(blockKey(rc).Bytes())
		if err != nil {
			return fmt.Errorf("block: %w", err)
		}
		if err := protocol.VerifyBlock(rc, b); err != nil {
			return err
		}
		_, err = s.PutBlock(ctx, b)
		return err
	}
	mb, err := get(manifestKey(rc).Bytes())
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := protocol.VerifyBlock(rc, mb); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	m, err := protocol.DecodeManifest(mb)
	if err != nil {
		return err
	}
	blocks := make([][]byte, len(m.Outputs))
	for i, o := range m.Outputs {
		if blocks[i], err = get(blockKey(o.CID.Cid).Bytes()); err != nil {
			return fmt.Errorf("output %d: %w", i, err)
		}
	}
	var old *entry
	if v, err := get(metaKey(rc).Bytes()); err == nil {
		old, _ = decodeMeta(rc, v) // a result without its times is still good
	}
	return s.putSalvaged(ctx, m, mb, blocks, old)
}

// putSalvaged stores a result read from a damaged store, unsynced (salvage
// syncs once at the end), and carries over pin and times from old, its
// record there, when there is one.
func (s *Store) putSalvaged(ctx context.Context, m *protocol.Manifest, mb []byte, blocks [][]byte, old *entry) error {
	e, distinct, err := s.verify(m, mb, blocks)
	if err != nil {
		return err
	}
	if n := e.bytes(); n > s.budget {
		return fmt.Errorf("%w: %d bytes, budget %d", ErrTooLarge, n, s.budget)
	}
	if err := s.lockOpen(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if s.tasks[e.task] != nil {
		return nil // another result for the task came first; it is as good
	}
	e.created = s.nowMs()
	e.lastAccess.Store(e.created)
	if old != nil {
		e.created, e.pinned = old.created, old.pinned
		e.lastAccess.Store(old.lastAccess.Load())
	}
	if err := s.writeLocked(ctx, e, mb, distinct, pebble.NoSync); err != nil {
		return err
	}
	s.addLocked(e)
	s.tasks[e.task] = e
	if _, _, err := s.evictLocked(ctx, e); err != nil {
		s.log.Error("evicting results during a repair failed", "err", err)
	}
	return nil
}
