package store

import (
	"context"
	crand "crypto/rand"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/gpunet/gpunet/protocol"
)

// tWriter routes log lines through t, so they show only for failing tests
// (or with -v) and next to the test that wrote them.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fakeClock is a settable clock for LRU tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.UnixMilli(1_800_000_000_000)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// openStore opens a store in dir, logging through t, and closes it when the
// test ends (a second Close by the test is harmless).
func openStore(t testing.TB, dir string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(dir, append([]Option{WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func newKey(t testing.TB) crypto.PrivKey {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// randBlock returns n deterministic pseudo-random bytes for seed.
func randBlock(seed uint64, n int) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// fixture is one signed result ready for Put.
type fixture struct {
	task     cid.Cid
	result   cid.Cid
	manifest []byte
	blocks   [][]byte
}

// makeResult builds and signs a result for prompt whose outputs are blocks.
// kernel varies the manifest (and so the ResultCID) for the same task.
func makeResult(t testing.TB, key crypto.PrivKey, prompt, kernel string, blocks ...[]byte) fixture {
	t.Helper()
	task, err := protocol.Task{Prompt: prompt}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	outs := make([]protocol.Output, len(blocks))
	for i, b := range blocks {
		outs[i] = protocol.Output{CID: protocol.Link{Cid: protocol.RawCID(b)}, MediaType: "image/png", Size: uint64(len(b))}
	}
	m, err := protocol.NewManifest(task, outs, kernel, 1_700_000_000_000, key)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := task.CID()
	if err != nil {
		t.Fatal(err)
	}
	return fixture{task: tc, result: protocol.ManifestCID(mb), manifest: mb, blocks: blocks}
}

func mustPut(t testing.TB, s *Store, f fixture) {
	t.Helper()
	got, err := s.Put(context.Background(), f.manifest, f.blocks)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if !got.Equals(f.result) {
		t.Fatalf("Put returned %s, want %s", got, f.result)
	}
}

// mustPutUnsynced stores f with PutReceived, or PutQuiet if quiet: both
// unsynced.
func mustPutUnsynced(t testing.TB, s *Store, f fixture, quiet bool) {
	t.Helper()
	m, err := protocol.DecodeManifest(f.manifest)
	if err != nil {
		t.Fatal(err)
	}
	put := s.PutReceived
	if quiet {
		put = s.PutQuiet
	}
	got, err := put(context.Background(), m, f.manifest, f.blocks)
	if err != nil {
		t.Fatalf("storing unsynced: %v", err)
	}
	if !got.Equals(f.result) {
		t.Fatalf("stored %s, want %s", got, f.result)
	}
}

// checkInvariants compares the in-memory index with what is on disk: the
// same results, blocks and index records, reference counts that match the
// results, every stored block valid, and a byte total equal to the bytes of
// the manifests and blocks on disk.
func checkInvariants(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	s.mu.Lock()
	defer s.mu.Unlock()

	onDisk := func(prefix string) map[string][]byte {
		recs, err := s.queryAll(ctx, prefix, false)
		if err != nil {
			t.Fatal(err)
		}
		m := make(map[string][]byte, len(recs))
		for _, r := range recs {
			m[strings.TrimPrefix(r.Key, prefix)] = r.Value
		}
		return m
	}
	blocks, manifests, metas, tasks := onDisk(blocksPrefix), onDisk(manifestsPrefix), onDisk(metaPrefix), onDisk(tasksPrefix)

	wantRefs := make(map[cid.Cid]int)
	var diskBytes int64
	results := 0
	for c, e := range s.entries {
		if _, ok := manifests[c.String()]; !ok && !e.isBlock() {
			t.Errorf("result %s: no manifest on disk", c)
		}
		if !e.isBlock() {
			results++
		}
		if _, ok := metas[c.String()]; !ok {
			t.Errorf("result %s: no meta on disk", c)
		}
		for _, b := range e.blocks {
			wantRefs[b.cid]++
		}
	}
	if len(manifests) != results || len(metas) != len(s.entries) {
		t.Errorf("%d results and %d lone blocks in memory, %d manifests and %d metas on disk", results, len(s.entries)-results, len(manifests), len(metas))
	}
	for _, v := range manifests {
		diskBytes += int64(len(v))
	}
	if len(blocks) != len(s.refs) {
		t.Errorf("%d blocks on disk, %d referenced", len(blocks), len(s.refs))
	}
	for k, v := range blocks {
		c, err := cid.Decode(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := protocol.VerifyBlock(c, v); err != nil {
			t.Errorf("block on disk: %v", err)
		}
		if r := s.refs[c]; r == nil || r.n != wantRefs[c] || r.size != int64(len(v)) {
			t.Errorf("block %s: ref %+v, want %d references of %d bytes", c, r, wantRefs[c], len(v))
		}
		diskBytes += int64(len(v))
	}
	if len(tasks) != len(s.tasks) {
		t.Errorf("%d task records on disk, %d in memory", len(tasks), len(s.tasks))
	}
	for tc, e := range s.tasks {
		if v, ok := tasks[tc.String()]; !ok || string(v) != string(e.result.Bytes()) {
			t.Errorf("task %s: index on disk does not point to %s", tc, e.result)
		}
	}
	if got := s.nBytes.Load(); got != diskBytes {
		t.Errorf("byte total %d, manifests and blocks on disk hold %d", got, diskBytes)
	}
	if got := s.nEntries.Load(); got != int64(len(s.entries)) {
		t.Errorf("entry count %d, want %d", got, len(s.entries))
	}
}
