package node_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/node/trust"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/crypto"
	"golang.org/x/sync/errgroup"
)

// lyingKernel is a host that lies, for tests only (never a flag of the
// gpunet command): it runs the real kernel, then, on a share of its runs,
// paints a block over the image before returning it. The manifest it
// signs names the altered bytes: a lie a client cannot tell from the
// signature.
type lyingKernel struct {
	kernel.Kernel
	share float64 // of runs that lie, 0..1
	// paint is the colour of its lie: liars with different colours give
	// different wrong answers (they do not collude).
	paint color.Color
	mu    sync.Mutex
	rng   *rand.Rand
	lies  atomic.Int64
}

func (l *lyingKernel) Run(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
	outs, err := l.Kernel.Run(ctx, t, progress)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	lie := l.rng.Float64() < l.share
	l.mu.Unlock()
	if lie {
		l.lies.Add(1)
		for i := range outs {
			outs[i].Data = alterImage(outs[i].Data, l.paint)
		}
	}
	return outs, nil
}

// alterImage paints the top-left quarter of a PNG.
func alterImage(b []byte, paint color.Color) []byte {
	src, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		return append(slices.Clone(b), 0) // not a PNG: still a different block
	}
	r := src.Bounds()
	dst := image.NewRGBA(r)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			c := src.At(x, y)
			if x < r.Min.X+r.Dx()/2 && y < r.Min.Y+r.Dy()/2 {
				c = paint
			}
			dst.Set(x, y, c)
		}
	}
	var out bytes.Buffer
	_ = png.Encode(&out, dst)
	return out.Bytes()
}

// TestLyingHostsAreCaught: five hosts, one of which lies on every run (20 %),
// behind a bootstrap daemon; every node verifies (Config.Verify). Two
// clients submit a burst of distinct tasks. The test knows the truth by
// running each task on the real kernel itself, and checks:
//   - no wrong result was accepted: each client's probation holds a new
//     host's results until a re-run on another host agrees, so a liar's
//     first wrong answer is caught, outvoted by an arbiter and replaced;
//   - both liars are excluded by both clients, and no honest host is;
//   - the verification compute, all kernel runs over the tasks, is
//     reported (the probation re-runs of a swarm this fresh dominate it);
//   - a cache node that checks nothing itself (probation 0, rate 0) but
//     stored a liar's result before the verdict learns of it by fraud
//     proof alone, stops serving it, and computes the task again.
func TestLyingHostsAreCaught(t *testing.T) {
	const hosts, liars, tasks = 5, 1, 24
	verify := trust.DefaultPolicy()
	lying := map[int]*lyingKernel{}
	for i := range liars {
		paint := color.RGBA{R: uint8(255 * i), G: 255, B: 255, A: 255}
		lying[hosts-1-i] = &lyingKernel{Kernel: kernel.Sketch{}, share: 1, paint: paint, rng: rand.New(rand.NewPCG(uint64(i), 7))}
	}
	profiles := make([]string, hosts)
	for i := range profiles {
		profiles[i] = "a100"
	}
	sw := startSwarmWith(t, swarm.Options{
		Profiles: profiles,
		Kernel: func(i int) kernel.Kernel {
			if l, ok := lying[i]; ok {
				return l
			}
			return kernel.Sketch{}
		},
		Tune: func(c *node.Config) {
			fastBeacons(c)
			v := verify
			c.Verify = &v
		},
	})
	liarIDs := map[string]bool{}
	for i := range lying {
		liarIDs[sw.Hosts[i].ID().String()] = true
	}
	a, b := addClient(t, sw), addClient(t, sw)
	waitForView(t, a, hosts)
	waitForView(t, b, hosts)

	// The cache node checks nothing itself (probation 0, rate 0): what it
	// knows of liars it learns from fraud proofs alone.
	cache, err := sw.AddClientTuned(context.Background(), func(c *node.Config) {
		lazy := verify
		lazy.Probation, lazy.MinRate, lazy.IdleAbove = 0, 0, 2
		c.Verify = &lazy
	})
	if err != nil {
		t.Fatal(err)
	}
	waitForView(t, cache, hosts)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	truth := func(task protocol.Task) []byte {
		t.Helper()
		n, _, err := task.NormalizeCID()
		if err != nil {
			t.Fatal(err)
		}
		outs, err := kernel.Sketch{}.Run(ctx, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		return outs[0].Data
	}
	task := func(i int) protocol.Task {
		return protocol.Task{Prompt: fmt.Sprintf("lanterns over a harbour, %d", i), Width: 64, Height: 64, Steps: 2}
	}
	runsBefore, _ := kernelRuns(sw)

	// The burst: distinct tasks from both clients at once; then, should no
	// liar have had a task yet (placement is random among equals), more,
	// a few at a time, up to as many again.
	clients := []*node.Node{a, b}
	var results []*node.Result
	burst := func(from, n int) {
		t.Helper()
		rs := make([]*node.Result, n)
		var g errgroup.Group
		g.SetLimit(8)
		for i := range n {
			g.Go(func() error {
				res, err := clients[i%2].Submit(ctx, task(from+i), node.SubmitOptions{})
				rs[i] = res
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		results = append(results, rs...)
	}
	anyLied := func() bool {
		for _, l := range lying {
			if l.lies.Load() > 0 {
				return true
			}
		}
		return false
	}
	burst(0, tasks)
	for len(results) < 2*tasks && !anyLied() {
		burst(len(results), 4)
	}
	wrong, onLiars := 0, 0
	for i, res := range results {
		if !bytes.Equal(res.Blocks[0], truth(task(i))) {
			wrong++
			t.Errorf("task %d: a wrong result was accepted, from %s", i, res.Host)
		}
		if liarIDs[res.Host.String()] {
			onLiars++
		}
	}
	runsAfter, _ := kernelRuns(sw)
	submitted := len(results)
	lied := 0
	for i, l := range lying {
		if l.lies.Load() > 0 {
			lied++
		} else {
			t.Logf("liar %d got no task in the burst", i)
		}
	}
	if lied == 0 {
		t.Fatal("no liar got a task: the test shows nothing")
	}
	stats := func(n *node.Node) node.TrustStats {
		s, ok := n.TrustStats()
		if !ok {
			t.Fatal("verification is off")
		}
		return s
	}
	sa, sb := stats(a), stats(b)
	t.Logf("%d tasks, %d wrong accepted, %d results from liars; kernel runs %d (%.2f per task); client a: %+v; client b: %+v",
		submitted, wrong, onLiars, runsAfter-runsBefore, float64(runsAfter-runsBefore)/float64(submitted), sa, sb)

	// Every liar that lied is excluded by every node that verifies, the
	// cache node included (by proof alone), and no honest host is.
	caught := func(n *node.Node) map[string]bool {
		m := map[string]bool{}
		for _, h := range stats(n).Excluded {
			m[h] = true
		}
		return m
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range []*node.Node{a, b, cache} {
		for {
			got := caught(n)
			for h := range got {
				if !liarIDs[h] {
					t.Fatalf("honest host %s excluded by %s", h, n.ID())
				}
			}
			missing := 0
			for i, l := range lying {
				if l.lies.Load() > 0 && !got[sw.Hosts[i].ID().String()] {
					missing++
				}
			}
			if missing == 0 {
				break
			}
			if time.Now().After(deadline) {
				for i, o := range append(append([]*node.Node{sw.Daemon}, sw.Hosts...), sw.Clients...) {
					s, _ := o.TrustStats()
					t.Logf("node %d %s: %d peers; proofs accepted %d, known %d, refused %d, ignored %d; excluded %d",
						i, o.ID(), len(o.Host().Network().Peers()), s.ProofsAccepted, s.ProofsKnown, s.ProofsRefused, s.ProofsIgnored, len(s.Excluded))
				}
				t.Fatalf("after 60 s, %s has not excluded %d liar(s) that lied; it excluded %v", n.ID(), missing, got)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if s := stats(cache); s.Checks != 0 {
		t.Errorf("the cache node ran %d checks of its own; it was to learn by proof alone", s.Checks)
	}

	// A caught liar's result held by the cache node is no longer served:
	// the cache node stores one (SubmitTo asks the liar directly), then
	// asks for the task and gets it computed again, right, elsewhere.
	var liar *node.Node
	for i, l := range lying {
		if l.lies.Load() > 0 {
			liar = sw.Hosts[i]
			break
		}
	}
	cached := task(2*tasks + 1)
	bad, err := cache.SubmitTo(ctx, liar.ID(), cached, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(bad.Blocks[0], truth(cached)) {
		t.Fatal("the liar told the truth")
	}
	good, err := cache.Submit(ctx, cached, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if good.Cache == node.CacheLocal || liarIDs[good.Host.String()] || !bytes.Equal(good.Blocks[0], truth(cached)) {
		t.Errorf("the cache node served the caught liar's result: cache %s, host %s", good.Cache, good.Host)
	}

	// After the verdicts nothing is placed on a liar.
	for i := range 10 {
		res, err := b.Submit(ctx, task(3*tasks+i), node.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if liarIDs[res.Host.String()] {
			t.Errorf("task placed on excluded liar %s", res.Host)
		}
	}
}

// TestFraudProofAboutAnHonestHostIsRefused: a node publishes a proof that
// an honest host lied, made of the host's genuine signed result and a
// wrong one signed by a throwaway identity. Every other node re-runs the
// task, finds the host right and refuses the proof: nobody excludes the
// host, and it goes on getting work.
func TestFraudProofAboutAnHonestHostIsRefused(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{
		Profiles: []string{"a100", "a100", "a100"},
		Tune: func(c *node.Config) {
			fastBeacons(c)
			v := trust.DefaultPolicy()
			c.Verify = &v
		},
	})
	framer, observer := addClient(t, sw), addClient(t, sw)
	waitForView(t, observer, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	victim := sw.Hosts[0]
	tk := protocol.Task{Prompt: "a lighthouse in fog", Width: 64, Height: 64, Steps: 2}
	real, err := framer.SubmitTo(ctx, victim.ID(), tk, node.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := real.Manifest.Encode()
	if err != nil {
		t.Fatal(err)
	}
	sybil, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	wrong := alterImage(real.Blocks[0], color.Black)
	fake, err := protocol.NewManifest(real.Manifest.Task, []protocol.Output{{CID: protocol.Link{Cid: protocol.RawCID(wrong)}, MediaType: "image/png", Size: uint64(len(wrong))}}, real.Manifest.Kernel, 1, sybil)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := fake.Encode()
	if err != nil {
		t.Fatal(err)
	}
	proof, err := protocol.EncodeFraudProof(genuine, fb)
	if err != nil {
		t.Fatal(err)
	}
	// The framer's peers (the hosts and the daemon it is connected to)
	// each settle the proof: a refused proof is not forwarded, so it
	// goes no further than them. Gossip needs a mesh on the topic before
	// a publish reaches anyone, so it is sent again until one refuses it.
	others := append([]*node.Node{observer, sw.Daemon}, sw.Hosts...)
	refused := func() (n uint64) {
		for _, o := range others {
			s, _ := o.TrustStats()
			n += s.ProofsRefused
		}
		return n
	}
	deadline := time.Now().Add(30 * time.Second)
	for refused() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no node settled the proof in 30 s")
		}
		if err := framer.PublishFraudProof(ctx, proof); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	for _, n := range others {
		s, _ := n.TrustStats()
		if slices.Contains(s.Excluded, victim.ID().String()) || s.ProofsAccepted > 0 {
			t.Errorf("%s acted on a false proof: %+v", n.ID(), s)
		}
	}
	t.Logf("%d refusals of the false proof", refused())
	// The victim still gets the work placement gives it.
	res, err := observer.SubmitTo(ctx, victim.ID(), protocol.Task{Prompt: "after the proof", Width: 64, Height: 64, Steps: 2}, node.SubmitOptions{})
	if err != nil || res.Host != victim.ID() {
		t.Fatalf("the victim did not serve: %v", err)
	}
	if d := observer.Distrust(victim.ID()); d >= 1 {
		t.Errorf("observer's distrust of the victim %v", d)
	}
}
