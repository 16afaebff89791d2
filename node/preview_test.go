package node_test

import (
	"bytes"
	"context"
	"image/png"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
)

// A client that asks for previews gets the host kernel's partial images, as
// PNGs, before the result; one that does not ask gets none.
func TestSubmitPreviews(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090"}})
	c := addClient(t, sw)
	host := sw.Hosts[0].ID().String()

	submit := func(seed uint64, previews int) []node.Progress {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var mu sync.Mutex
		var seen []node.Progress
		task := protocol.Task{Prompt: "a quiet harbour at dusk", Width: 64, Height: 64, Steps: 8, Seed: seed}
		res, err := c.Submit(ctx, task, node.SubmitOptions{Previews: previews, Progress: func(p node.Progress) {
			mu.Lock()
			seen = append(seen, p)
			mu.Unlock()
		}})
		if err != nil {
			t.Fatalf("Submit with %d previews: %v", previews, err)
		}
		if res.Cache != node.CacheMiss {
			t.Fatalf("Submit with %d previews: cache %q, want a fresh run", previews, res.Cache)
		}
		mu.Lock()
		defer mu.Unlock()
		return seen
	}

	seen := submit(11, 2)
	var previews [][]byte
	done := false
	for _, p := range seen {
		switch p.Stage {
		case "preview":
			if done {
				t.Errorf("a preview after done")
			}
			if p.Peer != host {
				t.Errorf("preview from %q, want the host %s", p.Peer, host)
			}
			if p.Step == 0 || p.Step >= p.Total || p.Total != 8 {
				t.Errorf("preview at step %d of %d", p.Step, p.Total)
			}
			if _, err := png.Decode(bytes.NewReader(p.Preview)); err != nil {
				t.Errorf("preview at step %d is not a PNG: %v", p.Step, err)
			}
			previews = append(previews, p.Preview)
		case "done":
			done = true
		}
	}
	if !done {
		t.Fatal("no done event")
	}
	// Previews are advisory, so a slow reader may miss one; with room in
	// every buffer, both arrive here.
	if len(previews) < 1 || len(previews) > 2 {
		t.Fatalf("%d previews, want 1 or 2", len(previews))
	}

	for _, p := range submit(12, 0) {
		if p.Stage == "preview" || p.Preview != nil {
			t.Fatalf("a preview (%+v) without asking", p.Event)
		}
	}
}
