package node

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/node/trust"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/crypto"
)

// TestReservableChecksSignatures: a client takes a result straight from
// its host without checking the signature (DecodeManifestFrom); before it
// serves that result to another peer it checks it, and drops a result
// whose signature is bad. Its own use of the result is unaffected.
func TestReservableChecksSignatures(t *testing.T) {
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.DataDir, cfg.ListenAddrs, cfg.MDNS = "", []string{"/ip4/127.0.0.1/tcp/0"}, false
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	put := func(prompt string, spoil bool) *protocol.Manifest {
		t.Helper()
		task, _, err := protocol.Task{Prompt: prompt, Seed: 1}.NormalizeCID()
		if err != nil {
			t.Fatal(err)
		}
		b := []byte(prompt)
		m, err := protocol.NewManifest(task, []protocol.Output{{CID: protocol.Link{Cid: protocol.RawCID(b)}, MediaType: "image/png", Size: uint64(len(b))}}, "sketch-v1", 1, key)
		if err != nil {
			t.Fatal(err)
		}
		if spoil {
			m.Sig[0] ^= 1
		}
		mb, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		// As acceptResult stores a result from its own host.
		if _, err := protocol.DecodeManifestFrom(mb, m.Host); err != nil {
			t.Fatalf("decoding from its host: %v", err)
		}
		if _, err := n.store.PutVerified(ctx, m, mb, [][]byte{b}); err != nil {
			t.Fatal(err)
		}
		return m
	}
	good, bad := put("signed", false), put("badly signed", true)
	if _, err := n.reservable(ctx, good.TaskCID.Cid); err != nil {
		t.Errorf("a well signed result is not served: %v", err)
	}
	if _, err := n.servable(ctx, bad.TaskCID.Cid); err != nil {
		t.Fatalf("this node's own use of the result: %v", err)
	}
	if _, err := n.reservable(ctx, bad.TaskCID.Cid); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a badly signed result served to a peer: %v", err)
	}
	if n.store.Has(ctx, bad.TaskCID.Cid) {
		t.Error("the badly signed result is still stored")
	}
}

// TestHostRecordsSurviveARestart: a daemon keeps its verification records
// in its data directory: a host it caught stays excluded after a restart,
// one with confirmed results keeps them, and a damaged file is set aside
// with the node starting anyway.
func TestHostRecordsSurviveARestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	start := func() *Node {
		t.Helper()
		cfg := DefaultConfig()
		cfg.DataDir, cfg.ListenAddrs, cfg.MDNS = dir, []string{"/ip4/127.0.0.1/tcp/0"}, false
		cfg.Logger = slog.New(slog.DiscardHandler)
		pol := trust.DefaultPolicy()
		cfg.Verify = &pol
		n, err := New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	n := start()
	n.verify.book.Exclude("liar", []byte("proof"))
	n.verify.book.Decide("honest", 0)
	n.verify.book.Passed("honest")
	n.verify.book.Decide("unknown", 0) // nothing confirmed: not worth keeping
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	n = start()
	b := n.verify.book
	if !b.Excluded("liar") || b.Distrust("liar") != 1 {
		t.Error("a caught host is trusted again after a restart")
	}
	if r, ok := b.Record("honest"); !ok || r.Passed != 1 {
		t.Errorf("honest host's record after a restart: %+v, %v", r, ok)
	}
	if _, ok := b.Record("unknown"); ok {
		t.Error("a host with nothing confirmed was kept")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(filepath.Join(dir, trustFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	n = start()
	defer n.Close()
	if n.verify.book.Excluded("liar") {
		t.Error("records read from a damaged file")
	}
}
