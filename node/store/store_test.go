package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	car "github.com/ipld/go-car/v2"
	"github.com/ipld/go-ipld-prime"
	"github.com/ipld/go-ipld-prime/codec/dagcbor"
	cidlink "github.com/ipld/go-ipld-prime/linking/cid"
	"github.com/ipld/go-ipld-prime/traversal"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"

	"github.com/gpunet/gpunet/protocol"
)

// The store starts no goroutines, and pebble's must end with Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPutGetRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	img, caption := randBlock(1, 300<<10), []byte("a caption")
	// The image appears twice: the store keeps it once.
	f := makeResult(t, newKey(t), "a red fox in the snow", "sketch-v1", img, caption, img)
	mustPut(t, s, f)

	for _, tc := range []struct {
		name string
		get  func() (*Result, error)
	}{
		{"Get", func() (*Result, error) { return s.Get(ctx, f.task) }},
		{"GetByResult", func() (*Result, error) { return s.GetByResult(ctx, f.result) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tc.get()
			if err != nil {
				t.Fatal(err)
			}
			if !r.CID.Equals(f.result) || !bytes.Equal(r.ManifestBytes, f.manifest) {
				t.Errorf("got result %s, want %s with the manifest put", r.CID, f.result)
			}
			if !slices.EqualFunc(r.Blocks, f.blocks, bytes.Equal) {
				t.Errorf("blocks differ from those put")
			}
			if r.Manifest.Task.Prompt != "a red fox in the snow" || !r.Manifest.TaskCID.Equals(f.task) {
				t.Errorf("manifest task %q (%s)", r.Manifest.Task.Prompt, r.Manifest.TaskCID)
			}
		})
	}

	if !s.Has(ctx, f.task) {
		t.Error("Has(task) = false after Put")
	}
	if s.Has(ctx, f.result) {
		t.Error("Has takes a TaskCID; a ResultCID must not match")
	}
	if m, err := s.GetManifest(ctx, f.result); err != nil || !bytes.Equal(m, f.manifest) {
		t.Errorf("GetManifest: %v", err)
	}
	if b, err := s.GetBlock(ctx, protocol.RawCID(img)); err != nil || !bytes.Equal(b, img) {
		t.Errorf("GetBlock: %v", err)
	}
	unknown := protocol.RawCID([]byte("never stored"))
	if _, err := s.GetBlock(ctx, unknown); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetBlock(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, unknown); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	want := int64(len(f.manifest) + len(img) + len(caption))
	if st := s.Stats(); st.Entries != 1 || st.Bytes != want || st.Budget != DefaultBudget {
		t.Errorf("Stats = %+v, want 1 entry of %d bytes, budget %d", st, want, DefaultBudget)
	}
	checkInvariants(t, s)
}

func TestFirstResultForATaskWins(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	key := newKey(t)
	first := makeResult(t, key, "a lighthouse", "sketch-v1", randBlock(1, 1000))
	second := makeResult(t, key, "a lighthouse", "sketch-v2", randBlock(2, 1000))
	if !first.task.Equals(second.task) || first.result.Equals(second.result) {
		t.Fatal("fixtures must share a task and differ in result")
	}
	mustPut(t, s, first)
	mustPut(t, s, first) // idempotent

	got, err := s.Put(ctx, second.manifest, second.blocks)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equals(first.result) {
		t.Errorf("Put of a second result returned %s, want the first %s", got, first.result)
	}
	if _, err := s.GetByResult(ctx, second.result); !errors.Is(err, ErrNotFound) {
		t.Errorf("second result is stored: %v", err)
	}
	if st := s.Stats(); st.Entries != 1 {
		t.Errorf("%d entries, want 1", st.Entries)
	}
	checkInvariants(t, s) // the second result's block was not written
}

func TestSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clk := newFakeClock()
	key := newKey(t)
	a := makeResult(t, key, "a castle", "k", randBlock(1, 5000))
	b := makeResult(t, key, "a boat", "k", randBlock(2, 7000), randBlock(3, 100))

	s1, err := Open(dir, WithLogger(testLogger(t)), WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s1, a)
	mustPut(t, s1, b)
	if err := s1.Pin(ctx, a.task); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	readAt := clk.Now()
	if _, err := s1.Get(ctx, b.task); err != nil {
		t.Fatal(err)
	}
	before := s1.Stats()
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openStore(t, dir, WithClock(clk.Now))
	after := s2.Stats()
	if after.Entries != before.Entries || after.Bytes != before.Bytes {
		t.Errorf("after restart %+v, before %+v", after, before)
	}
	for _, f := range []fixture{a, b} {
		r, err := s2.Get(ctx, f.task)
		if err != nil {
			t.Fatalf("Get after restart: %v", err)
		}
		if !r.CID.Equals(f.result) || !slices.EqualFunc(r.Blocks, f.blocks, bytes.Equal) {
			t.Errorf("result %s changed across restart", f.result)
		}
	}
	list, err := s2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list {
		switch {
		case e.ResultCID.Equals(a.result) && !e.Pinned:
			t.Error("pin lost across restart")
		case e.ResultCID.Equals(b.result) && !e.LastAccess.Equal(readAt):
			// Get after the restart ran at the same fake time, so the last
			// access must be exactly the read before Close.
			t.Errorf("last access %v, want %v saved by Close", e.LastAccess, readAt)
		}
	}
	checkInvariants(t, s2)
}

func TestCorruptDataIsNeverServed(t *testing.T) {
	shared := randBlock(10, 4000)
	cases := []struct {
		name string
		// damage writes under the store's keys behind its back.
		damage func(t *testing.T, s *Store, a fixture)
		// read is the call that must notice; nil means Get(a.task).
		read    func(s *Store, a fixture) error
		wantErr error
		// dropped are the fixtures (by index: 0 a, 1 b) gone afterwards.
		dropped []int
	}{
		{
			name: "own block rewritten",
			damage: func(t *testing.T, s *Store, a fixture) {
				bad := bytes.Clone(a.blocks[1])
				bad[0] ^= 0xff
				putRaw(t, s, blockKey(protocol.RawCID(a.blocks[1])), bad)
			},
			wantErr: protocol.ErrBadCID,
			dropped: []int{0},
		},
		{
			name: "shared block rewritten",
			damage: func(t *testing.T, s *Store, a fixture) {
				putRaw(t, s, blockKey(protocol.RawCID(shared)), []byte("bit rot"))
			},
			wantErr: protocol.ErrBadCID,
			dropped: []int{0, 1},
		},
		{
			name: "shared block rewritten, found by GetBlock",
			damage: func(t *testing.T, s *Store, a fixture) {
				putRaw(t, s, blockKey(protocol.RawCID(shared)), []byte("bit rot"))
			},
			read: func(s *Store, a fixture) error {
				_, err := s.GetBlock(context.Background(), protocol.RawCID(shared))
				return err
			},
			wantErr: protocol.ErrBadCID,
			dropped: []int{0, 1},
		},
		{
			name: "manifest rewritten",
			damage: func(t *testing.T, s *Store, a fixture) {
				putRaw(t, s, manifestKey(a.result), []byte{0xa0})
			},
			wantErr: protocol.ErrBadCID,
			dropped: []int{0},
		},
		{
			name: "manifest rewritten, found by GetManifest",
			damage: func(t *testing.T, s *Store, a fixture) {
				putRaw(t, s, manifestKey(a.result), []byte{0xa0})
			},
			read: func(s *Store, a fixture) error {
				_, err := s.GetManifest(context.Background(), a.result)
				return err
			},
			wantErr: protocol.ErrBadCID,
			dropped: []int{0},
		},
		{
			name: "own block deleted",
			damage: func(t *testing.T, s *Store, a fixture) {
				if err := s.ds.Delete(context.Background(), blockKey(protocol.RawCID(a.blocks[1]))); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: ErrNotFound,
			dropped: []int{0},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t, t.TempDir())
			key := newKey(t)
			a := makeResult(t, key, "a", "k", shared, randBlock(11, 3000))
			b := makeResult(t, key, "b", "k", shared, randBlock(12, 3000))
			c := makeResult(t, key, "c", "k", randBlock(13, 3000))
			fixtures := []fixture{a, b, c}
			for _, f := range fixtures {
				mustPut(t, s, f)
			}

			tc.damage(t, s, a)
			read := tc.read
			if read == nil {
				read = func(s *Store, a fixture) error { _, err := s.Get(ctx, a.task); return err }
			}
			if err := read(s, a); !errors.Is(err, tc.wantErr) {
				t.Fatalf("read after damage: %v, want %v", err, tc.wantErr)
			}

			for i, f := range fixtures {
				dropped := slices.Contains(tc.dropped, i)
				if s.Has(ctx, f.task) == dropped {
					t.Errorf("result %d: held %v, want %v", i, !dropped, !dropped)
				}
				_, err := s.Get(ctx, f.task)
				if dropped && !errors.Is(err, ErrNotFound) {
					t.Errorf("dropped result %d: Get = %v, want ErrNotFound", i, err)
				}
				if !dropped && err != nil {
					t.Errorf("intact result %d: %v", i, err)
				}
			}
			checkInvariants(t, s) // the bad data is gone from disk too

			// A fresh copy heals the store.
			mustPut(t, s, a)
			if _, err := s.Get(ctx, a.task); err != nil {
				t.Errorf("Get after putting the result again: %v", err)
			}
			checkInvariants(t, s)
		})
	}
}

// putRaw writes under a store key behind the store's back.
func putRaw(t *testing.T, s *Store, k ds.Key, v []byte) {
	t.Helper()
	if err := s.ds.Put(context.Background(), k, v); err != nil {
		t.Fatal(err)
	}
}

func TestPutRejects(t *testing.T) {
	key := newKey(t)
	img := randBlock(1, 2000)
	good := makeResult(t, key, "a tree", "k", img, randBlock(2, 100))

	resigned := func(edit func(m *protocol.Manifest), sign bool) []byte {
		m, err := protocol.DecodeManifest(good.manifest)
		if err != nil {
			t.Fatal(err)
		}
		edit(m)
		if sign {
			m, err = protocol.NewManifest(m.Task, m.Outputs, m.Kernel, m.Created, key)
			if err != nil {
				t.Fatal(err)
			}
		}
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	flipped := bytes.Clone(img)
	flipped[100] ^= 1

	cases := []struct {
		name     string
		manifest []byte
		blocks   [][]byte
		want     error
	}{
		{"not CBOR", []byte("not a manifest"), good.blocks, protocol.ErrBadManifest},
		{"edited after signing", resigned(func(m *protocol.Manifest) { m.Kernel = "forged" }, false), good.blocks, protocol.ErrBadManifest},
		{"fewer blocks than outputs", good.manifest, good.blocks[:1], protocol.ErrBadManifest},
		{"more blocks than outputs", good.manifest, append(slices.Clone(good.blocks), img), protocol.ErrBadManifest},
		{"block does not match its CID", good.manifest, [][]byte{flipped, good.blocks[1]}, protocol.ErrBadCID},
		{"blocks swapped", good.manifest, [][]byte{good.blocks[1], good.blocks[0]}, protocol.ErrBadCID},
		{"block over the cap", good.manifest, [][]byte{make([]byte, protocol.MaxBlockBytes+1), good.blocks[1]}, protocol.ErrBadCID},
		{"manifest size lies", resigned(func(m *protocol.Manifest) { m.Outputs[0].Size++ }, true), good.blocks, protocol.ErrBadManifest},
		{"larger than the budget", makeResult(t, key, "big", "k", randBlock(3, 70<<10)).manifest, [][]byte{randBlock(3, 70<<10)}, ErrTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), WithBudget(64<<10))
			if _, err := s.Put(context.Background(), tc.manifest, tc.blocks); !errors.Is(err, tc.want) {
				t.Fatalf("Put = %v, want %v", err, tc.want)
			}
			if st := s.Stats(); st.Entries != 0 || st.Bytes != 0 {
				t.Errorf("a rejected Put stored something: %+v", st)
			}
			checkInvariants(t, s) // and wrote nothing to disk
		})
	}
}

func TestLRUEvictsLeastRecentlyUsedNeverPinned(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	key := newKey(t)
	const blockSize = 10_000
	fx := make(map[string]fixture)
	for i, name := range []string{"A", "B", "C", "D", "E", "F"} {
		fx[name] = makeResult(t, key, "prompt "+name, "k", randBlock(uint64(i), blockSize))
	}
	one := int64(len(fx["A"].manifest) + blockSize)
	// Room for three results and a half: manifests differ by a few bytes.
	s := openStore(t, t.TempDir(), WithClock(clk.Now), WithBudget(3*one+one/2))

	steps := []struct {
		op, name string
		held     string // results held after the step
	}{
		{"put", "A", "A"},
		{"put", "B", "AB"},
		{"put", "C", "ABC"},
		{"get", "A", "ABC"}, // A is now the most recent
		{"pin", "B", "ABC"}, // B is the least recent but pinned
		{"put", "D", "ABD"}, // evicts C, the least recent unpinned
		{"put", "E", "BDE"}, // evicts A (D and E are newer)
		{"get", "D", "BDE"},
		{"put", "F", "BDF"}, // evicts E: D was read after E was put
	}
	for i, st := range steps {
		clk.Advance(time.Second)
		f := fx[st.name]
		var err error
		switch st.op {
		case "put":
			_, err = s.Put(ctx, f.manifest, f.blocks)
		case "get":
			_, err = s.Get(ctx, f.task)
		case "pin":
			err = s.Pin(ctx, f.result)
		}
		if err != nil {
			t.Fatalf("step %d %s %s: %v", i, st.op, st.name, err)
		}
		var held string
		for _, name := range []string{"A", "B", "C", "D", "E", "F"} {
			if s.Has(ctx, fx[name].task) {
				held += name
			}
		}
		if held != st.held {
			t.Fatalf("after step %d (%s %s): held %s, want %s", i, st.op, st.name, held, st.held)
		}
		if got := s.Stats().Bytes; got > s.Stats().Budget {
			t.Fatalf("after step %d: %d bytes over budget %d", i, got, s.Stats().Budget)
		}
	}
	// C, A and E were evicted, one at a time.
	if ev := s.Stats().Evictions; ev != 3 {
		t.Errorf("Stats().Evictions = %d, want 3", ev)
	}
	// Evicted blocks are gone from disk, not only from the index.
	if _, err := s.GetBlock(ctx, protocol.RawCID(fx["C"].blocks[0])); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetBlock of an evicted block = %v, want ErrNotFound", err)
	}
	checkInvariants(t, s)
}

func TestPinnedResultsStayOverBudget(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	key := newKey(t)
	var fs []fixture
	for i := range 4 {
		fs = append(fs, makeResult(t, key, fmt.Sprint("prompt ", i), "k", randBlock(uint64(i), 10_000)))
	}
	one := int64(len(fs[0].manifest) + 10_000)
	s := openStore(t, t.TempDir(), WithClock(clk.Now), WithBudget(2*one+one/2))

	for _, f := range fs[:2] {
		clk.Advance(time.Second)
		mustPut(t, s, f)
		if err := s.Pin(ctx, f.task); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(time.Second)
	mustPut(t, s, fs[2]) // nothing evictable: the store goes over budget
	if st := s.Stats(); st.Entries != 3 || st.Bytes <= st.Budget {
		t.Fatalf("Stats = %+v, want 3 entries over budget", st)
	}
	clk.Advance(time.Second)
	mustPut(t, s, fs[3]) // evicts fs[2], the only unpinned one but the new
	for i, want := range []bool{true, true, false, true} {
		if s.Has(ctx, fs[i].task) != want {
			t.Errorf("result %d held = %v, want %v", i, !want, want)
		}
	}

	if err := s.Unpin(ctx, fs[0].result); err != nil {
		t.Fatal(err)
	}
	removed, freed, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if removed != 1 || freed != int64(len(fs[0].manifest)+10_000) || s.Has(ctx, fs[0].task) {
		t.Errorf("GC removed %d (%d bytes), want result 0 evicted once unpinned", removed, freed)
	}
	if st := s.Stats(); st.Bytes > st.Budget {
		t.Errorf("after GC %d bytes, budget %d", st.Bytes, st.Budget)
	}
	checkInvariants(t, s)
}

func TestSharedBlocksAreRefcounted(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	key := newKey(t)
	shared, own := randBlock(1, 3000), randBlock(2, 2000)
	a := makeResult(t, key, "a", "k", shared, own)
	b := makeResult(t, key, "b", "k", shared)
	mustPut(t, s, a)
	mustPut(t, s, b)
	if got, want := s.Stats().Bytes, int64(len(a.manifest)+len(b.manifest)+len(shared)+len(own)); got != want {
		t.Errorf("Bytes = %d, want %d (shared block once)", got, want)
	}

	if err := s.Remove(ctx, a.task); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetBlock(ctx, protocol.RawCID(shared)); err != nil {
		t.Errorf("shared block gone while b uses it: %v", err)
	}
	if _, err := s.GetBlock(ctx, protocol.RawCID(own)); !errors.Is(err, ErrNotFound) {
		t.Errorf("a's own block: %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, b.task); err != nil {
		t.Errorf("Get(b): %v", err)
	}
	checkInvariants(t, s)

	if err := s.Remove(ctx, b.result); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, b.result); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
	if st := s.Stats(); st.Entries != 0 || st.Bytes != 0 {
		t.Errorf("Stats = %+v after removing everything", st)
	}
	checkInvariants(t, s) // the shared block went with its last result
}

func TestGCRemovesOrphans(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	key := newKey(t)
	a := makeResult(t, key, "kept", "k", randBlock(1, 1000))
	mustPut(t, s, a)

	orphan := randBlock(2, 1500)
	orphanCID := protocol.RawCID(orphan)
	stray := makeResult(t, key, "stray", "k", randBlock(3, 10))
	putRaw(t, s, blockKey(orphanCID), orphan)
	putRaw(t, s, manifestKey(stray.result), stray.manifest)
	putRaw(t, s, taskKey(stray.task), stray.result.Bytes())

	if _, err := s.GetBlock(ctx, orphanCID); !errors.Is(err, ErrNotFound) {
		t.Errorf("orphan block served: %v", err)
	}
	removed, freed, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantFreed := int64(len(orphan) + len(stray.manifest) + len(stray.result.Bytes()))
	if removed != 3 || freed != wantFreed {
		t.Errorf("GC = %d records, %d bytes; want 3, %d", removed, freed, wantFreed)
	}
	if _, err := s.Get(ctx, a.task); err != nil {
		t.Errorf("GC touched a live result: %v", err)
	}
	checkInvariants(t, s)

	if removed, _, err := s.GC(ctx); err != nil || removed != 0 {
		t.Errorf("second GC = %d, %v; want nothing to do", removed, err)
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	key := newKey(t)
	var fs []fixture
	for i := range 16 {
		// Consecutive results share a block, so eviction and refcounts interact.
		fs = append(fs, makeResult(t, key, fmt.Sprint("prompt ", i), "k",
			randBlock(uint64(i), 4000), randBlock(uint64(100+i/2), 3000)))
	}
	s := openStore(t, t.TempDir(), WithBudget(6*8000))

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 60 {
				f := fs[rng.IntN(len(fs))]
				var err error
				switch op := rng.IntN(10); op {
				case 0, 1, 2:
					_, err = s.Put(ctx, f.manifest, f.blocks)
				case 3, 4, 5:
					var r *Result
					if r, err = s.Get(ctx, f.task); err == nil && !bytes.Equal(r.Blocks[0], f.blocks[0]) {
						t.Errorf("Get returned the wrong block")
					}
				case 6:
					_, err = s.GetBlock(ctx, protocol.RawCID(f.blocks[1]))
				case 7:
					if err = s.Pin(ctx, f.task); err == nil {
						err = s.Unpin(ctx, f.task)
					}
				case 8:
					_, _, err = s.GC(ctx)
				case 9:
					if _, err = s.List(ctx); err == nil {
						err = s.ExportCAR(ctx, f.result, io.Discard)
					}
				}
				if err != nil && !errors.Is(err, ErrNotFound) {
					t.Errorf("goroutine %d: %v", g, err)
				}
				_ = s.Stats()
			}
		})
	}
	wg.Wait()
	if st := s.Stats(); st.Bytes > st.Budget {
		t.Errorf("over budget after the run: %+v", st)
	}
	checkInvariants(t, s)
}

func TestHitMissCounters(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	f := makeResult(t, newKey(t), "counted", "k", randBlock(1, 100))
	unknown := protocol.RawCID([]byte("unknown"))

	steps := []struct {
		name               string
		do                 func()
		wantHits, wantMiss uint64
	}{
		{"Get before Put misses", func() { _, _ = s.Get(ctx, f.task) }, 0, 1},
		{"Put counts nothing", func() { mustPut(t, s, f) }, 0, 1},
		{"Get hits", func() { _, _ = s.Get(ctx, f.task) }, 1, 1},
		{"GetByResult hits", func() { _, _ = s.GetByResult(ctx, f.result) }, 2, 1},
		{"GetByResult of unknown misses", func() { _, _ = s.GetByResult(ctx, unknown) }, 2, 2},
		{"Has, GetManifest, GetBlock, ExportCAR count nothing", func() {
			s.Has(ctx, f.task)
			s.Has(ctx, unknown)
			_, _ = s.GetManifest(ctx, f.result)
			_, _ = s.GetBlock(ctx, protocol.RawCID(f.blocks[0]))
			_ = s.ExportCAR(ctx, f.task, io.Discard)
		}, 2, 2},
	}
	for _, st := range steps {
		st.do()
		if got := s.Stats(); got.Hits != st.wantHits || got.Misses != st.wantMiss {
			t.Fatalf("%s: hits %d misses %d, want %d %d", st.name, got.Hits, got.Misses, st.wantHits, st.wantMiss)
		}
	}
}

func TestExportCAR(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	img, caption := randBlock(1, 300<<10), []byte("caption")
	f := makeResult(t, newKey(t), "exported", "k", img, caption, img)
	mustPut(t, s, f)
	wantOrder := []cid.Cid{f.result, protocol.RawCID(img), protocol.RawCID(caption)}

	// An *os.File is an io.WriterAt; the CAR must still go where the file
	// stands, after what is already written.
	file, err := os.Create(filepath.Join(t.TempDir(), "out.car"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	const prefix = "not part of the CAR"
	if _, err := file.WriteString(prefix); err != nil {
		t.Fatal(err)
	}
	if err := s.ExportCAR(ctx, f.task, file); err != nil {
		t.Fatal(err)
	}
	fileBytes, err := os.ReadFile(file.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(fileBytes, []byte(prefix)) {
		t.Fatal("ExportCAR overwrote what the file held before")
	}

	var byResult bytes.Buffer
	if err := s.ExportCAR(ctx, f.result, &byResult); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(byResult.Bytes(), fileBytes[len(prefix):]) {
		t.Error("export by TaskCID and by ResultCID differ")
	}

	br, err := car.NewBlockReader(bytes.NewReader(byResult.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if br.Version != 1 || len(br.Roots) != 1 || !br.Roots[0].Equals(f.result) {
		t.Fatalf("CAR v%d roots %v, want v1 rooted at %s", br.Version, br.Roots, f.result)
	}
	var got []cid.Cid
	var manifest []byte
	for {
		blk, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := protocol.VerifyBlock(blk.Cid(), blk.RawData()); err != nil {
			t.Error(err)
		}
		if len(got) == 0 {
			manifest = blk.RawData()
		}
		got = append(got, blk.Cid())
	}
	if !slices.EqualFunc(got, wantOrder, cid.Cid.Equals) {
		t.Errorf("CAR blocks %v, want %v", got, wantOrder)
	}

	// An IPLD tool decoding the root as DAG-CBOR finds every output as a link.
	node, err := ipld.Decode(manifest, dagcbor.Decode)
	if err != nil {
		t.Fatalf("root is not DAG-CBOR: %v", err)
	}
	links, err := traversal.SelectLinks(node)
	if err != nil {
		t.Fatal(err)
	}
	linked := make(map[cid.Cid]bool)
	for _, l := range links {
		linked[l.(cidlink.Link).Cid] = true
	}
	for _, c := range wantOrder[1:] {
		if !linked[c] {
			t.Errorf("manifest has no DAG-CBOR link to output %s", c)
		}
	}

	if err := s.ExportCAR(ctx, protocol.RawCID([]byte("unknown")), io.Discard); !errors.Is(err, ErrNotFound) {
		t.Errorf("ExportCAR(unknown) = %v, want ErrNotFound", err)
	}
}

func TestList(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	s := openStore(t, t.TempDir(), WithClock(clk.Now))
	key := newKey(t)
	host, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	a := makeResult(t, key, "first", "k", randBlock(1, 100))
	b := makeResult(t, key, "second", "k", randBlock(2, 200))
	mustPut(t, s, a)
	created := clk.Now()
	clk.Advance(time.Minute)
	mustPut(t, s, b)
	clk.Advance(time.Minute)
	if _, err := s.Get(ctx, a.task); err != nil { // a becomes the most recent
		t.Fatal(err)
	}
	if err := s.Pin(ctx, b.result); err != nil {
		t.Fatal(err)
	}

	got, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{TaskCID: a.task, ResultCID: a.result, Bytes: int64(len(a.manifest) + 100), LastAccess: clk.Now(),
			Created: created, Prompt: "first", Host: host.String()},
		{TaskCID: b.task, ResultCID: b.result, Bytes: int64(len(b.manifest) + 200), Pinned: true,
			LastAccess: created.Add(time.Minute), Created: created.Add(time.Minute), Prompt: "second", Host: host.String()},
	}
	if len(got) != len(want) {
		t.Fatalf("List returned %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if !g.TaskCID.Equals(w.TaskCID) || !g.ResultCID.Equals(w.ResultCID) || g.Bytes != w.Bytes || g.Pinned != w.Pinned ||
			!g.LastAccess.Equal(w.LastAccess) || !g.Created.Equal(w.Created) || g.Prompt != w.Prompt || g.Host != w.Host {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

func TestOpen(t *testing.T) {
	t.Run("rejects a bad budget", func(t *testing.T) {
		for _, b := range []int64{0, -1} {
			if s, err := Open(t.TempDir(), WithBudget(b)); err == nil {
				s.Close()
				t.Errorf("Open with budget %d succeeded", b)
			}
		}
	})
	t.Run("refuses a directory in use", func(t *testing.T) {
		dir := t.TempDir()
		openStore(t, dir)
		if s, err := Open(dir, WithLogger(testLogger(t))); err == nil {
			s.Close()
			t.Error("a second Open of the same directory succeeded")
		}
	})
	t.Run("repairs its index", func(t *testing.T) {
		ctx := context.Background()
		dir := t.TempDir()
		key := newKey(t)
		a := makeResult(t, key, "a", "k", randBlock(1, 100))
		b := makeResult(t, key, "b", "k", randBlock(2, 100))
		s, err := Open(dir, WithLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		mustPut(t, s, a)
		mustPut(t, s, b)
		ghost := protocol.RawCID([]byte("ghost"))
		if err := s.ds.Delete(ctx, taskKey(a.task)); err != nil { // index record lost
			t.Fatal(err)
		}
		putRaw(t, s, metaKey(ghost), []byte("not a meta record"))
		putRaw(t, s, taskKey(ghost), ghost.Bytes()) // points at no result
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s = openStore(t, dir)
		if st := s.Stats(); st.Entries != 2 || !s.Has(ctx, a.task) || !s.Has(ctx, b.task) {
			t.Errorf("after repair %+v, a held %v, b held %v", st, s.Has(ctx, a.task), s.Has(ctx, b.task))
		}
		checkInvariants(t, s) // the bad records are gone and a is indexed again
	})
	t.Run("evicts when the budget shrank", func(t *testing.T) {
		dir := t.TempDir()
		clk := newFakeClock()
		key := newKey(t)
		var fs []fixture
		s, err := Open(dir, WithLogger(testLogger(t)), WithClock(clk.Now))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			clk.Advance(time.Second)
			f := makeResult(t, key, fmt.Sprint("p", i), "k", randBlock(uint64(i), 5000))
			fs = append(fs, f)
			mustPut(t, s, f)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		one := int64(len(fs[0].manifest) + 5000)
		s = openStore(t, dir, WithBudget(one+one/2), WithClock(clk.Now))
		ctx := context.Background()
		if st := s.Stats(); st.Entries != 1 || !s.Has(ctx, fs[2].task) {
			t.Errorf("after reopening with a smaller budget: %+v, newest held: %v", st, s.Has(ctx, fs[2].task))
		}
		checkInvariants(t, s)
	})
}

func TestUseAfterClose(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	f := makeResult(t, newKey(t), "closed", "k", randBlock(1, 100))
	mustPut(t, s, f)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"Put":         func() error { _, err := s.Put(ctx, f.manifest, f.blocks); return err },
		"Get":         func() error { _, err := s.Get(ctx, f.task); return err },
		"GetBlock":    func() error { _, err := s.GetBlock(ctx, protocol.RawCID(f.blocks[0])); return err },
		"GetManifest": func() error { _, err := s.GetManifest(ctx, f.result); return err },
		"Pin":         func() error { return s.Pin(ctx, f.task) },
		"Remove":      func() error { return s.Remove(ctx, f.task) },
		"GC":          func() error { _, _, err := s.GC(ctx); return err },
		"List":        func() error { _, err := s.List(ctx); return err },
		"ExportCAR":   func() error { return s.ExportCAR(ctx, f.task, io.Discard) },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	if s.Has(ctx, f.task) {
		t.Error("Has after Close = true")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestPutVerified: the caller vouches for the signature, not for anything
// else: bytes that do not encode the manifest, and blocks that do not match
// their CIDs, are still refused.
func TestPutVerified(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	key := newKey(t)
	f := makeResult(t, key, "a verified tree", "k", randBlock(3, 500))
	m, err := protocol.DecodeManifest(f.manifest)
	if err != nil {
		t.Fatal(err)
	}
	other := makeResult(t, key, "another tree", "k", randBlock(4, 500))
	if _, err := s.PutVerified(ctx, m, other.manifest, f.blocks); !errors.Is(err, protocol.ErrBadManifest) {
		t.Errorf("bytes of another manifest: %v, want ErrBadManifest", err)
	}
	bad := bytes.Clone(f.blocks[0])
	bad[0] ^= 1
	if _, err := s.PutVerified(ctx, m, f.manifest, [][]byte{bad}); !errors.Is(err, protocol.ErrBadCID) {
		t.Errorf("a tampered block: %v, want ErrBadCID", err)
	}
	got, err := s.PutVerified(ctx, m, f.manifest, f.blocks)
	if err != nil || !got.Equals(f.result) {
		t.Fatalf("PutVerified: %s, %v; want %s", got, err, f.result)
	}
	if r, err := s.Get(ctx, f.task); err != nil || !bytes.Equal(r.Blocks[0], f.blocks[0]) {
		t.Errorf("Get after PutVerified: %v", err)
	}
}

// TestPutEncoded: the caller vouches for the signature and the encoding;
// blocks are still checked against their CIDs, and the result reads back
// whole.
func TestPutEncoded(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	f := makeResult(t, newKey(t), "an encoded tree", "k", randBlock(5, 500))
	m, err := protocol.DecodeManifest(f.manifest)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(f.blocks[0])
	bad[0] ^= 1
	if _, err := s.PutEncoded(ctx, m, f.manifest, [][]byte{bad}); !errors.Is(err, protocol.ErrBadCID) {
		t.Errorf("a tampered block: %v, want ErrBadCID", err)
	}
	if s.Has(ctx, f.task) {
		t.Error("a refused PutEncoded stored the result")
	}
	got, err := s.PutEncoded(ctx, m, f.manifest, f.blocks)
	if err != nil || !got.Equals(f.result) {
		t.Fatalf("PutEncoded: %s, %v; want %s", got, err, f.result)
	}
	r, err := s.Get(ctx, f.task)
	if err != nil || !r.CID.Equals(f.result) || !bytes.Equal(r.ManifestBytes, f.manifest) || !bytes.Equal(r.Blocks[0], f.blocks[0]) {
		t.Errorf("Get after PutEncoded: %v", err)
	}
}

// TestMarkVerifiedSurvivesReopen: the mark node/trust sets once a re-run
// agreed is read back with the result, listed, and kept across a restart;
// a result never checked stays unmarked.
func TestMarkVerifiedSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := newKey(t)
	a := makeResult(t, key, "checked", "k", randBlock(1, 100))
	b := makeResult(t, key, "unchecked", "k", randBlock(2, 100))
	s, err := Open(dir, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, a)
	mustPut(t, s, b)
	if err := s.MarkVerified(ctx, a.task); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkVerified(ctx, randCID(t)); !errors.Is(err, ErrNotFound) {
		t.Errorf("marking a missing result: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	for _, f := range []struct {
		fx   fixture
		want bool
	}{{a, true}, {b, false}} {
		r, err := s.Get(ctx, f.fx.task)
		if err != nil {
			t.Fatal(err)
		}
		if r.Verified != f.want {
			t.Errorf("%s: verified %v after reopening, want %v", f.fx.task, r.Verified, f.want)
		}
	}
	l, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range l {
		if e.Verified != e.TaskCID.Equals(a.task) {
			t.Errorf("listing: %s verified %v", e.TaskCID, e.Verified)
		}
	}
}

func randCID(t *testing.T) cid.Cid {
	t.Helper()
	return protocol.RawCID(randBlock(99, 10))
}

// TestQuietSurvivesReopen: a result stored quiet (its maker does not
// provide it) stays quiet across a restart until Unquiet, which reports
// the change once; the flag is the result's own.
func TestQuietSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := newKey(t)
	a := makeResult(t, key, "cheap", "k", randBlock(1, 100))
	b := makeResult(t, key, "dear", "k", randBlock(2, 100))
	s := openStore(t, dir)
	m, err := protocol.DecodeManifest(a.manifest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutQuiet(ctx, m, a.manifest, a.blocks); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, b)
	quiet := func(s *Store, f fixture) bool {
		t.Helper()
		r, err := s.Get(ctx, f.task)
		if err != nil {
			t.Fatal(err)
		}
		l, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range l {
			if e.TaskCID.Equals(f.task) && e.Quiet != r.Quiet {
				t.Errorf("%s: listed quiet %v, read quiet %v", f.task, e.Quiet, r.Quiet)
			}
		}
		return r.Quiet
	}
	if changed, err := s.Unquiet(ctx, b.task); err != nil || changed {
		t.Errorf("unquieting a result stored with Put: changed %v, %v", changed, err)
	}
	if _, err := s.Unquiet(ctx, randCID(t)); !errors.Is(err, ErrNotFound) {
		t.Errorf("unquieting a missing result: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	if !quiet(s, a) || quiet(s, b) {
		t.Fatalf("after reopening: quiet %v and %v, want true and false", quiet(s, a), quiet(s, b))
	}
	if changed, err := s.Unquiet(ctx, a.result); err != nil || !changed {
		t.Fatalf("unquieting the quiet result by its ResultCID: changed %v, %v", changed, err)
	}
	if changed, _ := s.Unquiet(ctx, a.task); changed {
		t.Error("unquieting twice reports a change twice")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s = openStore(t, dir); quiet(s, a) {
		t.Error("quiet again after reopening")
	}
}
