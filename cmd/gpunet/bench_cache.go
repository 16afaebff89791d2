package main

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
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
	// Miss lookup: the cache lookups alone for a task nobody holds, one at
	// a time: normalise, TaskCID, local lookup, DHT provider lookup.
	MissLookupP50us float64 `json:"miss_lookup_p50_us"`
	MissLookupP99us float64 `json:"miss_lookup_p99_us"`
	// Miss overhead: the time a full Submit of a task nobody holds spends
	// before placement starts (its first progress event after "lookup"),
	// with MissConcurrency Submits at once. The baseline is the same
	// Submit with NoCache, which skips the lookups, interleaved with it
	// under the same load: the difference is what the cache costs a miss.
	MissConcurrency          int     `json:"miss_concurrency"`
	MissOverheadP50us        float64 `json:"miss_overhead_p50_us"`
	MissOverheadP99us        float64 `json:"miss_overhead_p99_us"`
	MissOverheadNoCacheP50us float64 `json:"miss_overhead_nocache_p50_us"`
	MissOverheadNoCacheP99us float64 `json:"miss_overhead_nocache_p99_us"`
	// NetworkCacheBoundMs bounds a DHT lookup no peer answers;
	// NetworkCacheGraceMs is how long at least a lookup goes on after the
	// first answer before a miss stops waiting. LookupsCut counts the
	// lookups of this measurement that the grace ended.
	NetworkCacheBoundMs float64 `json:"network_cache_bound_ms"`
	NetworkCacheGraceMs float64 `json:"network_cache_grace_ms"`
	LookupsCut          uint64  `json:"lookups_cut"`
	// Provide bytes: DHT bytes sent, by every node of the swarm, per result
	// stored, over ProvideResults fresh results: the host provides each one
	// and the submitting client none. The baseline is the rule before issue
	// 14, measured in the same run: the client provides every result too
	// (node.Announce after each Submit).
	ProvideResults            int     `json:"provide_results"`
	ProvideBytesPerResult     float64 `json:"provide_bytes_per_result"`
	ProvideBytesPerResultBoth float64 `json:"provide_bytes_per_result_both"`
	ProvideBytesRatio         float64 `json:"provide_bytes_ratio"`
	ProvidesPerResult         float64 `json:"provides_per_result"`
	ProvidesPerResultBoth     float64 `json:"provides_per_result_both"`
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
	cb := cacheBench{
		CacheIterations:     n,
		NetworkCacheBoundMs: float64(node.DefaultNetworkCacheBound) / float64(time.Millisecond),
		NetworkCacheGraceMs: float64(node.DefaultNetworkCacheGrace) / float64(time.Millisecond),
		MissConcurrency:     missConcurrency,
	}
	// Before the swarm starts, so that its background work does not land
	// on the puts.
	if err := benchStorePut(ctx, n, &cb); err != nil {
		return cb, fmt.Errorf("store put: %w", err)
	}
	provides := &provideCounter{}
	sw, err := swarm.Start(ctx, swarm.Options{
		Profiles:        []string{"rtx4090", "a100", "rtx3060"},
		BootstrapDaemon: true,
		Tune: func(c *node.Config) {
			c.RateLimit = 0            // the bench is one submitter on purpose
			c.SimulateGPUSpeed = false // time the CPU kernel itself
			// Hosts advertise once, at start: a re-advertisement inside
			// the provide measurement would count as provide bytes.
			c.AdvertiseInterval = time.Hour
			// Every result provided, whatever its kernel time on this
			// machine: what a provide costs is what is measured.
			c.ProvideMinCompute = 0
			c.Observers = append(c.Observers, provides)
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
	missLookup := func() (time.Duration, error) {
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
	missT, err := phase(missLookup)
	if err != nil {
		return cb, err
	}
	cb.LocalHitP50us, cb.LocalHitP99us = micros(pct(localT, 50)), micros(pct(localT, 99))
	cb.NetworkHitP50us, cb.NetworkHitP99us = micros(pct(netT, 50)), micros(pct(netT, 99))
	cb.MissLookupP50us, cb.MissLookupP99us = micros(pct(missT, 50)), micros(pct(missT, 99))
	if err := benchMissOverhead(ctx, b, n, &cb); err != nil {
		return cb, fmt.Errorf("miss overhead: %w", err)
	}
	if err := benchProvideBytes(ctx, sw, a, provides, min(n, maxProvideResults), &cb); err != nil {
		return cb, fmt.Errorf("provide bytes: %w", err)
	}
	return cb, nil
}

// missConcurrency is how many Submits run at once in the miss-overhead
// measurement: the load issue 14 measured the old lookup under.
const missConcurrency = 16

// benchTask is a task nobody has asked for yet, small enough for the CPU
// sketch kernel to make in a few milliseconds: the miss and provide
// measurements care about what happens around the computation.
func benchTask(seed uint64) protocol.Task {
	return protocol.Task{Prompt: "a fresh request for the bench", Seed: seed, Width: 64, Height: 64, Steps: 1}
}

// benchMissOverhead times, for n fresh tasks of each kind submitted by c
// with missConcurrency at once, how long Submit takes to reach placement:
// with the cache lookups (a miss) and without them (NoCache), alternating so
// that both run under the same load.
func benchMissOverhead(ctx context.Context, c *node.Node, n int, cb *cacheBench) error {
	cut0 := c.FetchStats().LookupsCut
	var (
		mu             sync.Mutex
		miss, noCache  []time.Duration
		firstErr       error
		next           atomic.Uint64
		wg             sync.WaitGroup
		seedBase       = uint64(1 << 42)
		tasksPerWorker = (2*n + missConcurrency - 1) / missConcurrency
	)
	for range missConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tasksPerWorker {
				i := next.Add(1)
				if i > uint64(2*n) || ctx.Err() != nil {
					return
				}
				opts := node.SubmitOptions{NoCache: i%2 == 0}
				t0 := time.Now()
				var placed time.Duration
				opts.Progress = func(p node.Progress) {
					if placed == 0 && p.Stage != "lookup" {
						placed = time.Since(t0)
					}
				}
				res, err := c.Submit(ctx, benchTask(seedBase+i), opts)
				if err == nil && res.Cache != node.CacheMiss {
					err = fmt.Errorf("a fresh task came back %q, want a computation", res.Cache)
				}
				mu.Lock()
				switch {
				case err != nil:
					firstErr = cmp.Or(firstErr, err)
				case opts.NoCache:
					noCache = append(noCache, placed)
				default:
					miss = append(miss, placed)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	cb.MissOverheadP50us, cb.MissOverheadP99us = micros(pct(miss, 50)), micros(pct(miss, 99))
	cb.MissOverheadNoCacheP50us, cb.MissOverheadNoCacheP99us = micros(pct(noCache, 50)), micros(pct(noCache, 99))
	cb.LookupsCut = c.FetchStats().LookupsCut - cut0
	return nil
}

// maxProvideResults caps the results of each provide phase: each is a full
// computation and a DHT provide or two, and 100 already average out the
// swarm's other DHT traffic.
const maxProvideResults = 100

// provideCounter is a node.Observer counting the DHT provides of results
// across the swarm, so a phase ends only once its provides are done.
type provideCounter struct{ n atomic.Int64 }

func (p *provideCounter) SubmitProgress(node.SubmitEvent) {}
func (p *provideCounter) SubmitDone(node.SubmitEvent)     {}
func (p *provideCounter) Served(node.ServedEvent)         {}
func (p *provideCounter) Beacon(string)                   {}
func (p *provideCounter) Provided(error)                  { p.n.Add(1) }

// benchProvideBytes measures DHT bytes sent per stored result over k fresh
// results submitted by c: first as the swarm does it (the host provides),
// then with c providing each result too, as every client did before issue
// 14. Each phase ends once its provides are done; DHT bytes are read a
// little over a second after, since the bandwidth counter updates its totals
// once a second.
func benchProvideBytes(ctx context.Context, sw *swarm.Swarm, c *node.Node, provides *provideCounter, k int, cb *cacheBench) error {
	nodes := append(append(append([]*node.Node{}, sw.Hosts...), sw.Clients...), sw.Daemon)
	dhtBytes := func() uint64 {
		var total uint64
		for _, n := range nodes {
			total += n.DHTBytesSent()
		}
		return total
	}
	// settle waits until no provide has ended for a little over a second:
	// the earlier measurements' provides are done, and the bandwidth
	// counter has taken in their bytes.
	settle := func() error {
		for deadline := time.Now().Add(time.Minute); ; {
			before := provides.n.Load()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(1200 * time.Millisecond):
			}
			if provides.n.Load() == before {
				return nil
			}
			if time.Now().After(deadline) {
				return errors.New("the swarm's provides did not settle within a minute")
			}
		}
	}
	seed := uint64(1 << 44)
	phase := func(clientToo bool) (bytesPer, providesPer float64, err error) {
		if err := settle(); err != nil {
			return 0, 0, err
		}
		b0, p0 := dhtBytes(), provides.n.Load()
		want := int64(k)
		if clientToo {
			want *= 2
		}
		for range k {
			seed++
			res, err := c.Submit(ctx, benchTask(seed), node.SubmitOptions{NoCache: true})
			if err != nil {
				return 0, 0, err
			}
			if clientToo {
				if err := c.Announce(ctx, res.TaskCID); err != nil {
					return 0, 0, err
				}
			}
		}
		// Every provide is bounded (30 s); wait a little past that, then
		// for stragglers and the bandwidth counter.
		for deadline := time.Now().Add(45 * time.Second); provides.n.Load()-p0 < want; {
			if time.Now().After(deadline) {
				return 0, 0, fmt.Errorf("%d of %d provides done after 45 s", provides.n.Load()-p0, want)
			}
			select {
			case <-ctx.Done():
				return 0, 0, ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
		if err := settle(); err != nil {
			return 0, 0, err
		}
		return round2(float64(dhtBytes()-b0) / float64(k)), round2(float64(provides.n.Load()-p0) / float64(k)), nil
	}
	var err error
	cb.ProvideResults = k
	if cb.ProvideBytesPerResult, cb.ProvidesPerResult, err = phase(false); err != nil {
		return err
	}
	if cb.ProvideBytesPerResultBoth, cb.ProvidesPerResultBoth, err = phase(true); err != nil {
		return err
	}
	cb.ProvideBytesRatio = round2(cb.ProvideBytesPerResult / cb.ProvideBytesPerResultBoth)
	return nil
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
