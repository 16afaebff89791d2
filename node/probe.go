package node

import (
	"context"
	"time"

	"github.com/gpunet/gpunet/node/sampling"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Load information by probing (Config.LoadInfo = LoadProbe): node/sampling
// does the I/O; here is what it needs of the node, and the journey's side.

// probing reports whether this node learns load by probing.
func (n *Node) probing() bool { return n.sampling != nil && n.cfg.LoadInfo == LoadProbe }

// startSampling starts node/sampling. Every node runs it, so that probing
// clients can use gossiping hosts and a swarm can move from one to the
// other; only a probing node probes, and only a probing host sends idle
// notices.
func (n *Node) startSampling() error {
	s, err := sampling.New(n.host, samplingDeps{n}, n.cfg.Probe, n.log.With("sub", "sampling"))
	if err != nil {
		return err
	}
	n.sampling = s
	return nil
}

// samplingDeps is the node as node/sampling sees it.
type samplingDeps struct{ n *Node }

var _ sampling.Node = samplingDeps{}

// Live is this host's last beacon with its load fields as they are now
// (server.live): a probe is answered without reading the GPU again.
func (d samplingDeps) Live() *protocol.Beacon {
	n := d.n
	own := n.own.Load()
	if n.serve == nil || own == nil {
		return nil
	}
	b := *own
	n.serve.live(&b)
	b.Seq = n.beaconSeq.Add(1)
	b.Issued = uint64(time.Now().UnixMilli())
	return &b
}

func (d samplingDeps) State(id peer.ID, b *protocol.Beacon) scheduler.PeerState {
	n := d.n
	ps := peerState(id, b)
	if id != n.host.ID() {
		ps.RTTMs = ms(n.linkRTT(id, b.Reach))
	}
	if n.verify != nil {
		ps.Distrust = n.verify.book.Distrust(ps.ID)
	}
	return ps
}

// Heard folds a probed or notifying host's beacon into the view (status,
// the dashboard, the waiting room's idea of free capacity and the hedge
// read it), and lets waiting tasks go for the free slots a notice names.
func (d samplingDeps) Heard(id peer.ID, b *protocol.Beacon, notice bool) {
	n := d.n
	n.gossip.heard(id, b, time.Now())
	if notice {
		if free := int(b.Slots) - int(b.Busy) - int(b.Queue); free > 0 {
			n.waiting.release(free)
		}
	}
}

func (d samplingDeps) Hosts(ctx context.Context, model string) []peer.ID {
	hosts, err := d.n.FindHosts(ctx, model, 20)
	if err != nil {
		d.n.log.Debug("DHT search for hosts to sample", "model", model, "err", err)
	}
	ids := make([]peer.ID, 0, len(hosts))
	for _, h := range hosts {
		if h.ID != d.n.host.ID() {
			ids = append(ids, h.ID)
		}
	}
	return ids
}

// fromProbes is the journey's next candidate when probing: down the
// ranking of the latest probe round, then a new round with other hosts, up
// to ProbeConfig.Rounds rounds before the task waits.
func (j *journey) fromProbes(ctx context.Context) (candidate, bool) {
	n := j.n
	for {
		for len(j.choices) > 0 {
			c := j.choices[0]
			j.choices = j.choices[1:]
			if !j.tried[c.ID.String()] {
				return candidate{p: c.ID, pred: c.Pred}, true
			}
		}
		if !n.cfg.Probe.ProbeAgain(j.rounds) || ctx.Err() != nil {
			return candidate{}, false
		}
		j.rounds++
		req := scheduler.Request{Model: viewModel(j.t), Key: j.tc.Bytes(), Exclude: j.tried}
		j.choices = n.sampling.Round(ctx, req, n.schedCfg, 2*n.cfg.Probe.D+1)
	}
}
