package node_test

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
	ds "github.com/ipfs/go-datastore"
	pebbleds "github.com/ipfs/go-ds-pebble"
)

// TestStoreSurvivesRestart: a node's results outlive the process, and a
// block corrupted on disk while it was down is detected, never served, and
// fetched again from the network.
func TestStoreSurvivesRestart(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()

	p, err := node.New(ctx, nodeConfig(t, sw, dir))
	if err != nil {
		t.Fatal(err)
	}
	first, err := p.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	// Started again on the same directory: a local hit, no kernel run.
	p2, err := node.New(ctx, nodeConfig(t, sw, dir))
	if err != nil {
		t.Fatal(err)
	}
	if p2.ID() != p.ID() {
		t.Errorf("identity changed across a restart: %s, then %s", p.ID(), p2.ID())
	}
	again, err := p2.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Cache != node.CacheLocal || !again.ResultCID.Equals(first.ResultCID) || !bytes.Equal(again.Blocks[0], first.Blocks[0]) {
		t.Errorf("after restart: cache %q result %s; want a local hit on %s with the same bytes", again.Cache, again.ResultCID, first.ResultCID)
	}
	if runs, _ := kernelRuns(sw); runs != 1 {
		t.Errorf("%d kernel runs, want 1", runs)
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}

	// Rot one block on disk behind the store's back (the layout is in
	// node/store's package doc).
	blockCID := first.Manifest.Outputs[0].CID.Cid
	db, err := pebbleds.NewDatastore(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	rotten := bytes.Clone(first.Blocks[0])
	rotten[len(rotten)/2] ^= 0x80
	if err := db.Put(ctx, ds.RawKey("/blocks/"+blockCID.String()), rotten); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	p3 := startNode(t, sw, dir)
	// A peer asking p3 for it is told p3 does not hold it.
	raw := rawPeer(t, sw)
	if err := raw.h.Connect(ctx, p3.Host().Peerstore().PeerInfo(p3.ID())); err != nil {
		t.Fatal(err)
	}
	req, _ := protocol.Marshal(protocol.FetchRequest{CID: protocol.Link{Cid: first.TaskCID}})
	if e := rawFetch(t, ctx, raw.h, p3.ID(), frame(req)); e.Type != protocol.EventError || e.Code != protocol.CodeNotFound {
		t.Errorf("fetching the rotten result from the restarted node: %s/%s, want error/not_found", e.Type, e.Code)
	}
	if p3.Store().Has(ctx, first.TaskCID) {
		t.Error("the rotten result is still indexed after a read detected it")
	}
	// p3 itself gets good bytes again, from the network, without a kernel run.
	fixed, err := p3.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if fixed.Cache == node.CacheLocal || !bytes.Equal(fixed.Blocks[0], first.Blocks[0]) {
		t.Errorf("after the rot: cache %q, same bytes %v; want the good bytes from elsewhere",
			fixed.Cache, bytes.Equal(fixed.Blocks[0], first.Blocks[0]))
	}
	if r, err := p3.Store().Get(ctx, first.TaskCID); err != nil || !bytes.Equal(r.Blocks[0], first.Blocks[0]) {
		t.Errorf("store after re-fetch: %v", err)
	}
	if runs, _ := kernelRuns(sw); runs != 1 {
		t.Errorf("%d kernel runs, want 1", runs)
	}
}

// TestConcurrentDuplicatesRunOnce: eight identical submissions at once from
// two clients meet at one host (rendezvous order) and join one computation
// there (host-side coalescing): one kernel run. --no-cache adds exactly one
// more, however many ran before.
func TestConcurrentDuplicatesRunOnce(t *testing.T) {
	sw := startSwarm(t, "rtx4090", "a100", "rtx3060")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	clients := []*node.Node{addClient(t, sw), addClient(t, sw)}
	// Enough work that the submissions overlap the computation.
	task := protocol.Task{Prompt: "eight lanterns over a river", Width: 256, Height: 256, Steps: 10}
	// Place over full gossip views, as clients that have run a while do
	// (with no view yet, placement falls back to the DHT's rendezvous order).
	for _, c := range clients {
		for len(c.View()) < len(sw.Hosts) {
			if ctx.Err() != nil {
				t.Fatalf("client's gossip view holds %d of %d hosts", len(c.View()), len(sw.Hosts))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	const n = 8
	results := make([]*node.Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = clients[i%2].Submit(ctx, task, node.SubmitOptions{})
		}()
	}
	close(start)
	wg.Wait()
	servedBy := map[string][]int{} // host -> submissions it answered
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("submission %d: %v", i, errs[i])
		}
		servedBy[results[i].Host.String()] = append(servedBy[results[i].Host.String()], i)
		if !bytes.Equal(results[i].Blocks[0], results[0].Blocks[0]) {
			t.Errorf("submission %d got other bytes than submission 0", i)
		}
	}
	before, byHost := kernelRuns(sw)
	if before != 1 {
		// Even submissions come from client 0, odd ones from client 1.
		t.Errorf("%d kernel runs for %d identical submissions, want 1: runs by host %v, submissions by host %v",
			before, n, byHost, servedBy)
	}

	fresh, err := clients[1].Submit(ctx, task, node.SubmitOptions{NoCache: true})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Cache != node.CacheMiss {
		t.Errorf("--no-cache: cache %q, want miss", fresh.Cache)
	}
	if total, _ := kernelRuns(sw); total != before+1 {
		t.Errorf("%d kernel runs after --no-cache, want %d", total, before+1)
	}
	if !bytes.Equal(fresh.Blocks[0], results[0].Blocks[0]) {
		t.Error("recomputation gave different bytes")
	}
}
