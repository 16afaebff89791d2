package node

import (
	"context"
	"math"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpunet/gpunet/node/reach"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
)

// minBeaconGap spaces beacons sent early on a change: well above the
// validators' flooding threshold (protocol.BeaconMinInterval).
const minBeaconGap = 4 * protocol.BeaconMinInterval

// beaconLoop publishes this host's beacon every BeaconInterval (jittered),
// and early, at most every minBeaconGap, when load or heat changed.
func (n *Node) beaconLoop() {
	defer n.wg.Done()
	// Seq starts at the clock so that it survives restarts (Beacon.Seq);
	// probe replies take numbers from the same counter (probe.go).
	n.beaconSeq.Store(uint64(time.Now().UnixMilli()))
	// A probing host publishes nothing, so the gossip flood limit does not
	// hold it back: a new beacon is what sends idle notices.
	gap := minBeaconGap
	if n.probing() {
		gap = protocol.BeaconMinInterval
	}
	var last time.Time
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-timer.C:
		case <-n.serve.changed:
			if since := time.Since(last); since < gap {
				select {
				case <-n.ctx.Done():
					return
				case <-time.After(gap - since):
				}
			}
		}
		b, starts := n.serve.beacon(n.ctx, n.beaconSeq.Add(1))
		b.Peer = n.self
		n.own.Store(b)
		last = time.Now()
		if n.probing() {
			n.sampling.Changed(b, starts)
			timer.Reset(jitter(n.cfg.BeaconInterval))
			continue
		}
		size, err := n.gossip.publish(n.ctx, b)
		if err != nil {
			n.log.Debug("publishing beacon", "err", err)
		} else {
			n.stats.beaconsSent.Add(1)
			n.stats.beaconBytes.Add(uint64(size))
		}
		timer.Reset(jitter(n.cfg.BeaconInterval))
	}
}

// beacon describes the host's load and heat now, and says how many tasks
// the host has started on a slot (server.starts).
func (s *server) beacon(ctx context.Context, seq uint64) (*protocol.Beacon, uint64) {
	b := &protocol.Beacon{Seq: seq, Issued: uint64(time.Now().UnixMilli()), Models: s.n.cfg.Kernel.Models(), SpeedPm: 1000}
	if s.dev != nil {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		t, err := s.dev.Telemetry(tctx)
		cancel()
		if err == nil {
			b.TempDC = deci(t.TempC)
			b.SlowdownDC = deci(t.SlowdownTempC)
			b.UtilPm = uint32(math.Round(min(max(t.UtilPct, 0), 100) * 10))
			b.Throttled = t.Throttled()
			if t.MemTotalMB > t.MemUsedMB {
				b.FreeMemMB = t.MemTotalMB - t.MemUsedMB
			}
			if t.MaxSMClockMHz > 0 && t.SMClockMHz > 0 && t.Throttled() {
				b.SpeedPm = uint32(min(1000, 1000*t.SMClockMHz/t.MaxSMClockMHz))
			}
		}
		if sd, ok := s.dev.(simulatedDevice); ok {
			b.SpeedPm = uint32(math.Round(sd.Speed() * 1000))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tempC > 0 {
		b.TempDC = deci(s.tempC)
	}
	b.LimitDC = deci(s.gov.LimitC)
	b.Slots = uint32(s.n.cfg.Slots)
	s.loadLocked(b)
	if s.dev != nil {
		b.GPU = gpuName(s.dev.Name())
	}
	b.QueueMax = uint32(s.n.cfg.QueueLen)
	for m, d := range s.n.modelDigests() {
		if b.Digests == nil {
			b.Digests = map[string]string{}
		}
		b.Digests[m] = protocol.DigestKey(d)
	}
	switch s.n.reach.Info().Reachability {
	case reach.Public:
		b.Reach = protocol.ReachPublic
	case reach.Private:
		b.Reach = protocol.ReachPrivate
	}
	b.HeatDC = s.heatDCLocked(b.Models)
	if len(s.service) > 0 {
		b.ServiceMs = make(map[string]uint32, len(s.service))
		for m, ms := range s.service {
			b.ServiceMs[m] = uint32(math.Round(ms))
		}
	}
	return b, s.starts
}

// live brings b's load fields to now: slots busy, queue, whether the host
// accepts, the tasks in flight. Heat, speed and service times stay as the
// last beacon read them (reading the GPU per probe would cost a probe
// milliseconds); a beacon goes out on every change anyway.
func (s *server) live(b *protocol.Beacon) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadLocked(b)
}

// loadLocked sets b's load fields. Callers hold mu.
func (s *server) loadLocked(b *protocol.Beacon) {
	b.Busy = uint32(min(s.running, s.n.cfg.Slots))
	b.Queue = uint32(s.queue.len())
	b.Accepting = !s.gov.Paused() && !s.gov.Hot() && s.queue.len() < s.n.cfg.QueueLen
	b.Inflight = nil
	for tc := range s.flights {
		if len(b.Inflight) == protocol.MaxBeaconInflight {
			break
		}
		b.Inflight = append(b.Inflight, protocol.TaskKey(tc))
	}
}

// heatPredictor is a device that can run its heat model forward (the
// simulated GPU). Real GPUs have none: their beacons leave heat_dc out and
// schedulers assume a default rise.
type heatPredictor interface {
	PredictTempC(util float64, d time.Duration) float64
}

// heatDCLocked is the beacon's heat_dc: how much warmer the GPU will be once
// one more reference task, started behind the work it has, has run for
// scheduler.HeatRuns service times (scheduler.HeatHorizon, as the
// simulator's hosts predict); 0 when the host cannot say. A simulated GPU
// runs its own model forward; a real one uses the model its host has
// learned from its readings (kernel.HeatFit), once that model is trusted.
// Callers hold mu.
func (s *server) heatDCLocked(models []string) uint32 {
	if len(models) == 0 || s.dev == nil {
		return 0
	}
	svc := s.meanServiceLocked(protocol.Task{Model: models[0], Width: protocol.DefaultWidth, Height: protocol.DefaultHeight, Steps: protocol.DefaultSteps})
	util, spanMs := scheduler.HeatHorizon(s.running+s.queue.len(), s.n.cfg.Slots, svc)
	d := time.Duration(spanMs * float64(time.Millisecond))
	var rise float64
	if hp, ok := s.dev.(heatPredictor); ok {
		rise = hp.PredictTempC(util, d) - hp.PredictTempC(util, 0)
	} else if m, ok := s.heat.Model(); ok && s.tempC > 0 {
		rise = m.PredictTempC(s.tempC, util, d) - s.tempC
	} else {
		return 0
	}
	// At least 0.1 °C: 0 on the wire means "no prediction".
	return max(deci(rise), 1)
}

func deci(c float64) uint32 {
	if !(c > 0) {
		return 0
	}
	return uint32(math.Round(min(c, 200) * 10))
}

// View returns the live part of this node's view of the swarm, as the
// scheduler sees it.
func (n *Node) View() scheduler.View {
	return n.gossip.snapshot(time.Now(), n.viewExpiry(), n.host.ID(), n.linkRTT)
}

// RelayPenalty is what placement adds to the round trip of a host behind
// a NAT (its beacon says reach: private) that this node holds no direct
// connection to: a task and its result then cross the relay, two hops and
// the relay operator's bandwidth, until DCUtR or a dial makes the link
// direct. With it, of two hosts otherwise equal the direct one wins, while
// a private host still wins once the public ones are queued a tenth of a
// second deeper (docs/nat.md).
const RelayPenalty = 100 * time.Millisecond

// linkRTT is this node's round-trip estimate to id, plus RelayPenalty
// when id is reached through a relay only.
func (n *Node) linkRTT(id peer.ID, reach string) time.Duration {
	d := n.host.Peerstore().LatencyEWMA(id)
	if reach == protocol.ReachPrivate && !n.directTo(id) {
		d += RelayPenalty
	}
	return d
}

// directTo reports whether this node holds a connection to id that is
// not relayed.
func (n *Node) directTo(id peer.ID) bool {
	for _, c := range n.host.Network().ConnsToPeer(id) {
		if !c.Stat().Limited {
			return true
		}
	}
	return false
}

// Hears reports whether this node subscribes to the beacon shard of peer
// id, so that id, if it is a host, appears in its view.
func (n *Node) Hears(id peer.ID) bool {
	if n.cfg.LoadInfo == LoadProbe {
		return false // no beacon topic: hosts are probed
	}
	return slices.Contains(heardShards(&n.cfg, n.host.ID()), protocol.BeaconShard(id.String(), max(n.cfg.BeaconShards, 1)))
}

// viewExpiry drops peers that missed about three beacons.
func (n *Node) viewExpiry() time.Duration { return 3*n.cfg.BeaconInterval + time.Second }

// Pause stops this host from taking new work and hands back what is queued.
func (n *Node) Pause() bool {
	if n.serve == nil {
		return false
	}
	n.serve.setPaused(true)
	return true
}

// Resume lets a paused host take work again.
func (n *Node) Resume() bool {
	if n.serve == nil {
		return false
	}
	n.serve.setPaused(false)
	return true
}

// gpuName is a device's name as a beacon carries it: printable, at most
// protocol.MaxGPUNameBytes, cut at a rune boundary.
func gpuName(name string) string {
	var b strings.Builder
	for _, r := range name {
		if !unicode.IsPrint(r) {
			continue
		}
		if b.Len()+utf8.RuneLen(r) > protocol.MaxGPUNameBytes {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
