package sampling

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	p2pproto "github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
)

// Node is what the service needs from its node. Its methods are called
// from stream handlers and probe goroutines: they must be safe for
// concurrent use and must not block for long.
type Node interface {
	// Live is this host's beacon as of now, its load fields current; nil
	// when the node hosts nothing (or has no beacon yet).
	Live() *protocol.Beacon
	// State is the scheduler's view of host id given its beacon b (with
	// this node's round trip to it and its trust).
	State(id peer.ID, b *protocol.Beacon) scheduler.PeerState
	// Heard tells the node of host id's beacon b, from a probe reply or,
	// when notice is set, an idle notice: the stream authenticated id.
	Heard(id peer.ID, b *protocol.Beacon, notice bool)
	// Hosts finds hosts to fill a view that has run dry (the DHT's
	// providers of model), with their addresses in the peerstore.
	Hosts(ctx context.Context, model string) []peer.ID
}

// Service is one node's probing. Safe for concurrent use.
type Service struct {
	h    host.Host
	node Node
	cfg  scheduler.ProbeConfig
	log  *slog.Logger

	mu        sync.Mutex
	view      []scheduler.Descriptor // the peer-sampling view; never self
	memory    *scheduler.ProbeMemory // hosts heard of with a free slot
	probers   scheduler.Probers      // a host's last clients asking for notices
	announced int                    // free slots this host has announced
	starts    uint64                 // the host's task starts as of its last beacon (Changed)
	seeded    time.Time              // when the view was last refilled from the DHT
	rng       *rand.Rand

	stats  counters
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type counters struct {
	probes, probeFails, answered, noticesSent, noticesHeard, shuffles atomic.Uint64
}

// Stats counts what the service did, for status and tests.
type Stats struct {
	Probes       uint64 `json:"probes"`        // probes this node sent
	ProbeFails   uint64 `json:"probe_fails"`   // of which failed (host gone, bad reply)
	Answered     uint64 `json:"answered"`      // probes this host answered
	NoticesSent  uint64 `json:"notices_sent"`  // idle notices this host sent
	NoticesHeard uint64 `json:"notices_heard"` // idle notices this node received
	Shuffles     uint64 `json:"shuffles"`      // shuffles this node started that completed
	View         int    `json:"view"`          // hosts in the peer-sampling view
	Memory       int    `json:"memory"`        // hosts remembered with a free slot
}

// New starts the service on h: it answers shuffles and idle notices, and
// probes when h hosts (node.Live is then non-nil), and shuffles its view
// every cfg.ShuffleEvery. Close stops it.
func New(h host.Host, node Node, cfg scheduler.ProbeConfig, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Service{
		h: h, node: node, cfg: cfg, log: log,
		memory:  scheduler.NewProbeMemory(cfg.Memory),
		probers: scheduler.NewProbers(cfg.Notify),
		rng:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	h.SetStreamHandler(protocol.ProbeProtocol, s.handleProbe)
	h.SetStreamHandler(protocol.IdleProtocol, s.handleIdle)
	h.SetStreamHandler(protocol.SampleProtocol, s.handleShuffle)
	s.wg.Add(1)
	go s.shuffleLoop()
	return s, nil
}

// Close stops the handlers and the shuffle loop and waits for them.
func (s *Service) Close() error {
	s.h.RemoveStreamHandler(protocol.ProbeProtocol)
	s.h.RemoveStreamHandler(protocol.IdleProtocol)
	s.h.RemoveStreamHandler(protocol.SampleProtocol)
	s.cancel()
	s.wg.Wait()
	return nil
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	view, mem := len(s.view), len(s.memory.View())
	s.mu.Unlock()
	return Stats{
		Probes: s.stats.probes.Load(), ProbeFails: s.stats.probeFails.Load(), Answered: s.stats.answered.Load(),
		NoticesSent: s.stats.noticesSent.Load(), NoticesHeard: s.stats.noticesHeard.Load(),
		Shuffles: s.stats.shuffles.Load(), View: view, Memory: mem,
	}
}

// Seed puts hosts into the view (bootstrap peers, the DHT's providers), in
// place of random entries when it is full, as scheduler.Absorb does.
func (s *Service) Seed(ids ...peer.ID) {
	ds := make([]scheduler.Descriptor, 0, len(ids))
	for _, id := range ids {
		ds = append(ds, scheduler.Descriptor{ID: id.String()})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view = scheduler.Absorb(s.view, ds, s.h.ID().String(), s.cfg.ViewSize, s.rng)
}

// Choice is a ranked candidate host.
type Choice struct {
	ID   peer.ID
	Pred scheduler.Candidate
}

// Round is one probe round for a task: it probes D hosts of the view
// (refilled from node.Hosts when too small), those in exclude left out,
// and returns what it remembers of hosts with a free slot together with
// the replies, ranked best first by scheduler.RankProbed: at most max
// choices, none of them in exclude.
func (s *Service) Round(ctx context.Context, r scheduler.Request, cfg scheduler.Config, max int) []Choice {
	if s.rebootstrap() {
		s.Seed(s.node.Hosts(ctx, r.Model)...)
	}
	s.mu.Lock()
	targets := scheduler.ProbeTargets(nil, s.view, s.cfg.D, r.Exclude, s.rng)
	ids := make([]string, len(targets))
	for i, t := range targets {
		ids[i] = s.view[t].ID
	}
	s.mu.Unlock()

	replies := make([]scheduler.PeerState, len(ids))
	ok := make([]bool, len(ids))
	pctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { replies[i], ok[i] = s.probe(pctx, id) })
	}
	wg.Wait()
	cancel()
	got := replies[:0]
	for i := range replies {
		if ok[i] {
			got = append(got, replies[i])
		}
	}
	if b := s.node.Live(); b != nil {
		// A host's own GPU is a candidate for its own submissions, ranked
		// like any other, with no link to cross.
		got = append(got, s.node.State(s.h.ID(), b))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.memory.ViewWith(got)
	ranked := scheduler.RankProbed(nil, v, r, time.Now(), cfg)
	out := make([]Choice, 0, min(len(ranked), max))
	for _, c := range ranked {
		if len(out) == max {
			break
		}
		id, err := peer.Decode(v[c.Index].ID)
		if err != nil {
			continue
		}
		out = append(out, Choice{ID: id, Pred: c})
	}
	return out
}

// Charge records that this node placed a task on host id.
func (s *Service) Charge(id peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.memory.Charge(id.String())
}

// Forget drops what the memory holds of host id (it refused or failed a
// task): its next reply or notice says where it stands.
func (s *Service) Forget(id peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.memory.Forget(id.String())
}

// rebootstrap reports whether a round should refill the view from the
// DHT first: when it is too small to draw from (scheduler's Rebootstrap),
// at most once per reseedEvery, so that a swarm with fewer hosts than D
// does not pay a DHT search for every task.
func (s *Service) rebootstrap() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.cfg.Rebootstrap(len(s.view)) || time.Since(s.seeded) < reseedEvery {
		return false
	}
	s.seeded = time.Now()
	return true
}

// reseedEvery bounds how often a small view is refilled from the DHT: a
// search costs log N round trips, and hosts that join reach views through
// shuffles within a period or two anyway.
const reseedEvery = 5 * time.Second

// probe asks host id for its beacon; on any failure the host leaves the
// view and the memory (Cyclon drops a neighbour that does not answer).
func (s *Service) probe(ctx context.Context, idStr string) (scheduler.PeerState, bool) {
	s.stats.probes.Add(1)
	id, err := peer.Decode(idStr)
	if err == nil {
		var rep *protocol.ProbeReply
		var b *protocol.Beacon
		if rep, b, err = s.ask(ctx, id); err == nil {
			ps := s.node.State(id, b)
			s.node.Heard(id, b, false)
			s.mu.Lock()
			s.memory.Add(ps)
			s.setCapacity(idStr, b)
			s.absorbLocked(rep.Peers)
			s.mu.Unlock()
			return ps, true
		}
	}
	s.stats.probeFails.Add(1)
	s.log.Debug("probe failed", "peer", idStr, "err", err)
	s.mu.Lock()
	s.view = scheduler.Forget(s.view, idStr)
	s.memory.Forget(idStr)
	s.mu.Unlock()
	return scheduler.PeerState{}, false
}

func (s *Service) ask(ctx context.Context, id peer.ID) (*protocol.ProbeReply, *protocol.Beacon, error) {
	body, err := s.request(ctx, id, protocol.ProbeProtocol, protocol.ProbeRequest{Notify: s.cfg.Notify > 0})
	if err != nil {
		return nil, nil, err
	}
	return protocol.DecodeProbeReply(body, id.String(), time.Now())
}

// request is the asking side of one exchange: msg as a frame, then the
// answer's frame.
func (s *Service) request(ctx context.Context, id peer.ID, proto p2pproto.ID, msg any) ([]byte, error) {
	st, err := s.h.NewStream(ctx, id, proto)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	deadline(ctx, st)
	if err := protocol.WriteMsg(st, msg); err != nil {
		st.Reset()
		return nil, err
	}
	if err := st.CloseWrite(); err != nil {
		st.Reset()
		return nil, err
	}
	body, err := protocol.ReadFrame(bufio.NewReader(st), protocol.MaxSampleBytes)
	if err != nil {
		st.Reset()
		return nil, err
	}
	return body, nil
}

// readRequest is the answering side's read of the one frame it is sent;
// on a bad frame it resets the stream.
func readRequest(st network.Stream) ([]byte, bool) {
	st.SetDeadline(time.Now().Add(protocol.SampleTimeout))
	body, err := protocol.ReadFrame(bufio.NewReader(st), protocol.MaxSampleBytes)
	if err != nil {
		st.Reset()
		return nil, false
	}
	return body, true
}

// handleProbe answers a probe with this host's beacon as it is now and
// Piggyback descriptors of its view, and records the prober for notices.
func (s *Service) handleProbe(st network.Stream) {
	defer st.Close()
	body, ok := readRequest(st)
	if !ok {
		return
	}
	req, err := protocol.DecodeProbeRequest(body)
	b := s.node.Live()
	if err != nil || b == nil {
		// Not a host (or not yet): nothing to say.
		st.Reset()
		return
	}
	enc, err := b.Encode()
	if err != nil {
		st.Reset()
		return
	}
	s.mu.Lock()
	if req.Notify {
		s.probers.Add(st.Conn().RemotePeer().String())
	}
	peers := s.descriptorsLocked(pickSome(len(s.view), s.cfg.Piggyback, s.rng))
	s.mu.Unlock()
	s.stats.answered.Add(1)
	if err := protocol.WriteMsg(st, protocol.ProbeReply{Beacon: enc, Peers: peers}); err != nil {
		st.Reset()
	}
}

// Changed is called by a host with each beacon it makes, and the count of
// tasks it has ever started on a slot: it sends the idle notices it owes
// (scheduler.NoticesDue), each to one of its last probers picked at
// random. Beacons are spaced, so a slot can be taken and freed between
// two of them, unseen by either; every start since the last beacon takes
// one announced slot back, so such a slot is announced anew, as a host
// that judged every change would (the simulator's).
func (s *Service) Changed(b *protocol.Beacon, starts uint64) {
	s.mu.Lock()
	taken := int(min(starts-s.starts, uint64(s.announced)))
	s.starts = starts
	due, announced := scheduler.NoticesDue(int(b.Slots)-int(b.Busy), int(b.Queue), b.Accepting, s.announced-taken)
	s.announced = announced
	var to []string
	for range due {
		if id, ok := s.probers.Pick(s.rng); ok {
			to = append(to, id)
		}
	}
	s.mu.Unlock()
	if len(to) == 0 {
		return
	}
	enc, err := b.Encode()
	if err != nil {
		return
	}
	for _, idStr := range to {
		id, err := peer.Decode(idStr)
		if err != nil {
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.notify(id, enc); err != nil {
				s.log.Debug("idle notice", "peer", id, "err", err)
				return
			}
			s.stats.noticesSent.Add(1)
		}()
	}
}

func (s *Service) notify(id peer.ID, beacon []byte) error {
	ctx, cancel := context.WithTimeout(s.ctx, protocol.SampleTimeout)
	defer cancel()
	st, err := s.h.NewStream(network.WithNoDial(ctx, "idle notices go to peers that just probed"), id, protocol.IdleProtocol)
	if err != nil {
		return err
	}
	defer st.Close()
	deadline(ctx, st)
	if err := protocol.WriteMsg(st, protocol.ProbeReply{Beacon: beacon}); err != nil {
		st.Reset()
		return err
	}
	return nil
}

// handleIdle takes an idle notice into the memory and tells the node.
func (s *Service) handleIdle(st network.Stream) {
	defer st.Close()
	body, ok := readRequest(st)
	if !ok {
		return
	}
	from := st.Conn().RemotePeer()
	_, b, err := protocol.DecodeProbeReply(body, from.String(), time.Now())
	if err != nil {
		s.log.Debug("dropping idle notice", "peer", from, "err", err)
		st.Reset()
		return
	}
	s.stats.noticesHeard.Add(1)
	ps := s.node.State(from, b)
	s.mu.Lock()
	s.memory.Add(ps)
	s.mu.Unlock()
	s.node.Heard(from, b, true)
}

// shuffleLoop runs a Cyclon shuffle every ShuffleEvery, jittered.
func (s *Service) shuffleLoop() {
	defer s.wg.Done()
	for {
		d := time.Duration(float64(s.cfg.ShuffleEvery) * (0.75 + rand.Float64()/2))
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(d):
		}
		if err := s.shuffle(); err != nil {
			s.log.Debug("shuffle", "err", err)
		}
	}
}

// shuffle is the initiator's side of one Cyclon exchange.
func (s *Service) shuffle() error {
	self := s.selfDescriptor()
	s.mu.Lock()
	partner, rest, offer, sent, ok := scheduler.ShuffleStart(s.view, self, s.cfg.ShuffleLen, nil, nil, s.rng)
	if !ok {
		s.mu.Unlock()
		return nil
	}
	s.view = rest
	msg := protocol.Shuffle{Peers: s.toWire(offer)}
	s.mu.Unlock()

	id, err := peer.Decode(partner.ID)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, protocol.SampleTimeout)
	defer cancel()
	answer, err := s.exchange(ctx, id, msg)
	if err != nil {
		// The partner left the view in ShuffleStart: an unresponsive
		// neighbour is dropped, which is how Cyclon forgets hosts that left.
		return fmt.Errorf("shuffling with %s: %w", id, err)
	}
	s.stats.shuffles.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view = scheduler.ShuffleMerge(s.view, sent, s.fromWire(answer.Peers), s.h.ID().String(), s.cfg.ViewSize)
	return nil
}

func (s *Service) exchange(ctx context.Context, id peer.ID, msg protocol.Shuffle) (*protocol.Shuffle, error) {
	body, err := s.request(ctx, id, protocol.SampleProtocol, msg)
	if err != nil {
		return nil, err
	}
	return protocol.DecodeShuffle(body)
}

// handleShuffle is the partner's side: answer with ShuffleLen entries of
// the view, then merge what came in their place.
func (s *Service) handleShuffle(st network.Stream) {
	defer st.Close()
	body, ok := readRequest(st)
	if !ok {
		return
	}
	in, err := protocol.DecodeShuffle(body)
	if err != nil {
		s.log.Debug("dropping shuffle", "peer", st.Conn().RemotePeer(), "err", err)
		st.Reset()
		return
	}
	s.mu.Lock()
	sent := scheduler.ShuffleAnswer(nil, s.view, min(s.cfg.ShuffleLen, protocol.MaxDescriptors), s.rng)
	out := protocol.Shuffle{Peers: s.descriptorsLocked(sent)}
	s.view = scheduler.ShuffleMerge(s.view, sent, s.fromWire(in.Peers), s.h.ID().String(), s.cfg.ViewSize)
	s.mu.Unlock()
	if err := protocol.WriteMsg(st, out); err != nil {
		st.Reset()
	}
}

// absorbLocked takes a reply's descriptors into the view in place of
// random entries (scheduler.Absorb). Callers hold mu.
func (s *Service) absorbLocked(ds []protocol.Descriptor) {
	if len(ds) == 0 {
		return
	}
	s.view = scheduler.Absorb(s.view, s.fromWire(ds), s.h.ID().String(), s.cfg.ViewSize, s.rng)
}

// setCapacity updates host id's capacity in the view from its beacon: the
// host's own word, fresher than any descriptor. Callers hold mu.
func (s *Service) setCapacity(id string, b *protocol.Beacon) {
	for i := range s.view {
		if s.view[i].ID == id {
			s.view[i].Capacity = Capacity(b)
			return
		}
	}
}

// Capacity is a host's nominal throughput from its beacon, in tasks per
// second at full clock: slots × 1000 / its mean service time in ms; 0 when
// the beacon gives no service time.
func Capacity(b *protocol.Beacon) float64 {
	if b == nil || len(b.ServiceMs) == 0 {
		return 0
	}
	sum := 0.0
	for _, ms := range b.ServiceMs {
		sum += float64(ms)
	}
	mean := sum / float64(len(b.ServiceMs))
	if mean <= 0 {
		return 0
	}
	return float64(b.Slots) * 1000 / mean
}

// selfDescriptor is this node in a shuffle: a host offers itself at age 0,
// a node that hosts nothing offers no self (an empty ID).
func (s *Service) selfDescriptor() scheduler.Descriptor {
	b := s.node.Live()
	if b == nil {
		return scheduler.Descriptor{}
	}
	return scheduler.Descriptor{ID: s.h.ID().String(), Capacity: Capacity(b)}
}

// descriptorsLocked puts the view's entries at idx on the wire. Callers
// hold mu.
func (s *Service) descriptorsLocked(idx []int) []protocol.Descriptor {
	ds := make([]scheduler.Descriptor, 0, len(idx))
	for _, i := range idx {
		ds = append(ds, s.view[i])
	}
	return s.toWire(ds)
}

// toWire turns descriptors into their wire form with the addresses this
// node knows (its own, or the peerstore's).
func (s *Service) toWire(ds []scheduler.Descriptor) []protocol.Descriptor {
	out := make([]protocol.Descriptor, 0, min(len(ds), protocol.MaxDescriptors))
	for _, d := range ds {
		if len(out) == protocol.MaxDescriptors {
			break
		}
		id, err := peer.Decode(d.ID)
		if err != nil {
			continue
		}
		addrs := s.h.Peerstore().Addrs(id)
		if id == s.h.ID() {
			addrs = s.h.Addrs()
		}
		w := protocol.Descriptor{Peer: d.ID, Age: uint32(max(d.Age, 0)), CapMilli: uint32(min(max(d.Capacity, 0)*1000, 1<<31))}
		for _, a := range addrs {
			if len(w.Addrs) == protocol.MaxDescriptorAddrs {
				break
			}
			if b := a.Bytes(); len(b) <= protocol.MaxAddrBytes {
				w.Addrs = append(w.Addrs, b)
			}
		}
		out = append(out, w)
	}
	return out
}

// fromWire takes descriptors off the wire, their addresses into the
// peerstore for a while (a descriptor is a stranger's word: the first
// probe or shuffle that fails drops the entry).
func (s *Service) fromWire(ds []protocol.Descriptor) []scheduler.Descriptor {
	out := make([]scheduler.Descriptor, 0, len(ds))
	for _, d := range ds {
		id, err := peer.Decode(d.Peer)
		if err != nil || id == s.h.ID() {
			continue
		}
		var addrs []ma.Multiaddr
		for _, b := range d.Addrs {
			if a, err := ma.NewMultiaddrBytes(b); err == nil {
				addrs = append(addrs, a)
			}
		}
		if len(addrs) > 0 {
			s.h.Peerstore().AddAddrs(id, addrs, peerstore.TempAddrTTL)
		}
		out = append(out, scheduler.Descriptor{ID: d.Peer, Age: int(d.Age), Capacity: float64(d.CapMilli) / 1000})
	}
	return out
}

// pickSome returns up to k distinct indices below n at random.
func pickSome(n, k int, rng *rand.Rand) []int {
	if k >= n {
		out := make([]int, n)
		for i := range out {
			out[i] = i
		}
		return out
	}
	return rng.Perm(n)[:k]
}

// deadline bounds a stream by ctx's deadline, or SampleTimeout.
func deadline(ctx context.Context, st network.Stream) {
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(protocol.SampleTimeout)
	}
	_ = st.SetDeadline(d)
}
