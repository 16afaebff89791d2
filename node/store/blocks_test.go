package store

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/gpunet/gpunet/protocol"
)

// A lone block (an input image) is stored, served by GetBlock, kept across
// a reopen, and is no result: Get and List do not see it.
func TestPutBlockLoneBlock(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir)
	data := randBlock(1, 3000)
	c, err := s.PutBlock(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Equals(protocol.RawCID(data)) {
		t.Fatalf("PutBlock returned %s, want the raw CID %s", c, protocol.RawCID(data))
	}
	if again, err := s.PutBlock(ctx, data); err != nil || !again.Equals(c) {
		t.Fatalf("second PutBlock: %s, %v", again, err)
	}
	got, err := s.GetBlock(ctx, c)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetBlock: %d bytes, %v", len(got), err)
	}
	if _, err := s.Get(ctx, c); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a lone block: %v, want ErrNotFound", err)
	}
	if _, err := s.GetByResult(ctx, c); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetByResult of a lone block: %v, want ErrNotFound", err)
	}
	if _, err := s.GetManifest(ctx, c); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetManifest of a lone block: %v, want ErrNotFound", err)
	}
	if l, err := s.List(ctx); err != nil || len(l) != 0 {
		t.Errorf("List: %d entries, %v; want none", len(l), err)
	}
	if st := s.Stats(); st.Bytes != int64(len(data)) {
		t.Errorf("store counts %d bytes, want %d", st.Bytes, len(data))
	}
	checkInvariants(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dir)
	if got, err := s.GetBlock(ctx, c); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetBlock after reopen: %d bytes, %v", len(got), err)
	}
	checkInvariants(t, s)
	if _, err := s.PutBlock(ctx, nil); err == nil {
		t.Error("PutBlock of no bytes succeeded")
	}
}

// Lone blocks are evicted least recently used like results, a pinned one is
// kept, and a block that is also a result's output outlives the result.
func TestPutBlockEviction(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), WithBudget(10_000), WithClock(clock.Now))
	a, b, shared := randBlock(2, 4000), randBlock(3, 4000), randBlock(4, 1000)
	ca, err := s.PutBlock(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(1e6)
	cb, err := s.PutBlock(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(1e6)
	if _, err := s.GetBlock(ctx, ca); err != nil { // a is now the more recent
		t.Fatal(err)
	}
	clock.Advance(1e6)
	if _, err := s.PutBlock(ctx, randBlock(5, 4000)); err != nil {
		t.Fatal(err)
	}
	if s.HasBlock(cb) || !s.HasBlock(ca) {
		t.Fatalf("after going over budget: have b %v (want false), a %v (want true)", s.HasBlock(cb), s.HasBlock(ca))
	}
	if err := s.Pin(ctx, ca); err != nil {
		t.Fatal(err)
	}
	clock.Advance(1e6)
	cs, err := s.PutBlock(ctx, shared)
	if err != nil {
		t.Fatal(err)
	}
	f := makeResult(t, newKey(t), "shared output", "k", shared)
	mustPut(t, s, f)
	if err := s.Remove(ctx, f.result); err != nil {
		t.Fatal(err)
	}
	if !s.HasBlock(cs) {
		t.Error("removing a result dropped a lone block that is also its output")
	}
	for i := range 4 {
		clock.Advance(1e6)
		if _, err := s.PutBlock(ctx, randBlock(uint64(10+i), 2000)); err != nil {
			t.Fatal(err)
		}
	}
	if !s.HasBlock(ca) {
		t.Error("a pinned lone block was evicted")
	}
	checkInvariants(t, s)
}
