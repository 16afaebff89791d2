package providers

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/namespace"
	"github.com/ipfs/go-datastore/query"
	pebbleds "github.com/ipfs/go-ds-pebble"
)

// announcedPrefix holds the TaskCIDs this node announces without having
// computed them (doc.go). It lies outside kad-dht's /providers/ namespace,
// which the provider manager's garbage collector sweeps.
const announcedPrefix = "/gpunet/announced/"

// The sweeping provider's state (doc.go, Layout): the keys this node
// provides, and the provider's own schedule and queue.
const (
	sweepKeysPrefix  = "/gpunet/sweep/keys"
	sweepStatePrefix = "/gpunet/sweep/state"
)

// memTableSize is pebble's memtable, 2 MiB rather than its 4 MiB default: a
// provider record is about 100 bytes, so 2 MiB still holds ~20,000 writes
// between flushes, and a process that runs many nodes (tests, bench, the
// demo) pays for one per node.
const memTableSize = 2 << 20

// Store is a node's provider datastore and announcement set. It is safe for
// concurrent use.
type Store struct {
	dir string
	ds  *pebbleds.Datastore
	log *slog.Logger

	corrupt sync.Once // DataCorruption is logged once
}

// Open opens (creating it if needed) the store in dir. A database that does
// not open is removed and created afresh (doc.go, Durability), with a
// warning in log.
func Open(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{dir: dir, log: log}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the provider records directory: %w", err)
	}
	d, err := s.open()
	if err != nil {
		log.Warn("provider records do not open; starting with none (they come back from peers)", "dir", dir, "err", err)
		if rerr := os.RemoveAll(dir); rerr != nil {
			return nil, fmt.Errorf("provider records in %s do not open (%v), nor can they be removed: %w; remove the directory by hand", dir, err, rerr)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating the provider records directory: %w", err)
		}
		if d, err = s.open(); err != nil {
			return nil, fmt.Errorf("opening provider records in %s: %w", dir, err)
		}
	}
	s.ds = d
	return s, nil
}

func (s *Store) open() (*pebbleds.Datastore, error) {
	return pebbleds.NewDatastore(s.dir, pebbleds.WithPebbleOpts(&pebble.Options{
		// vfs.Default, not pebble's default FS: that one starts a
		// disk-health goroutine which outlives a failed Open, and a slow
		// disk under soft state is not worth a warning.
		FS:           vfs.Default,
		MemTableSize: memTableSize,
		Logger:       pebbleLogger{s.log},
		EventListener: &pebble.EventListener{
			BackgroundError: func(err error) {
				s.log.Warn("provider records: background error", "dir", s.dir, "err", err)
			},
			// Pebble's default ends the process. A damaged table here
			// costs some provider records, which the next reads report as
			// absent; deleting the directory while the node is stopped
			// starts it afresh.
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				s.corrupt.Do(func() {
					s.log.Error("provider records are damaged: lookups through this node may miss some; stop the node and delete the directory to start afresh",
						"dir", s.dir, "file", info.Path)
				})
			},
		},
	}))
}

// Datastore is what the DHT keeps its provider records in
// (dht.ProviderDatastore). It stays valid until Close; close the DHT first.
func (s *Store) Datastore() ds.Batching { return s.ds }

// SweepKeys is where kad-dht's sweeping provider keeps the keys this node
// provides (its keystore), SweepState where it keeps its reprovide history,
// cycle start and, at close, its provide queue. Both stay valid until Close;
// close the provider and its keystore first.
//
// Their Sync is a no-op: the keystore syncs after every write, which on
// pebble is a WAL fsync, one per batch of results, for state that is soft
// (doc.go, Durability: the node rebuilds the keystore from its results store
// at start).
func (s *Store) SweepKeys() ds.Batching {
	return unsynced{namespace.Wrap(s.ds, ds.NewKey(sweepKeysPrefix))}
}

// SweepState: see SweepKeys.
func (s *Store) SweepState() ds.Batching {
	return unsynced{namespace.Wrap(s.ds, ds.NewKey(sweepStatePrefix))}
}

// unsynced is a datastore whose Sync does nothing.
type unsynced struct{ ds.Batching }

func (unsynced) Sync(context.Context, ds.Key) error { return nil }

// Announce records that this node announces tc.
func (s *Store) Announce(ctx context.Context, tc cid.Cid) error {
	return s.ds.Put(ctx, announcedKey(tc), nil)
}

// Announced reports whether this node announces tc. A read error counts as
// no: the worst it costs is one more provide.
func (s *Store) Announced(ctx context.Context, tc cid.Cid) bool {
	ok, err := s.ds.Has(ctx, announcedKey(tc))
	return err == nil && ok
}

// Forget removes tc from the announced set.
func (s *Store) Forget(ctx context.Context, tc cid.Cid) error {
	return s.ds.Delete(ctx, announcedKey(tc))
}

// AnnouncedKeys lists the announced set. Keys that do not parse are
// dropped from it.
func (s *Store) AnnouncedKeys(ctx context.Context) ([]cid.Cid, error) {
	res, err := s.ds.Query(ctx, query.Query{Prefix: announcedPrefix, KeysOnly: true})
	if err != nil {
		return nil, fmt.Errorf("listing announced results: %w", err)
	}
	entries, err := res.Rest()
	if err != nil {
		return nil, fmt.Errorf("listing announced results: %w", err)
	}
	out := make([]cid.Cid, 0, len(entries))
	for _, e := range entries {
		c, err := cid.Decode(strings.TrimPrefix(e.Key, announcedPrefix))
		if err != nil {
			_ = s.ds.Delete(ctx, ds.RawKey(e.Key))
			continue
		}
		out = append(out, c)
	}
	return out, nil
}

// Close closes the database. The DHT must be closed first: its provider
// manager flushes buffered records on Close.
func (s *Store) Close() error {
	if s == nil || s.ds == nil {
		return nil
	}
	return s.ds.Close()
}

func announcedKey(tc cid.Cid) ds.Key { return ds.RawKey(announcedPrefix + tc.String()) }

// pebbleLogger routes pebble's messages to the node's logger; its routine
// reports (flushes, compactions) go to Debug.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l.Enabled(context.Background(), slog.LevelDebug) {
		p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf is a broken invariant inside pebble, which expects it not to
// return.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "component", "pebble")
	panic("pebble: " + msg)
}
