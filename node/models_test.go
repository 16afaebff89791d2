package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/protocol"
)

// checkpoint is a kernel serving one model name with weights of its own:
// its output is the digest and the seed, so a result shows which weights
// made it. It stands in for a backend that reports its checkpoint's
// sha256 (kernel/backend's AUTOMATIC1111 adapter).
type checkpoint struct{ model, digest string }

func (k checkpoint) Name() string     { return "checkpoint-test" }
func (k checkpoint) Models() []string { return []string{k.model} }
func (k checkpoint) ModelDigests() map[string]string {
	return map[string]string{k.model: strings.TrimPrefix(k.digest, "sha256:")} // bare hex, as A1111 reports it
}
func (k checkpoint) Run(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
	if progress != nil {
		progress(1, 1)
	}
	return []kernel.Output{{MediaType: "application/octet-stream", Data: fmt.Appendf(nil, "%s seed %d", k.digest, t.Seed)}}, nil
}

func digest(b byte) string { return "sha256:" + strings.Repeat(fmt.Sprintf("%02x", b), 32) }

// Two hosts serve "test/ckpt" with different weights: a task for one
// never gets the other's result, cached or not, and a task by bare name is
// refused while the swarm is split evenly, then resolved to the weights
// most hosts serve.
func TestModelsNamedByContent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const model = "test/ckpt"
	d1, d2 := digest(0x11), digest(0x22)
	a := nodetest.Start(t, func(c *node.Config) { c.Kernel = checkpoint{model, d1} })
	host := func(d string) *node.Node {
		return nodetest.Start(t, func(c *node.Config) { c.Kernel = checkpoint{model, d}; c.Bootstrap = a.Addrs() })
	}
	b := host(d2)
	client := nodetest.Start(t, func(c *node.Config) { c.Bootstrap = a.Addrs() })
	waitHosts := func(n int) {
		t.Helper()
		for len(client.View()) < n {
			select {
			case <-ctx.Done():
				t.Fatalf("the client sees %d hosts, want %d", len(client.View()), n)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	waitHosts(2)

	task := protocol.Task{Prompt: "a lighthouse", Model: model, Seed: 7, Steps: 1, Width: 64, Height: 64}
	_, err := client.Submit(ctx, task, node.SubmitOptions{})
	if !errors.Is(err, node.ErrAmbiguousModel) || !strings.Contains(err.Error(), d1) || !strings.Contains(err.Error(), d2) {
		t.Fatalf("by bare name with the swarm split: %v; want ErrAmbiguousModel listing both digests", err)
	}

	byDigest := func(d string) *node.Result {
		t.Helper()
		tk := task
		tk.ModelDigest = d
		res, err := client.Submit(ctx, tk, node.SubmitOptions{})
		if err != nil {
			t.Fatalf("task for %s: %v", d, err)
		}
		if res.Manifest.Task.ModelDigest != d || !bytes.HasPrefix(res.Blocks[0], []byte(d)) {
			t.Fatalf("task for %s answered with %q (task digest %s)", d, res.Blocks[0], res.Manifest.Task.ModelDigest)
		}
		return res
	}
	r1, r2 := byDigest(d1), byDigest(d2)
	if r1.Host != a.ID() || r2.Host != b.ID() || r1.TaskCID.Equals(r2.TaskCID) {
		t.Errorf("hosts %s and %s, tasks %s and %s: want each weights' own host and TaskCID", r1.Host, r2.Host, r1.TaskCID, r2.TaskCID)
	}
	if again := byDigest(d2); again.Cache != node.CacheLocal || !again.ResultCID.Equals(r2.ResultCID) {
		t.Errorf("repeat for %s: cache %q result %s, want the local copy of %s", d2, again.Cache, again.ResultCID, r2.ResultCID)
	}

	// A host refuses a task for other weights, and one by bare name.
	for _, d := range []string{d2, ""} {
		tk := task
		tk.ModelDigest = d
		tk.Seed = 8
		if _, err := client.SubmitTo(ctx, a.ID(), tk, node.SubmitOptions{}); err == nil {
			t.Errorf("host %s served %s with digest %q", d1, model, d)
		}
	}

	host(d1)
	waitHosts(3)
	tk := task
	tk.Seed = 9
	res, err := client.Submit(ctx, tk, node.SubmitOptions{})
	if err != nil || res.Manifest.Task.ModelDigest != d1 {
		t.Fatalf("by bare name with two hosts of %s and one of %s: %v; want it resolved to %s", d1, d2, err, d1)
	}
}
