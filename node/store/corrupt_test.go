package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node/store/storetest"
)

// within runs f and fails the test if it has not returned within a minute:
// the bound on a call that used to hang. Generous: nothing here is timed.
// f runs on another goroutine, so it reports with t.Error, not t.Fatal.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s did not return within a minute", what)
	}
}

// damagedStore makes a store in DIR/store holding n results, one of them
// pinned, closes it (Close flushes everything to a table) and damages the
// table. It returns the store's directory and the results.
func damagedStore(t *testing.T, n int) (string, []fixture) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	s, err := Open(dir, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	var fs []fixture
	for i := range n {
		f := makeResult(t, key, fmt.Sprint("damaged ", i), "k", randBlock(uint64(i), 3000))
		mustPut(t, s, f)
		fs = append(fs, f)
	}
	if err := s.Pin(context.Background(), fs[0].task); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	storetest.DamageTable(t, dir)
	return dir, fs
}

func TestOpenReportsADamagedStore(t *testing.T) {
	dir, _ := damagedStore(t, 8)
	for range 2 { // the second time: the first closed everything it opened
		var err error
		within(t, "Open of a damaged store", func() {
			var s *Store
			if s, err = Open(dir, WithLogger(testLogger(t))); err == nil {
				s.Close()
			}
		})
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open of a damaged store: %v, want ErrCorrupt", err)
		}
		msg := err.Error()
		for _, want := range []string{dir, "checksum mismatch", "gpunet cache repair --data " + filepath.Dir(dir), "aside"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not say %q", msg, want)
			}
		}
		if strings.Contains(msg, "\n") {
			t.Errorf("error %q is more than one line", msg)
		}
	}
}

// TestDamageFoundWhileOpen: damage that appears under an open store (it
// passed Open's read) fails the reads that meet it with ErrCorrupt, neither
// a panic nor a hang, and Close still returns. Not covered, and not solved:
// a compaction that must read the damaged table (pebble checks every block
// of it for a single flipped bit, and did not finish within a minute here),
// and writes that pile up behind failing compactions. Damage found at
// start is moved aside and repaired (Open reads everything first).
func TestDamageFoundWhileOpen(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	key := newKey(t)
	var fs []fixture
	for i := range 8 {
		f := makeResult(t, key, fmt.Sprint("open ", i), "k", randBlock(uint64(i), 3000))
		mustPut(t, s, f)
		fs = append(fs, f)
	}
	if err := s.ds.DB.Flush(); err != nil {
		t.Fatal(err)
	}
	storetest.DamageTable(t, s.dir)

	var bad int
	within(t, "reading a damaged store", func() {
		for _, f := range fs {
			_, err := s.Get(ctx, f.task)
			switch {
			case errors.Is(err, ErrCorrupt):
				bad++
			case err != nil:
				t.Errorf("Get %s: %v, want a result or ErrCorrupt", f.task, err)
			}
		}
	})
	if bad == 0 {
		t.Fatal("no read met the damage")
	}
	if st := s.Stats(); st.Misses != uint64(bad) {
		t.Errorf("%d misses, want %d: a damaged result is a miss", st.Misses, bad)
	}

	within(t, "Close", func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

// TestPanicInPebbleReleasesTheLock: a panic from pebble (its Fatalf) under
// the read lock comes back as ErrCorrupt, and later calls, Close among them,
// return instead of waiting on a lock the panic left held.
func TestPanicInPebbleReleasesTheLock(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	f := makeResult(t, newKey(t), "a panic", "k", randBlock(1, 100))
	mustPut(t, s, f)
	// Pebble panics on a broken invariant (pebbleLogger.Fatalf); with no
	// database behind it, any call into it panics as well.
	db := s.ds.DB
	s.ds.DB = nil
	defer db.Close() // the failed store leaves it open
	within(t, "a read that panics, then Close", func() {
		_, err := s.Get(ctx, f.task)
		if !errors.Is(err, ErrCorrupt) || !errors.Is(err, errPebblePanic) {
			t.Errorf("Get after a panic in pebble: %v, want ErrCorrupt", err)
		}
		if _, err := s.List(ctx); !errors.Is(err, ErrCorrupt) {
			t.Errorf("List after the store failed: %v, want ErrCorrupt", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close after the store failed: %v", err)
		}
	})
}

func TestRepairKeepsWhatVerifies(t *testing.T) {
	ctx := context.Background()
	const n = 8
	dir, fs := damagedStore(t, n)
	before := hashTree(t, dir)
	clk := newFakeClock()

	var rep RepairReport
	var err error
	within(t, "Repair", func() { rep, err = Repair(dir, WithLogger(testLogger(t)), WithClock(clk.Now)) })
	if err != nil {
		t.Fatalf("Repair: %v", err)
	}
	if want := dir + ".damaged-" + clk.Now().UTC().Format("20060102T150405Z"); rep.Damaged != want {
		t.Errorf("moved aside to %s, want %s", rep.Damaged, want)
	}
	if got := hashTree(t, rep.Damaged); !maps.Equal(got, before) {
		t.Error("the damaged store moved aside is not as it was found")
	}
	if rep.Kept+len(rep.Lost) != n || rep.Unlisted != "" {
		t.Fatalf("report %+v: want %d results kept or lost, all listed", rep, n)
	}
	if len(rep.Lost) == 0 || rep.Kept == 0 {
		t.Fatalf("report %+v: the damage should cost some results and spare others", rep)
	}

	s := openStore(t, dir)
	if st := s.Stats(); st.Entries != rep.Kept {
		t.Errorf("repaired store holds %d results, report says %d kept", st.Entries, rep.Kept)
	}
	for _, f := range fs {
		lost := slices.ContainsFunc(rep.Lost, f.result.Equals)
		r, err := s.Get(ctx, f.task)
		switch {
		case lost && !errors.Is(err, ErrNotFound):
			t.Errorf("lost result %s: Get says %v, want ErrNotFound", f.result, err)
		case !lost && err != nil:
			t.Errorf("kept result %s: %v", f.result, err)
		case !lost && (!r.CID.Equals(f.result) || !bytes.Equal(r.Blocks[0], f.blocks[0])):
			t.Errorf("kept result %s comes back as %s", f.result, r.CID)
		}
	}
	l, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range l {
		if e.Pinned != e.ResultCID.Equals(fs[0].result) {
			t.Errorf("%s pinned: %v; only %s was", e.ResultCID, e.Pinned, fs[0].result)
		}
	}
	checkInvariants(t, s)
}

func TestRepairRefusesAStoreInUse(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir)
	if _, err := Repair(dir, WithLogger(testLogger(t))); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Errorf("Repair of an open store: %v, want a refusal", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the store in use moved: %v", err)
	}
}

// TestRepairOfAnUnreadableStore: a store pebble cannot open at all (here
// its MANIFEST is gone) is moved aside all the same, and a fresh store
// starts empty, with the reason in the report.
func TestRepairOfAnUnreadableStore(t *testing.T) {
	dir, _ := damagedStore(t, 2)
	ms, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*"))
	for _, m := range ms {
		if err := os.Remove(m); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := Repair(dir, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatalf("Repair: %v", err)
	}
	if rep.Kept != 0 || rep.Unlisted == "" {
		t.Errorf("report %+v: want nothing kept, and why", rep)
	}
	if s := openStore(t, dir); s.Stats().Entries != 0 {
		t.Errorf("fresh store holds %d results", s.Stats().Entries)
	}
}

// hashTree returns the SHA-256 of every file under dir, by relative path.
func hashTree(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	out := make(map[string][32]byte)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
