package swarm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p"
	dhtpb "github.com/libp2p/go-libp2p-kad-dht/pb"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pspb "github.com/libp2p/go-libp2p-pubsub/pb"
	recpb "github.com/libp2p/go-libp2p-record/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"
)

// FloodOptions bound a flood. Every attack stops at its count or when
// Duration has passed, whichever comes first; zero fields take the
// defaults of DefaultFloodOptions.
type FloodOptions struct {
	// Duration bounds the whole flood.
	Duration time.Duration
	// StreamWorkers open task (and, as many, fetch) streams back to back
	// and hold each open without writing, until the host resets or
	// answers it; MaxStreams bounds the opens per protocol.
	StreamWorkers, MaxStreams int
	// SlowStreams per protocol send a frame a byte every SlowEvery.
	SlowStreams int
	SlowEvery   time.Duration
	// JunkFrames per protocol: oversized length prefixes, junk CBOR,
	// well-formed CBOR of the wrong shape, truncated frames.
	JunkFrames int
	// JunkBeacons are published by the flooder on the beacon topic (junk
	// bytes, oversized, forged authors, a captured beacon of the host
	// re-published as the flooder's); RateBeacons are valid beacons
	// published by the rater from its own identity; both every
	// BeaconEvery. Replays are the host's captured beacon sent back to
	// it verbatim, original signature and all, on a raw GossipSub stream.
	JunkBeacons, RateBeacons, Replays int
	BeaconEvery                       time.Duration
	// DHTPuts are PUT_VALUE requests for capacity records (junk, stale,
	// and the flooder's record under the host's key); DHTProvides are
	// ADD_PROVIDER requests (random keys and the model's, and some naming
	// another peer as the provider).
	DHTPuts, DHTProvides int
	// Topic is the beacon topic (protocol.BeaconTopic when empty): the
	// flood assumes an unsharded swarm.
	Topic string
}

// DefaultFloodOptions: about twice the host's per-peer stream cap in
// workers (128 per protocol, node.newHost), so that the cap is what stops
// them; the rest sized to finish within a flood of 15 s on two cores.
func DefaultFloodOptions() FloodOptions {
	return FloodOptions{
		Duration:      15 * time.Second,
		StreamWorkers: 256, MaxStreams: 1 << 20,
		SlowStreams: 16, SlowEvery: 300 * time.Millisecond,
		JunkFrames:  400,
		JunkBeacons: 300, RateBeacons: 500, Replays: 50, BeaconEvery: 2 * time.Millisecond,
		DHTPuts: 300, DHTProvides: 300,
		Topic: protocol.BeaconTopic,
	}
}

func (o *FloodOptions) fill() {
	d := DefaultFloodOptions()
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	if o.Duration <= 0 {
		o.Duration = d.Duration
	}
	if o.SlowEvery <= 0 {
		o.SlowEvery = d.SlowEvery
	}
	if o.BeaconEvery <= 0 {
		o.BeaconEvery = d.BeaconEvery
	}
	if o.Topic == "" {
		o.Topic = d.Topic
	}
	set(&o.StreamWorkers, d.StreamWorkers)
	set(&o.MaxStreams, d.MaxStreams)
	set(&o.SlowStreams, d.SlowStreams)
	set(&o.JunkFrames, d.JunkFrames)
	set(&o.JunkBeacons, d.JunkBeacons)
	set(&o.RateBeacons, d.RateBeacons)
	set(&o.Replays, d.Replays)
	set(&o.DHTPuts, d.DHTPuts)
	set(&o.DHTProvides, d.DHTProvides)
}

// StreamOutcomes counts how the host ended the flooder's streams of one
// protocol. Reset are streams the host reset before answering anything:
// the resource manager refusing a stream over its caps (or the host
// shutting down). Answered are streams the host's handler answered with
// an error event, by code: a held stream is answered bad_request when the
// request timeout ends it.
type StreamOutcomes struct {
	Opened     uint64            `json:"opened"`
	OpenFailed uint64            `json:"open_failed"`
	Reset      uint64            `json:"reset"`
	Answered   map[string]uint64 `json:"answered"`
	HeldToEnd  uint64            `json:"held_to_end"` // still open when the flood ended
}

// FloodReport is what a flood did, from the flooder's side and from the
// host's counters.
type FloodReport struct {
	ElapsedS float64 `json:"elapsed_s"`
	// Held streams (opened and never written to), by protocol.
	Task  StreamOutcomes `json:"task_streams"`
	Fetch StreamOutcomes `json:"fetch_streams"`
	// Slow frames (a byte every SlowEvery), and junk frames (oversized
	// prefixes, junk CBOR, truncated), both protocols.
	Slow StreamOutcomes `json:"slow_streams"`
	Junk StreamOutcomes `json:"junk_streams"`
	// PeakTaskStreams and PeakFetchStreams are the most inbound streams
	// of each protocol the host's resource manager counted at once (from
	// every peer, honest ones included), sampled every 20 ms.
	PeakTaskStreams  int `json:"peak_task_streams"`
	PeakFetchStreams int `json:"peak_fetch_streams"`
	// PeakTransientStreams and PeakSystemStreams are the same for the
	// resource manager's transient scope (streams not yet past protocol
	// negotiation) and its system scope (every inbound stream).
	PeakTransientStreams int `json:"peak_transient_streams"`
	PeakSystemStreams    int `json:"peak_system_streams"`

	JunkBeacons     uint64 `json:"junk_beacons_sent"`
	ResignedReplays uint64 `json:"resigned_replays_sent"` // the host's beacon re-published by the flooder
	RateBeacons     uint64 `json:"rate_beacons_sent"`
	Replays         uint64 `json:"verbatim_replays_sent"`

	DHTPuts         uint64 `json:"dht_puts_sent"`
	DHTPutsRejected uint64 `json:"dht_puts_rejected"`
	DHTProvides     uint64 `json:"dht_provides_sent"`
	ForgedProvides  uint64 `json:"dht_forged_provides_sent"`

	// The host's own counters over the flood: task requests refused, by
	// code, and fetches refused.
	HostTaskRefusals  map[string]uint64 `json:"host_task_refusals"`
	HostFetchRefusals uint64            `json:"host_fetch_refused"`
}

// StreamsRefused is every flood stream the host reset or refused with an
// error event.
func (r *FloodReport) StreamsRefused() uint64 {
	var n uint64
	for _, o := range []StreamOutcomes{r.Task, r.Fetch, r.Slow, r.Junk} {
		n += o.Reset
		for _, c := range o.Answered {
			n += c
		}
	}
	return n
}

// Flooder is a hostile peer, in fact four libp2p hosts, each attacking
// with one identity so that each penalty can be told apart: the flooder
// (held streams, DHT spam, junk beacons), the framer (junk and slow
// frames, verbatim beacon replays), the rater (valid beacons far too
// often) and a control that behaves, to show that what the others lose
// is theirs only. They speak the real protocols to a real node.
type Flooder struct {
	target  *node.Node
	tinfo   peer.AddrInfo
	flooder *peerKit
	framer  *peerKit
	rater   *peerKit
	control *peerKit

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	capMu    sync.Mutex
	captured *pspb.Message // the host's latest beacon, as gossip carried it
	seq      atomic.Uint64
}

type peerKit struct {
	h     host.Host
	key   crypto.PrivKey
	ps    *pubsub.PubSub
	topic *pubsub.Topic
	sub   *pubsub.Subscription
}

// NewFlooder starts the flooder's hosts, connects them to target and, for
// those that gossip, waits until they hear the target on the beacon topic
// (bounded by ctx). Close stops them.
func NewFlooder(ctx context.Context, target *node.Node, topic string) (f *Flooder, err error) {
	if topic == "" {
		topic = protocol.BeaconTopic
	}
	f = &Flooder{target: target, tinfo: peer.AddrInfo{ID: target.ID(), Addrs: target.Host().Addrs()}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.seq.Store(uint64(time.Now().UnixMilli()))
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	for _, kit := range []**peerKit{&f.flooder, &f.framer, &f.rater, &f.control} {
		if *kit, err = f.newPeer(ctx); err != nil {
			return nil, err
		}
	}
	for _, kit := range []*peerKit{f.flooder, f.rater, f.control} {
		if err := f.joinGossip(ctx, kit, topic); err != nil {
			return nil, err
		}
	}
	f.wg.Add(1)
	go f.capture()
	// Capture the host's beacon before any junk: a host stops sending
	// its beacons to a peer whose score fell below its publish threshold.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for f.capturedBeacon() == nil {
		select {
		case <-wctx.Done():
			return nil, fmt.Errorf("flooder: the target published no beacon to capture: %w", wctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return f, nil
}

// newPeer starts one flooding host, with no resource limits of its own
// (only the target's should stop it), connected to the target.
func (f *Flooder) newPeer(ctx context.Context) (*peerKit, error) {
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, err
	}
	h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings(Loopback...),
		libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableMetrics())
	if err != nil {
		return nil, fmt.Errorf("starting a flooding host: %w", err)
	}
	kit := &peerKit{h: h, key: key}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.Connect(cctx, f.tinfo); err != nil {
		h.Close()
		return nil, fmt.Errorf("flooder connecting to the host: %w", err)
	}
	return kit, nil
}

// joinGossip subscribes kit to the beacon topic and waits until the
// target is among the topic's peers, so that a publish reaches it.
func (f *Flooder) joinGossip(ctx context.Context, kit *peerKit, topic string) error {
	var err error
	// Queues large enough that the flooder itself drops nothing: what the
	// host drops must be the host's doing.
	if kit.ps, err = pubsub.NewGossipSub(f.ctx, kit.h, pubsub.WithPeerOutboundQueueSize(4096), pubsub.WithMaxMessageSize(1<<20)); err != nil {
		return err
	}
	if kit.topic, err = kit.ps.Join(topic); err != nil {
		return err
	}
	if kit.sub, err = kit.topic.Subscribe(pubsub.WithBufferSize(256)); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		for _, p := range kit.topic.ListPeers() {
			if p == f.tinfo.ID {
				return nil
			}
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("flooder: the host never joined the beacon topic: %w", wctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// capture keeps the host's latest beacon as the flooder received it, and
// drains the other gossiping identities' subscriptions.
func (f *Flooder) capture() {
	defer f.wg.Done()
	var wg sync.WaitGroup
	for _, kit := range []*peerKit{f.flooder, f.rater, f.control} {
		wg.Go(func() {
			for {
				m, err := kit.sub.Next(f.ctx)
				if err != nil {
					return
				}
				if kit == f.flooder && m.GetFrom() == f.tinfo.ID {
					f.capMu.Lock()
					f.captured = m.Message
					f.capMu.Unlock()
				}
			}
		})
	}
	wg.Wait()
}

func (f *Flooder) capturedBeacon() *pspb.Message {
	f.capMu.Lock()
	defer f.capMu.Unlock()
	return f.captured
}

// IDs returns the flooder's identities: the one that sends junk beacons,
// the one that sends valid beacons too often, and the one that behaves.
func (f *Flooder) IDs() (flooder, rater, control peer.ID) {
	return f.flooder.h.ID(), f.rater.h.ID(), f.control.h.ID()
}

// Probe publishes one valid, well-spaced beacon from the flooder, the
// rater and the control, each with FreeMemMB set to marker so that the
// host's view shows whose arrived. A host that penalised the first two
// drops theirs; the control's gets through. The beacons say the peer is
// not accepting work, so that no client places a task on it.
func (f *Flooder) Probe(ctx context.Context, marker uint64) error {
	var errs []error
	for _, kit := range []*peerKit{f.flooder, f.rater, f.control} {
		b := f.beacon(kit.h.ID())
		b.FreeMemMB = marker
		data, err := b.Encode()
		if err != nil {
			return err
		}
		errs = append(errs, kit.topic.Publish(ctx, data))
	}
	return errors.Join(errs...)
}

// beacon is a valid beacon about id that offers nothing.
func (f *Flooder) beacon(id peer.ID) protocol.Beacon {
	return protocol.Beacon{Peer: id.String(), Seq: f.seq.Add(1), Issued: uint64(time.Now().UnixMilli()),
		Models: []string{protocol.DefaultModel}, Slots: 1, SpeedPm: 1000, FreeMemMB: 1}
}

// Close stops every flooding host and goroutine; a running Run ends.
func (f *Flooder) Close() error {
	f.closeOnce.Do(func() { f.closeErr = f.close() })
	return f.closeErr
}

func (f *Flooder) close() error {
	f.cancel()
	var errs []error
	for _, kit := range []*peerKit{f.flooder, f.framer, f.rater, f.control} {
		if kit == nil {
			continue
		}
		if kit.sub != nil {
			kit.sub.Cancel()
		}
		if kit.topic != nil {
			_ = kit.topic.Close()
		}
		errs = append(errs, kit.h.Close())
	}
	f.wg.Wait()
	return errors.Join(errs...)
}

// Run floods the target until every attack has spent its count or
// o.Duration has passed (or ctx ends), then reports. It may be called
// once.
func (f *Flooder) Run(ctx context.Context, o FloodOptions) (*FloodReport, error) {
	o.fill()
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	stopF := context.AfterFunc(f.ctx, cancel) // Close ends a running flood
	defer stopF()

	refusals0, fetch0 := f.target.Refusals(), f.target.FetchStats().Refused
	r := &FloodReport{}
	task := newOutcomes()
	fetch := newOutcomes()
	slow, junk := newOutcomes(), newOutcomes()
	start := time.Now()

	var wg sync.WaitGroup
	for _, p := range []struct {
		proto string
		out   *outcomes
	}{{protocol.TaskProtocol, task}, {protocol.FetchProtocol, fetch}} {
		var budget atomic.Int64
		budget.Store(int64(o.MaxStreams))
		for range o.StreamWorkers {
			wg.Go(func() {
				for ctx.Err() == nil && budget.Add(-1) >= 0 {
					f.holdOne(ctx, f.flooder.h, p.proto, p.out)
				}
			})
		}
		for i := range o.SlowStreams {
			wg.Go(func() { f.slowOne(ctx, p.proto, o.SlowEvery, i, slow) })
		}
		wg.Go(func() {
			for i := range o.JunkFrames {
				if ctx.Err() != nil {
					return
				}
				f.junkOne(ctx, p.proto, i, junk)
			}
		})
	}
	wg.Go(func() { f.junkBeacons(ctx, o, r) })
	wg.Go(func() { f.rateBeacons(ctx, o, r) })
	wg.Go(func() { f.replays(ctx, o, r) })
	wg.Go(func() { f.dhtPuts(ctx, o, r) })
	wg.Go(func() { f.dhtProvides(ctx, o, r) })
	peaks := make(chan [4]int, 1)
	sctx, stopSampling := context.WithCancel(ctx)
	go func() { peaks <- f.samplePeaks(sctx) }()
	wg.Wait()
	stopSampling()
	pk := <-peaks

	r.ElapsedS = round(time.Since(start).Seconds(), 2)
	r.Task, r.Fetch, r.Slow, r.Junk = task.snapshot(), fetch.snapshot(), slow.snapshot(), junk.snapshot()
	r.PeakTaskStreams, r.PeakFetchStreams, r.PeakTransientStreams, r.PeakSystemStreams = pk[0], pk[1], pk[2], pk[3]
	r.HostTaskRefusals = map[string]uint64{}
	for code, n := range f.target.Refusals() {
		if d := n - refusals0[code]; d > 0 {
			r.HostTaskRefusals[code] = d
		}
	}
	r.HostFetchRefusals = f.target.FetchStats().Refused - fetch0
	return r, nil
}

// outcomes is StreamOutcomes being counted.
type outcomes struct {
	opened, openFailed, reset, held atomic.Uint64
	mu                              sync.Mutex
	answered                        map[string]uint64
}

func newOutcomes() *outcomes { return &outcomes{answered: map[string]uint64{}} }

func (o *outcomes) answer(code string) {
	o.mu.Lock()
	o.answered[code]++
	o.mu.Unlock()
}

func (o *outcomes) snapshot() StreamOutcomes {
	o.mu.Lock()
	defer o.mu.Unlock()
	ans := make(map[string]uint64, len(o.answered))
	for k, v := range o.answered {
		ans[k] = v
	}
	return StreamOutcomes{Opened: o.opened.Load(), OpenFailed: o.openFailed.Load(), Reset: o.reset.Load(), Answered: ans, HeldToEnd: o.held.Load()}
}

// holdOne opens one stream and holds it, writing nothing, until the host
// ends it or the flood does.
func (f *Flooder) holdOne(ctx context.Context, h host.Host, proto string, out *outcomes) {
	s, err := h.NewStream(ctx, f.tinfo.ID, lp2pproto.ID(proto))
	if err != nil {
		f.openFailed(ctx, err, out)
		return
	}
	out.opened.Add(1)
	f.await(ctx, s, out)
}

// openFailed counts a stream that could not even be opened: refused by
// the host during negotiation, or the flood ended.
func (f *Flooder) openFailed(ctx context.Context, err error, out *outcomes) {
	if ctx.Err() != nil {
		return
	}
	out.openFailed.Add(1)
	if !errors.Is(err, network.ErrReset) {
		// Not a refusal: the connection is gone. Do not spin on it.
		time.Sleep(10 * time.Millisecond)
	}
}

// await reads the host's first answer on s and counts how the stream
// ended. Reading is what makes the lazy protocol negotiation happen, so a
// held stream reaches the host's handler.
func (f *Flooder) await(ctx context.Context, s network.Stream, out *outcomes) {
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	defer s.Reset()
	// Only error events are expected: 64 KiB is ample.
	body, err := protocol.ReadFrame(bufio.NewReader(s), 64<<10)
	switch {
	case err == nil:
		var ev protocol.Event
		if protocol.Unmarshal(body, &ev) != nil || ev.Type != protocol.EventError {
			out.answer("unexpected")
			return
		}
		out.answer(ev.Code)
	case ctx.Err() != nil:
		out.held.Add(1)
	default:
		// A reset, or the host closing without a word: refused either way.
		out.reset.Add(1)
	}
}

// slowOne sends one frame a byte at a time, a byte every every, forever:
// the host's request deadline must cut it.
func (f *Flooder) slowOne(ctx context.Context, proto string, every time.Duration, i int, out *outcomes) {
	for ctx.Err() == nil {
		s, err := f.framer.h.NewStream(ctx, f.tinfo.ID, lp2pproto.ID(proto))
		if err != nil {
			f.openFailed(ctx, err, out)
			continue
		}
		out.opened.Add(1)
		sctx, cancel := context.WithCancel(ctx)
		var writer sync.WaitGroup
		writer.Go(func() {
			var hdr [binary.MaxVarintLen64]byte
			n := binary.PutUvarint(hdr[:], protocol.MaxRequestBytes)
			msg := append(hdr[:n:n], make([]byte, protocol.MaxRequestBytes)...)
			// Stagger the writers so they do not tick together.
			t := time.NewTicker(every + time.Duration(i)*time.Millisecond)
			defer t.Stop()
			for _, b := range msg {
				if _, err := s.Write([]byte{b}); err != nil {
					return
				}
				select {
				case <-sctx.Done():
					return
				case <-t.C:
				}
			}
		})
		f.await(ctx, s, out)
		cancel()
		writer.Wait()
	}
}

// junkOne sends one malformed request frame, of a kind chosen by i.
func (f *Flooder) junkOne(ctx context.Context, proto string, i int, out *outcomes) {
	s, err := f.framer.h.NewStream(ctx, f.tinfo.ID, lp2pproto.ID(proto))
	if err != nil {
		f.openFailed(ctx, err, out)
		return
	}
	out.opened.Add(1)
	var frame []byte
	switch i % 5 {
	case 0: // a length prefix far over the cap
		frame = binary.AppendUvarint(nil, 1<<40)
	case 1: // just over the cap
		frame = binary.AppendUvarint(nil, protocol.MaxRequestBytes+1)
	case 2: // random bytes in a well-formed frame
		junk := make([]byte, 64+mrand.IntN(1024))
		_, _ = rand.Read(junk)
		frame = append(binary.AppendUvarint(nil, uint64(len(junk))), junk...)
	case 3: // CBOR of the wrong shape
		cb, _ := protocol.Marshal(map[string]any{"task": "no", "cid": 7, "junk": make([]byte, 512)})
		frame = append(binary.AppendUvarint(nil, uint64(len(cb))), cb...)
	case 4: // a length prefix promising more than follows, then close
		frame = append(binary.AppendUvarint(nil, 4096), make([]byte, 100)...)
	}
	_ = s.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Write(frame); err == nil && i%5 == 4 {
		_ = s.CloseWrite()
	}
	f.await(ctx, s, out)
}

// every runs do n times, one every d, until ctx ends.
func every(ctx context.Context, n int, d time.Duration, do func(i int)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for i := range n {
		do(i)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// junkBeacons publishes, from the flooder's identity: random bytes,
// oversized data, beacons about another peer, beacons of the wrong shape,
// and the host's own latest beacon re-published under the flooder's name.
func (f *Flooder) junkBeacons(ctx context.Context, o FloodOptions, r *FloodReport) {
	var sent, resigned atomic.Uint64
	every(ctx, o.JunkBeacons, o.BeaconEvery, func(i int) {
		var data []byte
		switch i % 5 {
		case 0:
			data = make([]byte, 100)
			_, _ = rand.Read(data)
		case 1:
			data = make([]byte, 2*protocol.MaxBeaconBytes)
			_, _ = rand.Read(data)
		case 2: // a valid beacon about someone else
			b := f.beacon(f.control.h.ID())
			data, _ = b.Encode()
		case 3: // the flooder's own, but impossible
			b := f.beacon(f.flooder.h.ID())
			b.Busy, b.Slots = 5, 1
			data, _ = protocol.Marshal(b)
		case 4:
			if m := f.capturedBeacon(); m != nil {
				data = m.GetData()
				resigned.Add(1)
			} else {
				data = []byte("no beacon captured yet")
			}
		}
		if f.flooder.topic.Publish(ctx, data) == nil {
			sent.Add(1)
		}
	})
	r.JunkBeacons, r.ResignedReplays = sent.Load(), resigned.Load()
}

// rateBeacons publishes valid beacons from the rater's own identity, each
// newer than the last, far more often than protocol.BeaconMinInterval.
func (f *Flooder) rateBeacons(ctx context.Context, o FloodOptions, r *FloodReport) {
	var sent uint64
	every(ctx, o.RateBeacons, o.BeaconEvery, func(int) {
		b := f.beacon(f.rater.h.ID())
		data, err := b.Encode()
		if err == nil && f.rater.topic.Publish(ctx, data) == nil {
			sent++
		}
	})
	r.RateBeacons = sent
}

// replays sends the host's captured beacon back to it, verbatim with its
// original author and signature, from the framer, which speaks GossipSub
// only through this raw stream.
func (f *Flooder) replays(ctx context.Context, o FloodOptions, r *FloodReport) {
	var m *pspb.Message
	for m == nil {
		if m = f.capturedBeacon(); m == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	s, err := f.framer.h.NewStream(ctx, f.tinfo.ID, pubsub.GossipSubID_v11)
	if err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	defer s.Close()
	rpc, err := proto.Marshal(&pspb.RPC{Publish: []*pspb.Message{m}})
	if err != nil {
		return
	}
	frame := append(binary.AppendUvarint(nil, uint64(len(rpc))), rpc...)
	var sent uint64
	every(ctx, o.Replays, 10*o.BeaconEvery, func(int) {
		if _, err := s.Write(frame); err == nil {
			sent++
		}
	})
	r.Replays = sent
}

// dhtProto is the private DHT's protocol (node.New: dht.ProtocolPrefix).
var dhtProto = lp2pproto.ID(protocol.DHTPrefix + "/kad/1.0.0")

// dhtPuts sends PUT_VALUE requests for capacity records the host's
// validator must refuse: junk bytes under the flooder's key, the
// flooder's record signed but two hours stale, and the flooder's fresh
// record under the host's own key (which would hide the host if kept).
// A kad-dht server answers an accepted put with its echo and resets the
// stream on a rejected one.
func (f *Flooder) dhtPuts(ctx context.Context, o FloodOptions, r *FloodReport) {
	var s network.Stream
	var br *bufio.Reader
	defer func() {
		if s != nil {
			s.Reset()
		}
	}()
	self := f.flooder.h.ID()
	for i := range o.DHTPuts {
		if ctx.Err() != nil {
			return
		}
		key, val := protocol.CapacityKey(self), []byte(nil)
		switch i % 3 {
		case 0:
			val = make([]byte, 200+mrand.IntN(3000))
			_, _ = rand.Read(val)
		case 1:
			c := protocol.Capacity{Models: []string{protocol.DefaultModel}, Kernels: []string{"sketch"}, MaxConcurrency: 1,
				Issued: uint64(time.Now().Add(-protocol.CapacityMaxAge - time.Hour).UnixMilli())}
			val, _ = c.Sign(f.flooder.key)
		case 2:
			c := protocol.Capacity{Models: []string{protocol.DefaultModel}, Kernels: []string{"sketch"}, MaxConcurrency: 64,
				Issued: uint64(time.Now().UnixMilli())}
			val, _ = c.Sign(f.flooder.key)
			key = protocol.CapacityKey(f.tinfo.ID)
		}
		if s == nil {
			var err error
			if s, err = f.flooder.h.NewStream(ctx, f.tinfo.ID, dhtProto); err != nil {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			br = bufio.NewReader(s)
		}
		msg := dhtpb.NewMessage(dhtpb.Message_PUT_VALUE, []byte(key), 0)
		msg.Record = &recpb.Record{Key: []byte(key), Value: val}
		r.DHTPuts++
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		if writeDelimited(s, msg) != nil || skipDelimited(br) != nil {
			r.DHTPutsRejected++
			s.Reset()
			s = nil
		}
	}
}

// dhtProvides sends ADD_PROVIDER requests: the flooder as provider of
// random keys and of the model's key (which the DHT cannot refuse: anyone
// may say it holds something), and every tenth naming another peer as the
// provider (which it must ignore).
func (f *Flooder) dhtProvides(ctx context.Context, o FloodOptions, r *FloodReport) {
	var s network.Stream
	defer func() {
		if s != nil {
			s.Reset()
		}
	}()
	self := peer.AddrInfo{ID: f.flooder.h.ID(), Addrs: f.flooder.h.Addrs()}
	other := peer.AddrInfo{ID: f.control.h.ID(), Addrs: f.control.h.Addrs()}
	for i := range o.DHTProvides {
		if ctx.Err() != nil {
			return
		}
		key := make([]byte, 34)
		_, _ = rand.Read(key)
		if i%7 == 0 {
			key = node.ModelKey(protocol.DefaultModel).Hash()
		}
		who := self
		if i%10 == 9 {
			who = other
			r.ForgedProvides++
		}
		if s == nil {
			var err error
			if s, err = f.flooder.h.NewStream(ctx, f.tinfo.ID, dhtProto); err != nil {
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		msg := dhtpb.NewMessage(dhtpb.Message_ADD_PROVIDER, key, 0)
		msg.ProviderPeers = dhtpb.RawPeerInfosToPBPeers([]peer.AddrInfo{who})
		_ = s.SetWriteDeadline(time.Now().Add(5 * time.Second))
		r.DHTProvides++
		if writeDelimited(s, msg) != nil || who.ID != self.ID {
			// The host resets the stream on a provider that is not the
			// sender; start a fresh one rather than find out by writing.
			s.Reset()
			s = nil
		}
	}
}

func writeDelimited(w io.Writer, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	_, err = w.Write(append(binary.AppendUvarint(nil, uint64(len(b))), b...))
	return err
}

func skipDelimited(br *bufio.Reader) error {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return err
	}
	_, err = br.Discard(int(min(n, 1<<20)))
	return err
}

// samplePeaks follows the host's resource manager: the most inbound task
// and fetch streams it held at once, and the most in its transient and
// system scopes.
func (f *Flooder) samplePeaks(ctx context.Context) [4]int {
	rm := f.target.Host().Network().ResourceManager()
	var peak [4]int
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		for i, p := range []string{protocol.TaskProtocol, protocol.FetchProtocol} {
			_ = rm.ViewProtocol(lp2pproto.ID(p), func(s network.ProtocolScope) error {
				peak[i] = max(peak[i], s.Stat().NumStreamsInbound)
				return nil
			})
		}
		_ = rm.ViewTransient(func(s network.ResourceScope) error {
			peak[2] = max(peak[2], s.Stat().NumStreamsInbound)
			return nil
		})
		_ = rm.ViewSystem(func(s network.ResourceScope) error {
			peak[3] = max(peak[3], s.Stat().NumStreamsInbound)
			return nil
		})
		select {
		case <-ctx.Done():
			return peak
		case <-t.C:
		}
	}
}

// BeaconCounter is a node.Observer that counts the beacon verdicts of the
// node it observes (and ignores everything else), for the flood's report.
type BeaconCounter struct {
	Accepted, Rejected, Ignored atomic.Uint64
}

var _ node.Observer = (*BeaconCounter)(nil)

func (c *BeaconCounter) Beacon(outcome string) {
	switch outcome {
	case node.BeaconAccepted:
		c.Accepted.Add(1)
	case node.BeaconRejected:
		c.Rejected.Add(1)
	case node.BeaconIgnored:
		c.Ignored.Add(1)
	}
}

func (c *BeaconCounter) SubmitProgress(node.SubmitEvent) {}
func (c *BeaconCounter) SubmitDone(node.SubmitEvent)     {}
func (c *BeaconCounter) Served(node.ServedEvent)         {}
func (c *BeaconCounter) Provided(error)                  {}
