package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// ErrCorrupt means pebble found damage on disk (a checksum that does not
// match, a table it cannot read) or stopped on a broken invariant. The
// error's text names the store's directory and the fix: Repair, which
// `gpunet cache repair` runs and a daemon runs itself when it starts.
var ErrCorrupt = errors.New("results store is damaged")

// corruptError is an ErrCorrupt for one store. It wraps pebble's error too,
// but prints only its first line: pebble's errors carry stack traces and
// detail records on the lines after, and this text reaches people.
type corruptError struct {
	dir   string
	cause error
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("%v: %s: %s; %s", ErrCorrupt, e.dir, firstLine(e.cause), repairHint(e.dir))
}

func (e *corruptError) Unwrap() []error { return []error{ErrCorrupt, e.cause} }

// repairHint says what to do about a damaged store in dir. gpunet keeps its
// store in DATA/store, where `gpunet cache repair --data DATA` finds it.
func repairHint(dir string) string {
	repair := "store.Repair"
	if filepath.Base(dir) == "store" {
		repair = fmt.Sprintf("`gpunet cache repair --data %s` (with no daemon running on it; a daemon repairs its store when it starts)", filepath.Dir(dir))
	}
	return fmt.Sprintf("run %s to move it aside and keep every result that still verifies, or move %s aside by hand to start empty", repair, dir)
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// asCorrupt returns err as an ErrCorrupt for dir when pebble marked it as
// corruption, and err unchanged otherwise.
func asCorrupt(dir string, err error) error {
	if err == nil || errors.Is(err, ErrCorrupt) || !pebble.IsCorruptionError(err) {
		return err
	}
	return &corruptError{dir: dir, cause: err}
}

// errPebblePanic is the cause of an ErrCorrupt made from a panic inside
// pebble (see pebbleLogger.Fatalf).
var errPebblePanic = errors.New("pebble stopped on a broken invariant")

// catch turns a panic raised by pebble into an ErrCorrupt in *err. Deferred
// by every function of the store that calls into pebble, so that no panic
// crosses a function that holds mu without deferring its release: a read
// that panicked under the read lock used to leave it held, and the deferred
// Close on the way out then waited on it for ever. Pebble cannot be used
// after such a panic (it may hold its own locks), so the store fails every
// later call and does not close the database (see closeDB).
func (s *Store) catch(err *error) {
	r := recover()
	if r == nil {
		return
	}
	e := &corruptError{dir: s.dir, cause: fmt.Errorf("%w: %v", errPebblePanic, r)}
	s.failed.CompareAndSwap(nil, e)
	s.log.Error("results store failed", "dir", s.dir, "err", e)
	*err = e
}

// damage records corruption that pebble reports through its event
// listener: on a read, or in background work (compactions, table stats)
// that no caller waits on.
type damage struct {
	dir string
	log *slog.Logger
	// msg and level are those of the log line at the first corruption;
	// the zero values mean an error that says how to repair the store.
	msg   string
	level slog.Level
	// opened is set once Open returns: until then a corruption is Open's
	// error, not a log line.
	opened atomic.Bool
	once   sync.Once
	// seen is set at the first corruption reported.
	seen atomic.Bool
}

// listener is pebble's event listener for the store. Pebble's default
// DataCorruption handler calls Logger.Fatalf, which ends the process (or,
// with pebbleLogger, panics in whatever goroutine found the damage, often a
// compaction's, where nothing can recover it). Reporting it instead lets
// pebble go on: the read fails with a corruption error, which the store
// returns as ErrCorrupt, and a compaction that hits it fails and pebble
// avoids the damaged key range for a while (a "problem span"), so a daemon
// keeps serving what it can read until it restarts and repairs the store.
func (d *damage) listener() *pebble.EventListener {
	return &pebble.EventListener{
		BackgroundError: func(err error) {
			if pebble.IsCorruptionError(err) {
				return // DataCorruption reported it
			}
			d.log.Error("results store background error", "dir", d.dir, "err", firstLine(err))
		},
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			d.seen.Store(true)
			if !d.opened.Load() {
				return
			}
			// Once: a damaged block is reported on every read that meets it.
			d.once.Do(func() {
				msg, level := d.msg, d.level
				if msg == "" {
					msg, level = "results store is damaged: "+repairHint(d.dir), slog.LevelError
				}
				d.log.Log(context.Background(), level, msg, "dir", d.dir, "file", info.Path, "err", firstLine(info.Details))
			})
		},
	}
}
