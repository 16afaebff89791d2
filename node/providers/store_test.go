package providers_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpunet/gpunet/node/providers"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	mh "github.com/multiformats/go-multihash"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func randCID(t testing.TB) cid.Cid {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	h, err := mh.Sum(b, mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.DagCBOR, h)
}

// randPeer is a syntactically valid peer ID with no key behind it: the
// provider store only stores and decodes it.
func randPeer(t testing.TB) peer.ID {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	h, err := mh.Sum(b, mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return peer.ID(h)
}

func open(t *testing.T, dir string) *providers.Store {
	t.Helper()
	s, err := providers.Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAnnouncedSetSurvivesReopen: what a node announces is remembered across
// a restart, and forgetting a key removes it.
func TestAnnouncedSetSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "dht")
	s := open(t, dir)
	a, b := randCID(t), randCID(t)
	for _, c := range []cid.Cid{a, b} {
		if err := s.Announce(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Forget(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	defer s.Close()
	if !s.Announced(ctx, a) || s.Announced(ctx, b) {
		t.Errorf("after reopening: announced(a)=%v, announced(b)=%v; want true, false", s.Announced(ctx, a), s.Announced(ctx, b))
	}
	keys, err := s.AnnouncedKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !keys[0].Equals(a) {
		t.Errorf("announced keys %v, want [%s]", keys, a)
	}
}

// TestProviderRecordsPersist: records the DHT's provider manager writes to
// the store are there after a restart, and the announced set does not show
// up among them (nor they in it).
func TestProviderRecordsPersist(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "dht")
	self, other := randPeer(t), randPeer(t)
	key := randCID(t)

	s := open(t, dir)
	if err := s.Announce(ctx, key); err != nil {
		t.Fatal(err)
	}
	pm, err := records.NewProviderManager(self, newPeerstore(t), s.Datastore())
	if err != nil {
		t.Fatal(err)
	}
	if err := pm.AddProvider(ctx, key.Hash(), peer.AddrInfo{ID: other}); err != nil {
		t.Fatal(err)
	}
	if err := pm.Close(); err != nil { // flushes
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	defer s.Close()
	pm, err = records.NewProviderManager(self, newPeerstore(t), s.Datastore())
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	got, err := pm.GetProviders(ctx, key.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != other {
		t.Errorf("providers after reopening: %v, want [%s]", got, other)
	}
	keys, err := s.AnnouncedKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !keys[0].Equals(key) {
		t.Errorf("announced keys %v, want only [%s]", keys, key)
	}
}

// TestDamagedStoreStartsAfresh: a database that does not open is soft
// state: Open replaces it with an empty one instead of failing the node.
func TestDamagedStoreStartsAfresh(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "dht")
	s := open(t, dir)
	key := randCID(t)
	if err := s.Announce(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	manifests, err := filepath.Glob(filepath.Join(dir, "MANIFEST-*"))
	if err != nil || len(manifests) == 0 {
		t.Fatalf("no pebble manifest in %s: %v", dir, err)
	}
	for _, m := range manifests {
		if err := os.WriteFile(m, []byte("not a manifest"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	s = open(t, dir)
	defer s.Close()
	if s.Announced(ctx, key) {
		t.Error("a damaged store's announcement survived: it was not started afresh")
	}
	if err := s.Announce(ctx, key); err != nil {
		t.Errorf("the fresh store does not take writes: %v", err)
	}
}

func newPeerstore(t testing.TB) peerstore.Peerstore {
	t.Helper()
	ps, err := pstoremem.NewPeerstore()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ps.Close() })
	return ps
}

// TestSweepNamespacesAreApart: what the sweeping provider writes (its
// keystore and its state) survives a restart, stays in its own namespace,
// and neither it nor the announced set shows up in the other's listing.
func TestSweepNamespacesAreApart(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "dht")
	s := open(t, dir)
	announced := randCID(t)
	if err := s.Announce(ctx, announced); err != nil {
		t.Fatal(err)
	}
	for _, d := range []ds.Batching{s.SweepKeys(), s.SweepState()} {
		if err := d.Put(ctx, ds.NewKey("/0/1/key"), []byte("v")); err != nil {
			t.Fatal(err)
		}
		if err := d.Sync(ctx, ds.NewKey("")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	defer s.Close()
	for name, d := range map[string]ds.Batching{"keys": s.SweepKeys(), "state": s.SweepState()} {
		res, err := d.Query(ctx, query.Query{KeysOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		all, err := res.Rest()
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 1 || all[0].Key != "/0/1/key" {
			t.Errorf("sweep %s after reopening: %v, want only /0/1/key", name, all)
		}
	}
	keys, err := s.AnnouncedKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !keys[0].Equals(announced) {
		t.Errorf("announced keys %v, want only [%s]", keys, announced)
	}
}
