package main

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/crypto"
)

// cacheBench is the results cache's part of `bench --json`: what a hit costs
// next to computing, and what a miss adds before scheduling, all measured in
// one run on one loopback swarm (a bootstrap daemon, three sketch hosts, two
// clients; every lookup goes through the DHT).
type cacheBench struct {
	CacheIterations int `json:"cache_iterations"`
	// Local hit: Submit answered from the submitter's own store.
	LocalHitP50us float64 `json:"local_hit_p50_us"`
	LocalHitP99us float64 `json:"local_hit_p99_us"`
	// Network hit: the path Submit takes when another peer holds the
	// result: local lookup (a miss), DHT provider lookup, fetch, verify,
	// store.
	NetworkHitP50us float64 `json:"network_hit_p50_us"`
	NetworkHitP99us float64 `json:"network_hit_p99_us"`
	// Generate: the same task (512x512, 20 steps, CPU sketch kernel)
	// computed by a host, end to end at the submitter; median of 3.
	GenerateMs float64 `json:"generate_ms"`
	// Miss overhead: what a task nobody holds costs before scheduling
	// starts: normalise, TaskCID, local lookup, bounded DHT lookup.
	MissOverheadP50us float64 `json:"miss_overhead_p50_us"`
	MissOverheadP99us float64 `json:"miss_overhead_p99_us"`
	// NetworkCacheBoundMs is the bound on the DHT lookup (the most a
	// miss may cost there); the measured overhead is how long lookups
	// took to find nothing.
	NetworkCacheBoundMs float64 `json:"network_cache_bound_ms"`
	// Store put: what durability costs. One PNG-sized result
	// (storePutBenchBytes) stored by store.Put as a node stores it (synced:
	// it is on disk before the node announces it) and without the sync,
	// alternately, in two stores under the temporary directory ($TMPDIR),
	// so the ratio comes from one run on one disk.
	StorePutSyncedP50us   float64 `json:"store_put_synced_p50_us"`
	StorePutUnsyncedP50us float64 `json:"store_put_unsynced_p50_us"`
	StorePutSyncRatio     float64 `json:"store_put_sync_ratio"`
}

// maxCacheBenchIterations caps the iterations: the network-hit loop is paced
// under the fetch rate limit, so each costs at least 1/FetchRate s.
const maxCacheBenchIterations = 300

// runCacheBench fills a cacheBench with n iterations (at most
// maxCacheBenchIterations) of each measurement, interleaved so that noise on
// the machine hits them alike.
func runCacheBench(ctx context.Context, n int) (cacheBench, error) {
	n = min(n, maxCacheBenchIterations)
	cb := cacheBench{CacheIterations: n, NetworkCacheBoundMs: float64(node.DefaultNetworkCacheBound) / float64(time.Millisecond)}
	// Before the swarm starts, so that its background work does not land
	// on the puts.
	if err := benchStorePut(ctx, n, &cb); err != nil {
		return cb, fmt.Errorf("store put: %w", err)
	}
	sw, err := swarm.Start(ctx, swarm.Options{
		Profiles:        []string{"rtx4090", "a100", "rtx3060"},
		BootstrapDaemon: true,
		Tune: func(c *node.Config) {
			c.RateLimit = 0            // the bench is one submitter on purpose
			c.SimulateGPUSpeed = false // time the CPU kernel itself
		},
	})
	if err != nil {
		return cb, err
	}
	defer sw.Close()
	a, err := sw.AddClient(ctx)
	if err != nil {
		return cb, err
	}
	b, err := sw.AddClient(ctx)
	if err != nil {
		return cb, err
	}

	task, err := protocol.Task{Prompt: "a lighthouse on a cliff at dawn, gulls over the sea"}.Normalize()
	if err != nil {
		return cb, err
	}
	tc, err := task.CID()
	if err != nil {
		return cb, err
	}
	// Generate: A's first submit computes; two more with --no-cache.
	var gen []time.Duration
	for i := range 3 {
		res, err := a.Submit(ctx, task, node.SubmitOptions{NoCache: i > 0})
		if err != nil {
			return cb, fmt.Errorf("generating: %w", err)
		}
		if res.Cache != node.CacheMiss {
			return cb, fmt.Errorf("generating: cache %q, want a computation", res.Cache)
		}
		gen = append(gen, res.Elapsed)
	}
	cb.GenerateMs = round2(float64(pct(gen, 50)) / float64(time.Millisecond))

	local := func() (time.Duration, error) {
		t0 := time.Now()
		res, err := a.Submit(ctx, task, node.SubmitOptions{})
		d := time.Since(t0)
		if err == nil && res.Cache != node.CacheLocal {
			err = fmt.Errorf("local hit: cache %q", res.Cache)
		}
		return d, err
	}
	var lastFetch time.Time
	network := func() (time.Duration, error) {
		// B forgets the result (untimed), so each round fetches it again;
		// rounds are paced under the providers' per-peer rate limit.
		if err := b.Store().Remove(ctx, tc); err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, err
		}
		if wait := time.Until(lastFetch.Add(time.Second / node.FetchRate)); wait > 0 {
			time.Sleep(wait)
		}
		lastFetch = time.Now()
		t0 := time.Now()
		res, err := lookup(ctx, b, task)
		d := time.Since(t0)
		if err == nil && res.Cache != node.CacheNetwork {
			err = fmt.Errorf("network hit: cache %q", res.Cache)
		}
		return d, err
	}
	seed := uint64(1 << 40)
	miss := func() (time.Duration, error) {
		seed++ // a task nobody has
		t := protocol.Task{Prompt: "nobody has asked for this yet", Seed: seed}
		t0 := time.Now()
		_, err := lookup(ctx, b, t)
		d := time.Since(t0)
		if errors.Is(err, node.ErrNoProvider) {
			return d, nil
		}
		if err == nil {
			err = errors.New("miss: a task nobody has was found")
		}
		return d, err
	}

	// The first fetch waits for A's and the host's provider records.
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := network(); err == nil {
			break
		} else if time.Now().After(deadline) {
			return cb, fmt.Errorf("no network hit after 20 s: %w", err)
		}
	}
	// One phase per measurement, each after 10 warm-up rounds. Unlike the
	// round trips above they are not interleaved: the nodes share one
	// process, so a network hit's background work (B provides what it
	// fetched) would otherwise land on the next local hit, which in a real
	// deployment runs on another machine.
	phase := func(f func() (time.Duration, error)) ([]time.Duration, error) {
		var ds []time.Duration
		for i := -10; i < n; i++ {
			d, err := f()
			if err != nil {
				return nil, err
			}
			if i >= 0 {
				ds = append(ds, d)
			}
		}
		return ds, nil
	}
	localT, err := phase(local)
	if err != nil {
		return cb, err
	}
	netT, err := phase(network)
	if err != nil {
		return cb, err
	}
	missT, err := phase(miss)
	if err != nil {
		return cb, err
	}
	cb.LocalHitP50us, cb.LocalHitP99us = micros(pct(localT, 50)), micros(pct(localT, 99))
	cb.NetworkHitP50us, cb.NetworkHitP99us = micros(pct(netT, 50)), micros(pct(netT, 99))
	cb.MissOverheadP50us, cb.MissOverheadP99us = micros(pct(missT, 50)), micros(pct(missT, 99))
	return cb, nil
}

// lookup is what Submit does before it schedules: normalise, TaskCID, the
// local store, then the network cache within DefaultNetworkCacheBound.
func lookup(ctx context.Context, n *node.Node, task protocol.Task) (*node.Result, error) {
	_, tc, err := task.NormalizeCID()
	if err != nil {
		return nil, err
	}
	if _, err := n.Store().Get(ctx, tc); err == nil {
		return nil, errors.New("lookup: unexpected local hit")
	}
	return n.FetchFromNetwork(ctx, tc, node.DefaultNetworkCacheBound)
}

// storePutBenchBytes is the size of the result benchStorePut stores: a
// 512x512 PNG from the sketch kernel is about this size.
const storePutBenchBytes = 177 << 10

// benchStorePut times n puts of a fresh result into a store that syncs and
// n into one that does not, alternating which goes first.
func benchStorePut(ctx context.Context, n int, cb *cacheBench) error {
	dir, err := os.MkdirTemp("", "gpunet-bench-store-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	quiet := store.WithLogger(slog.New(slog.DiscardHandler))
	synced, err := store.Open(filepath.Join(dir, "synced"), quiet)
	if err != nil {
		return err
	}
	defer synced.Close()
	unsynced, err := store.Open(filepath.Join(dir, "unsynced"), quiet, store.WithoutSync())
	if err != nil {
		return err
	}
	defer unsynced.Close()
	key, _, err := crypto.GenerateEd25519Key(crand.Reader)
	if err != nil {
		return err
	}
	block := make([]byte, storePutBenchBytes)
	_, _ = crand.Read(block) // incompressible, like a PNG
	outs := []protocol.Output{{CID: protocol.Link{Cid: protocol.RawCID(block)}, MediaType: "image/png", Size: uint64(len(block))}}

	var syncT, noSyncT []time.Duration
	for i := range n {
		if err := ctx.Err(); err != nil {
			return err
		}
		task, err := protocol.Task{Prompt: fmt.Sprint("a store put ", i)}.Normalize()
		if err != nil {
			return err
		}
		m, err := protocol.NewManifest(task, outs, "bench", uint64(time.Now().UnixMilli()), key)
		if err != nil {
			return err
		}
		mb, err := m.Encode()
		if err != nil {
			return err
		}
		stores := []struct {
			s  *store.Store
			ds *[]time.Duration
		}{{synced, &syncT}, {unsynced, &noSyncT}}
		if i%2 == 1 {
			stores[0], stores[1] = stores[1], stores[0]
		}
		for _, st := range stores {
			t0 := time.Now()
			if _, err := st.s.Put(ctx, mb, [][]byte{block}); err != nil {
				return err
			}
			*st.ds = append(*st.ds, time.Since(t0))
		}
	}
	cb.StorePutSyncedP50us, cb.StorePutUnsyncedP50us = micros(pct(syncT, 50)), micros(pct(noSyncT, 50))
	cb.StorePutSyncRatio = round2(cb.StorePutSyncedP50us / cb.StorePutUnsyncedP50us)
	return nil
}
