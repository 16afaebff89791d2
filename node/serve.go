package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
)

// writeTimeout bounds each write to a client; a client that stops reading
// for this long is dropped (the computation goes on for the others).
const writeTimeout = 30 * time.Second

// server is the host side of /gpunet/task/1.0.0: validation, answers from the
// store, coalescing of identical tasks, a bounded queue in front of the
// kernel's slots.
type server struct {
	n     *Node
	log   *slog.Logger
	slots chan struct{} // one token per concurrent kernel run

	mu      sync.Mutex
	flights map[cid.Cid]*flight // running or queued computations by TaskCID
	waiting int                 // flights waiting for a slot

	wg sync.WaitGroup // flights and their provides
}

func newServer(n *Node) *server {
	return &server{n: n, log: n.log.With("sub", "serve"), slots: make(chan struct{}, n.cfg.Slots), flights: map[cid.Cid]*flight{}}
}

func (s *server) close() { s.wg.Wait() }

// flight is one computation of a TaskCID that any number of requests wait on.
type flight struct {
	task    protocol.Task
	taskCID cid.Cid
	done    chan struct{} // closed when res or err is set

	mu        sync.Mutex
	listeners map[chan protocol.Event]struct{}

	res *store.Result
	err error
}

// subscribe returns a channel of queued/progress events. Sends never block:
// a slow reader misses intermediate progress, never the result.
func (f *flight) subscribe() chan protocol.Event {
	ch := make(chan protocol.Event, 16)
	f.mu.Lock()
	f.listeners[ch] = struct{}{}
	f.mu.Unlock()
	return ch
}

func (f *flight) unsubscribe(ch chan protocol.Event) {
	f.mu.Lock()
	delete(f.listeners, ch)
	f.mu.Unlock()
}

func (f *flight) broadcast(e protocol.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.listeners {
		select {
		case ch <- e:
		default:
		}
	}
}

// handle serves one task stream.
func (s *server) handle(st network.Stream) {
	defer st.Close()
	remote := st.Conn().RemotePeer()
	log := s.log.With("peer", remote)
	refuse := func(code, msg string, retry time.Duration) {
		s.n.stats.refused.Add(1)
		log.Debug("refusing task", "code", code, "msg", msg)
		_ = st.SetWriteDeadline(time.Now().Add(writeTimeout))
		_ = protocol.WriteMsg(st, protocol.ErrorEvent(code, msg, retry))
	}

	_ = st.SetReadDeadline(time.Now().Add(protocol.RequestTimeout))
	body, err := protocol.ReadFrame(bufio.NewReader(st), protocol.MaxRequestBytes)
	if err != nil {
		refuse(protocol.CodeBadRequest, err.Error(), 0)
		return
	}
	req, err := protocol.DecodeTaskRequest(body)
	if err != nil {
		refuse(protocol.CodeBadRequest, err.Error(), 0)
		return
	}
	if !serves(s.n.cfg.Kernel, req.Task.Model) {
		refuse(protocol.CodeUnsupportedModel, fmt.Sprintf("this host serves %v", s.n.cfg.Kernel.Models()), 0)
		return
	}
	tc, err := req.Task.CID()
	if err != nil {
		refuse(protocol.CodeBadRequest, err.Error(), 0)
		return
	}
	log = log.With("task", tc)

	var res *store.Result
	cached := false
	if !req.NoCache {
		if r, err := s.n.store.Get(s.n.ctx, tc); err == nil {
			res, cached = r, true
		}
	}
	if res == nil {
		f, err := s.join(req.Task, tc, req.NoCache)
		if err != nil {
			var re *protocol.RemoteError
			if errors.As(err, &re) {
				refuse(re.Code, re.Message, re.RetryAfter)
			} else {
				refuse(protocol.CodeInternal, err.Error(), 0)
			}
			return
		}
		if res, err = s.wait(st, f); err != nil {
			if errors.Is(err, errClientGone) {
				log.Debug("client went away", "err", err)
				st.Reset()
				return
			}
			refuse(protocol.CodeInternal, err.Error(), 0)
			return
		}
	}
	if err := sendResult(st, res, cached); err != nil {
		log.Debug("sending result", "err", err)
		st.Reset()
		return
	}
	s.n.stats.served.Add(1)
	if cached {
		s.n.stats.servedCached.Add(1)
	}
	log.Debug("task served", "cached", cached)
}

var errClientGone = errors.New("client stopped reading")

// wait forwards the flight's events to the stream until it finishes.
func (s *server) wait(st network.Stream, f *flight) (*store.Result, error) {
	ch := f.subscribe()
	defer f.unsubscribe(ch)
	for {
		select {
		case <-f.done:
			return f.res, f.err
		case e := <-ch:
			_ = st.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := protocol.WriteMsg(st, e); err != nil {
				return nil, fmt.Errorf("%w: %v", errClientGone, err)
			}
		}
	}
}

// join attaches to the running computation of tc, or starts one if the
// queue has room. noCache never joins a result already stored, but does
// join a computation in flight: that one is fresh by definition.
func (s *server) join(t protocol.Task, tc cid.Cid, noCache bool) (*flight, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.flights[tc]; ok {
		return f, nil
	}
	if s.n.closed.Load() {
		return nil, &protocol.RemoteError{Code: protocol.CodeBusy, Message: "host shutting down"}
	}
	if len(s.slots) == cap(s.slots) && s.waiting >= s.n.cfg.QueueLen {
		return nil, &protocol.RemoteError{Code: protocol.CodeBusy, Message: fmt.Sprintf("queue full (%d waiting)", s.waiting), RetryAfter: time.Second}
	}
	f := &flight{task: t, taskCID: tc, done: make(chan struct{}), listeners: map[chan protocol.Event]struct{}{}}
	s.flights[tc] = f
	s.waiting++
	s.wg.Add(1)
	go s.run(f)
	return f, nil
}

// run computes one flight: wait for a slot, run the kernel, store, provide.
func (s *server) run(f *flight) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.flights, f.taskCID)
		s.mu.Unlock()
		close(f.done)
	}()
	f.broadcast(protocol.Event{Type: protocol.EventQueued, Position: uint32(s.queuePosition())})
	select {
	case s.slots <- struct{}{}:
	case <-s.n.ctx.Done():
		s.mu.Lock()
		s.waiting--
		s.mu.Unlock()
		f.err = errors.New("host shutting down")
		return
	}
	s.mu.Lock()
	s.waiting--
	s.mu.Unlock()
	defer func() { <-s.slots }()

	f.res, f.err = s.compute(f)
	if f.err != nil {
		s.log.Warn("task failed", "task", f.taskCID, "err", f.err)
	}
}

func (s *server) queuePosition() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting
}

// compute runs the kernel for f and stores and provides the result.
func (s *server) compute(f *flight) (*store.Result, error) {
	n := s.n
	if d, ok := n.cfg.Device.(loadTracker); ok {
		d.Begin()
		defer d.End()
	}
	start := time.Now()
	outs, err := n.cfg.Kernel.Run(n.ctx, f.task, func(step, total int) {
		var eta time.Duration
		if step > 0 {
			eta = time.Since(start) * time.Duration(total-step) / time.Duration(step)
		}
		f.broadcast(protocol.Event{Type: protocol.EventProgress, Step: uint32(step), Total: uint32(total), EtaMs: uint64(eta.Milliseconds())})
	})
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", n.cfg.Kernel.Name(), err)
	}
	n.stats.kernelRuns.Add(1)
	mbytes, blocks, err := n.seal(f.task, outs)
	if err != nil {
		return nil, err
	}
	if _, err := n.store.Put(n.ctx, mbytes, blocks); err != nil {
		return nil, fmt.Errorf("storing result: %w", err)
	}
	// Read back what the store kept: for a task stored before, the first
	// result wins, and every server must hand out the same ResultCID.
	res, err := n.store.Get(n.ctx, f.taskCID)
	if err != nil {
		return nil, fmt.Errorf("reading stored result: %w", err)
	}
	n.provideResult(f.taskCID)
	return res, nil
}

// seal turns kernel outputs into raw blocks and a signed manifest.
func (n *Node) seal(t protocol.Task, outs []kernel.Output) ([]byte, [][]byte, error) {
	if len(outs) == 0 || len(outs) > protocol.MaxOutputs {
		return nil, nil, fmt.Errorf("kernel returned %d outputs, want 1..%d", len(outs), protocol.MaxOutputs)
	}
	var mo []protocol.Output
	var blocks [][]byte
	for _, o := range outs {
		if len(o.Data) == 0 || len(o.Data) > protocol.MaxBlockBytes {
			return nil, nil, fmt.Errorf("kernel output of %d bytes, want 1..%d", len(o.Data), protocol.MaxBlockBytes)
		}
		mo = append(mo, protocol.Output{CID: protocol.Link{Cid: protocol.RawCID(o.Data)}, MediaType: o.MediaType, Size: uint64(len(o.Data))})
		blocks = append(blocks, o.Data)
	}
	m, err := protocol.NewManifest(t, mo, n.cfg.Kernel.Name(), uint64(time.Now().UnixMilli()), n.key)
	if err != nil {
		return nil, nil, err
	}
	mb, err := m.Encode()
	if err != nil {
		return nil, nil, err
	}
	return mb, blocks, nil
}

// provideResult announces on the DHT that this node holds taskCID's result,
// in the background: the answer to the client must not wait on the DHT.
func (n *Node) provideResult(tc cid.Cid) {
	if n.closed.Load() {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
		defer cancel()
		if err := n.dht.Provide(ctx, tc, true); err != nil {
			n.log.Debug("providing result", "task", tc, "err", err)
		}
	}()
}

// sendResult writes one block event per output, then the result event.
func sendResult(st network.Stream, res *store.Result, cached bool) error {
	for _, b := range res.Blocks {
		_ = st.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := protocol.WriteMsg(st, protocol.Event{Type: protocol.EventBlock, Data: b}); err != nil {
			return err
		}
	}
	_ = st.SetWriteDeadline(time.Now().Add(writeTimeout))
	return protocol.WriteMsg(st, protocol.Event{Type: protocol.EventResult, Manifest: res.ManifestBytes, Cached: cached})
}

func serves(k kernel.Kernel, model string) bool {
	for _, m := range k.Models() {
		if m == model {
			return true
		}
	}
	return false
}

// loadTracker is implemented by devices that model heat from the work the
// host gives them (the simulated GPU). Begin and End must not block.
type loadTracker interface {
	Begin()
	End()
}
