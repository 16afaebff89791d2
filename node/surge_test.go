package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
)

// TestSurgeIsQueuedNotRefused: many more distinct tasks than the swarm has
// places, at once, from four submitters on two clients, to one host with
// one slot and a short queue. Every task completes (the clients wait the
// surge out in their waiting rooms instead of failing), and the host's
// rate limiter is charged only for work it admitted: its burst is exactly
// each client's share of tasks, so a single token spent on a busy refusal
// would show up as a rate_limited refusal.
func TestSurgeIsQueuedNotRefused(t *testing.T) {
	const tasks, clients = 24, 2
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"h100"}, TimeScale: 40,
		Tune: func(c *node.Config) {
			c.BeaconInterval = 200 * time.Millisecond
			c.QueueLen = 3
			c.RateLimit, c.RateBurst = 0.001, tasks/clients // no refill within the test
		}})
	for range clients {
		addClient(t, sw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := sw.WaitViews(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := sw.Surge(ctx, swarm.SurgeOptions{Tasks: tasks, Submitters: 4, Width: 128, Height: 128, Steps: 4, Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("surge: %+v", *r)
	if r.Completed != tasks || r.Failed != 0 {
		t.Fatalf("%d of %d tasks completed, %d failed; first error: %s", r.Completed, tasks, r.Failed, r.FirstError)
	}
	refusals := sw.Hosts[0].Refusals()
	if refusals[protocol.CodeRateLimited] != 0 {
		t.Errorf("the host refused %d requests as rate limited: tokens were spent on work it did not admit (refusals %v)",
			refusals[protocol.CodeRateLimited], refusals)
	}
	if runs := sw.Hosts[0].KernelRuns(); runs != tasks {
		t.Errorf("the host ran %d tasks, want each of the %d once", runs, tasks)
	}
}
