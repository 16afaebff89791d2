package node_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/swarm"
)

// probing is a swarm config for load information by probing, with a short
// shuffle period so that a test sees shuffles.
func probing(c *node.Config) {
	c.LoadInfo = node.LoadProbe
	c.Probe.ShuffleEvery = 300 * time.Millisecond
}

// TestProbingPlacesWithoutBeacons runs a swarm whose nodes learn load by
// probing: no host publishes a beacon, yet every task is placed on a host
// the client probed or heard idle, the work spreads over the hosts, hosts
// send idle notices to the client that probed them, and views shuffle.
func TestProbingPlacesWithoutBeacons(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090", "rtx4090", "rtx3060", "rtx3060"}, Tune: probing})
	c := addClient(t, sw)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const tasks = 16
	var wg sync.WaitGroup
	errs := make(chan error, tasks)
	for i := range tasks {
		wg.Go(func() {
			task := smallTask
			task.Prompt = fmt.Sprintf("probed harbour %d", i)
			if _, err := c.Submit(ctx, task, node.SubmitOptions{}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	total, byHost := kernelRuns(sw)
	if total < tasks {
		t.Fatalf("%d kernel runs for %d distinct tasks", total, tasks)
	}
	used := 0
	for _, n := range byHost {
		if n > 0 {
			used++
		}
	}
	if used < 2 {
		t.Errorf("all work on one host: %v", byHost)
	}
	st := c.Status(ctx)
	if st.LoadInfo != node.LoadProbe || st.Sampling == nil {
		t.Fatalf("status: load info %q, sampling %+v", st.LoadInfo, st.Sampling)
	}
	if st.Sampling.Probes == 0 || st.Sampling.View == 0 {
		t.Errorf("the client never probed: %+v", *st.Sampling)
	}
	answered := uint64(0)
	for _, h := range sw.Hosts {
		hs := h.Status(ctx)
		if hs.BeaconsSent != 0 {
			t.Errorf("host %s published %d beacons while probing", h.ID(), hs.BeaconsSent)
		}
		answered += hs.Sampling.Answered
	}
	if answered < st.Sampling.Probes-st.Sampling.ProbeFails {
		t.Errorf("hosts answered %d probes, the client got %d answers", answered, st.Sampling.Probes-st.Sampling.ProbeFails)
	}
	// Every host freed its slot with nobody queued at the end: the client
	// that probed it hears of it.
	eventually(t, ctx, "an idle notice", func() bool { return c.Status(ctx).Sampling.NoticesHeard > 0 })
	eventually(t, ctx, "a shuffle", func() bool {
		for _, h := range sw.Hosts {
			if h.Status(ctx).Sampling.Shuffles > 0 {
				return true
			}
		}
		return false
	})
}

// TestProbingClientUsesGossipingHosts: every node answers probes whatever
// its own mode, so a probing client works with hosts that still gossip
// (a swarm moves over one node at a time).
func TestProbingClientUsesGossipingHosts(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090", "rtx3060"}})
	c, err := sw.AddClientTuned(context.Background(), probing)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Submit(ctx, smallTask, node.SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := c.Status(ctx); st.Sampling == nil || st.Sampling.Probes == 0 || st.Sampling.ProbeFails == st.Sampling.Probes {
		t.Fatalf("no probe answered: %+v", st.Sampling)
	}
}

// A mistyped --load-info is a one-line error before anything starts.
func TestLoadInfoMistake(t *testing.T) {
	cfg := nodetest.Config()
	cfg.LoadInfo = "rumour"
	cfg.Logger = testLogger(t)
	n, err := node.New(context.Background(), cfg)
	if err == nil {
		n.Close()
		t.Fatal("a node started with load information \"rumour\"")
	}
	if want := `load information "rumour": want gossip or probe`; !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %q, want one line with %q", err, want)
	}
}
