package node_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
)

// taskStreamsPerPeer is the host's resource-manager cap on one peer's
// inbound task (and fetch) streams (node.newHost).
const taskStreamsPerPeer = 128

// TestFloodHoldsToCaps: a hostile peer floods a host with held streams,
// slow and junk frames, junk, replayed and too-frequent beacons and DHT
// spam while two honest clients submit a burst of small tasks. Every
// honest task completes and verifies; each attack is stopped by its own
// mechanism (the resource manager's stream cap, the request deadline and
// size cap, the beacon validator and peer scoring, the DHT record
// validator); the host survives with its memory bounded and its capacity
// record intact.
func TestFloodHoldsToCaps(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a host for 13 s")
	}
	const tasks, clients = 16, 2
	beacons := &swarm.BeaconCounter{}
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"h100"}, TimeScale: 40,
		Tune: func(c *node.Config) {
			c.BeaconInterval = 200 * time.Millisecond
			if c.Kernel != nil {
				c.Observers = append(c.Observers, beacons)
			}
		}})
	for range clients {
		addClient(t, sw)
	}
	host := sw.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := sw.WaitViews(ctx); err != nil {
		t.Fatal(err)
	}
	heapBefore := floodHeap()

	fl, err := swarm.NewFlooder(ctx, host, "")
	if err != nil {
		t.Fatal(err)
	}
	flooderID, raterID, controlID := fl.IDs()
	// Longer than protocol.RequestTimeout, so that slow frames meet the
	// host's request deadline.
	fo := swarm.FloodOptions{Duration: protocol.RequestTimeout + 3*time.Second}
	var report *swarm.FloodReport
	var runErr error
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		report, runErr = fl.Run(ctx, fo)
	}()
	defer func() {
		fl.Close()
		<-flooding
	}()
	rejectedBefore := beacons.Rejected.Load()
	// The honest burst starts once the flood holds streams on the host.
	floodWait(t, "the flood to reach the host", func() bool { return floodInbound(host, protocol.TaskProtocol) >= taskStreamsPerPeer/2 })

	type outcome struct {
		task protocol.Task
		res  *node.Result
		err  error
	}
	outs := make([]outcome, tasks)
	var wg sync.WaitGroup
	for i := range outs {
		outs[i].task = protocol.Task{Prompt: fmt.Sprintf("honest task %d during a flood", i), Width: 64, Height: 64, Steps: 2}
		c := sw.Clients[i%clients]
		wg.Go(func() {
			tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			outs[i].res, outs[i].err = c.Submit(tctx, outs[i].task, node.SubmitOptions{})
		})
	}
	wg.Wait()
	for _, o := range outs {
		if o.err != nil {
			t.Errorf("%q: %v", o.task.Prompt, o.err)
			continue
		}
		floodVerify(t, o.task, o.res, host.ID())
	}

	<-flooding
	if runErr != nil {
		t.Fatal(runErr)
	}
	r := report
	t.Logf("flood: %+v", *r)
	t.Logf("host beacon verdicts during the flood: rejected %d (accepted %d, ignored %d in all)",
		beacons.Rejected.Load()-rejectedBefore, beacons.Accepted.Load(), beacons.Ignored.Load())

	// Held streams: the resource manager refuses those over the per-peer
	// cap, so the host never holds more than the cap from the flooder plus
	// what the framer and the honest clients had open.
	for name, o := range map[string]swarm.StreamOutcomes{"task": r.Task, "fetch": r.Fetch} {
		if o.Reset == 0 {
			t.Errorf("%s streams: none of %d opened was refused by the resource manager: %+v", name, o.Opened, o)
		}
	}
	others := fo.SlowStreams + 1 + tasks + 8 // framer's, honest clients', and hedges
	if fo.SlowStreams == 0 {
		others += swarm.DefaultFloodOptions().SlowStreams
	}
	// The resource manager reserves a stream in the protocol's scope before
	// the peer's, and releases it when the peer's is full: a sample can
	// catch a few of the flooder's refused streams in that moment (on a
	// loaded machine, a handful). Without the cap, the flood holds
	// thousands.
	others += 32
	if max := taskStreamsPerPeer + others; r.PeakTaskStreams > max || r.PeakFetchStreams > max {
		t.Errorf("the host held up to %d task and %d fetch streams at once; the cap of %d per peer allows at most %d",
			r.PeakTaskStreams, r.PeakFetchStreams, taskStreamsPerPeer, max)
	}
	// Slow frames are cut by the request deadline, junk ones by the size
	// cap and the decoder: both answered bad_request, and counted by the
	// host.
	if r.Slow.Answered[protocol.CodeBadRequest] == 0 {
		t.Errorf("no slow frame was cut by the host's request deadline: %+v", r.Slow)
	}
	if r.Junk.Answered[protocol.CodeBadRequest] == 0 {
		t.Errorf("no junk frame was refused as a bad request: %+v", r.Junk)
	}
	if r.HostTaskRefusals[protocol.CodeBadRequest] == 0 || r.HostFetchRefusals == 0 {
		t.Errorf("the host counted %v task refusals and %d fetch refusals during the flood", r.HostTaskRefusals, r.HostFetchRefusals)
	}
	// Junk beacons are rejected by the validator.
	if r.JunkBeacons == 0 || r.RateBeacons == 0 || beacons.Rejected.Load() == rejectedBefore {
		t.Errorf("%d junk and %d too-frequent beacons sent, %d rejected by the host",
			r.JunkBeacons, r.RateBeacons, beacons.Rejected.Load()-rejectedBefore)
	}
	// Every capacity record the flooder put was refused, and the host's own
	// is still what a client finds.
	if r.DHTPuts == 0 || r.DHTPutsRejected != r.DHTPuts {
		t.Errorf("the host's DHT refused %d of the %d junk, stale or forged capacity records", r.DHTPutsRejected, r.DHTPuts)
	}
	found, err := sw.Clients[0].FindHosts(ctx, protocol.DefaultModel, 8)
	if err != nil {
		t.Fatal(err)
	}
	intact := false
	for _, h := range found {
		if h.ID == host.ID() && h.Capacity != nil && h.Capacity.Peer == host.ID().String() && h.Capacity.MaxConcurrency == 1 {
			intact = true
		}
	}
	if !intact {
		t.Errorf("after the flood the client finds %v, not the host with its own capacity record", found)
	}

	// The flooder and the rater lost their standing: a valid beacon from
	// either, sent now at a legal pace, is dropped, while the same from
	// the control, which behaved, gets into the host's view.
	//
	// Penalties are per sender, not per author: a valid beacon the
	// flooder publishes would reach the host through any other node
	// connected to it, which relays it as it should. The flooder named
	// itself a provider of the model during its flood, so a client placing
	// a task may have dialled it (one CI run under load saw the beacon
	// arrive): every other node drops its connections to the flood's
	// identities first, so that what reaches the host comes from them.
	for _, n := range append(append([]*node.Node{sw.Daemon}, sw.Clients...), sw.Hosts[1:]...) {
		if n == nil {
			continue
		}
		for _, id := range []peer.ID{flooderID, raterID} {
			n.Host().Peerstore().ClearAddrs(id)
			_ = n.Host().Network().ClosePeer(id)
		}
	}
	const marker = 4242
	if err := fl.Probe(ctx, marker); err != nil {
		t.Fatal(err)
	}
	probed := func(id peer.ID) bool {
		for _, p := range host.View() {
			if p.ID == id.String() && p.FreeMemMB == marker {
				return true
			}
		}
		return false
	}
	floodWait(t, "the control's beacon in the host's view", func() bool { return probed(controlID) })
	for range 50 { // and a while longer, for a late arrival
		for name, id := range map[string]peer.ID{"flooder": flooderID, "rater": raterID} {
			if probed(id) {
				t.Fatalf("the %s's beacon got into the host's view after its flood: it was not penalised", name)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The host survived: it still serves, and its heap did not keep what
	// the flood sent.
	if err := fl.Close(); err != nil {
		t.Errorf("closing the flooder: %v", err)
	}
	task := protocol.Task{Prompt: "after the flood", Width: 64, Height: 64, Steps: 2}
	res, err := sw.Clients[1].Submit(ctx, task, node.SubmitOptions{})
	if err != nil {
		t.Fatalf("the host after the flood: %v", err)
	}
	floodVerify(t, task, res, host.ID())
	heapAfter := floodHeap()
	t.Logf("heap in use: %d MiB before the flood, %d MiB after", heapBefore>>20, heapAfter>>20)
	if heapAfter > heapBefore+256<<20 {
		t.Errorf("heap grew from %d MiB to %d MiB over the flood", heapBefore>>20, heapAfter>>20)
	}
}

// floodVerify checks that res is task's result, made by want, with a
// valid signed manifest and outputs that match their CIDs.
func floodVerify(t *testing.T, task protocol.Task, res *node.Result, want peer.ID) {
	t.Helper()
	_, tc, err := task.NormalizeCID()
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case !res.TaskCID.Equals(tc) || !res.Manifest.TaskCID.Equals(tc):
		t.Errorf("%q: result for %s (manifest %s), want %s", task.Prompt, res.TaskCID, res.Manifest.TaskCID, tc)
	case res.Host != want:
		t.Errorf("%q: made by %s, want the host %s", task.Prompt, res.Host, want)
	case res.Manifest.Verify() != nil:
		t.Errorf("%q: manifest: %v", task.Prompt, res.Manifest.Verify())
	case len(res.Blocks) != len(res.Manifest.Outputs):
		t.Errorf("%q: %d blocks for %d outputs", task.Prompt, len(res.Blocks), len(res.Manifest.Outputs))
	default:
		for i, o := range res.Manifest.Outputs {
			if err := protocol.VerifyBlock(o.CID.Cid, res.Blocks[i]); err != nil {
				t.Errorf("%q: output %d: %v", task.Prompt, i, err)
			}
		}
	}
}

// floodInbound is how many inbound streams of proto n's resource
// manager counts now, from every peer.
func floodInbound(n *node.Node, proto string) int {
	var streams int
	_ = n.Host().Network().ResourceManager().ViewProtocol(lp2pproto.ID(proto), func(s network.ProtocolScope) error {
		streams = s.Stat().NumStreamsInbound
		return nil
	})
	return streams
}

// floodHeap is the live heap after a full collection.
func floodHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// floodWait polls cond until it holds, failing the test after 30 s.
func floodWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30 s for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
