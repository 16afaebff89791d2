package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// writeTimeout bounds each write to a client; a client that stops reading
// for this long is dropped (the computation goes on for the others).
const writeTimeout = 30 * time.Second

// server is the host side of /gpunet/task/1.0.0: validation, answers from the
// store, coalescing of identical tasks, admission (rate limits, a bounded
// fair queue, the thermal governor) and the kernel runs themselves.
type server struct {
	n   *Node
	log *slog.Logger
	dev kernel.Device // may be nil
	// heat learns the GPU's thermal model from its readings, for devices
	// without one of their own (real GPUs); nil otherwise.
	heat *kernel.HeatFit

	mu      sync.Mutex          // guards everything below
	flights map[cid.Cid]*flight // queued or running computations by TaskCID
	queue   fairQueue[*flight]
	running int
	gov     *Governor

	// ownerPaused is the owner's own pause (Node.Pause, Node.Resume);
	// offHours is the lending hours' (Config.LendHours, hours.go). The
	// governor is paused while either holds, and each is set and cleared
	// by its own cause only, so the clock never undoes the owner's word.
	ownerPaused bool
	offHours    bool

	limiter rateLimiter
	tempC   float64            // last temperature reading
	service map[string]float64 // EWMA of run time per model, ms
	changed chan struct{}      // poked when the beacon should go out early
	// starts counts the tasks this host ever started on a slot. A probing
	// host counts its idle notices by it (beacon, sampling.Changed), so
	// that a slot taken and freed again between two beacons is announced
	// anew.
	starts uint64
	// throttled is set while coolDown holds work back for heat, and
	// coolers counts the tasks waiting in it, so that the episode is
	// logged once.
	throttled bool
	coolers   int
	refusals  map[string]uint64 // task requests refused, by error code

	wake chan struct{} // poked when a slot may be free or work arrived
	runq chan *flight  // to idle runners (runner); unbuffered
	wg   sync.WaitGroup
}

func newServer(n *Node) *server {
	s := &server{
		n: n, log: n.log.With("sub", "serve"), dev: n.cfg.Device,
		flights: map[cid.Cid]*flight{}, service: map[string]float64{}, refusals: map[string]uint64{},
		gov:     NewGovernor(n.cfg.MaxTempC, n.cfg.Slots),
		limiter: rateLimiter{rate: n.cfg.RateLimit, burst: float64(n.cfg.RateBurst)},
		wake:    make(chan struct{}, 1), changed: make(chan struct{}, 1),
		runq: make(chan *flight),
	}
	if _, ok := s.dev.(heatPredictor); s.dev != nil && !ok {
		s.heat = &kernel.HeatFit{}
	}
	// A simulated GPU's speed is known before it runs anything: seed the
	// service-time estimate from it, so the first beacons already tell a
	// fast card from a slow one.
	if sd, ok := s.dev.(simulatedDevice); ok && n.cfg.SimulateGPUSpeed && sd.Profile().MPixStepsPerSec > 0 {
		for _, m := range n.cfg.Kernel.Models() {
			s.service[m] = referenceWork / sd.Profile().MPixStepsPerSec * 1000
		}
	}
	s.wg.Add(1)
	go s.dispatchLoop()
	return s
}

// referenceWork is the megapixel-steps of a default task (512×512, 20
// steps). Service times are kept and published scaled to it, so hosts that
// ran different task sizes compare fairly.
const referenceWork = float64(protocol.DefaultWidth) * protocol.DefaultHeight * protocol.DefaultSteps / 1e6

// taskWork is t's megapixel-steps.
func taskWork(t protocol.Task) float64 {
	return float64(t.Width) * float64(t.Height) * float64(t.Steps) / 1e6
}

// close waits for the dispatcher and every running task (n.ctx is already
// cancelled, so they stop at their next step).
func (s *server) close() {
	s.mu.Lock()
	queued := s.queue.drain()
	s.mu.Unlock()
	for _, f := range queued {
		s.finish(f, nil, &protocol.RemoteError{Code: protocol.CodeBusy, Message: "host shutting down"})
	}
	s.wg.Wait()
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// flight is one computation of a TaskCID that any number of requests wait on.
type flight struct {
	task    protocol.Task
	taskCID cid.Cid
	// from is the peer whose request made the flight: the one that holds
	// the task's input images.
	from peer.ID
	done chan struct{} // closed when res or err is set (deliver)
	once sync.Once     // deliver's
	// over is closed by finish, once the flight has left the server: its
	// result stored, when it has one.
	over chan struct{}
	// ctx is the computation's; cancel stops it once nobody waits for it.
	ctx    context.Context
	cancel context.CancelFunc
	// waiters counts the requests attached to it (guarded by server.mu,
	// counted at admission, so a request that joined but has not
	// subscribed yet still counts).
	waiters int
	// previews is the most partial images any of its requests asked for
	// (guarded by server.mu). compute reads it as the kernel starts: a
	// request that joins later gets at most what is already planned.
	previews int

	// sealing is set once the kernel has returned: what is left before
	// done is signing the outputs (and, when the store held a result for
	// the task already, storing them), moments of CPU work, so wait holds
	// the last events for the result's write.
	sealing atomic.Bool

	mu        sync.Mutex
	listeners map[chan *protocol.Event]struct{}
	last      protocol.Event // the latest progress event, once it runs (never a preview)

	res *store.Result
	err error
	// fresh is this host's own result, when res is another one the store
	// held first for the task (a no-cache rerun): what a verify request
	// gets. Nil when res is fresh itself.
	fresh *store.Result
	// started is when the kernel began, kernel how long it ran; set by
	// compute before done is closed, read after.
	started time.Time
	kernel  time.Duration
}

// deliver gives every request waiting on f its answer: the first call
// sets it and closes done, later ones change nothing. compute delivers a
// result as soon as it is sealed, and finish whatever the end brought.
func (f *flight) deliver(res *store.Result, err error) {
	f.once.Do(func() {
		f.res, f.err = res, err
		close(f.done)
	})
}

// delivered returns f's result once it has one, and whether it has.
func (f *flight) delivered() (*store.Result, bool) {
	select {
	case <-f.done:
		return f.res, f.err == nil && f.res != nil
	default:
		return nil, false
	}
}

// answer is the result a request gets once f is done: the stored one, or
// for a verify request (protocol.TaskRequest.Verify) this host's own.
func (f *flight) answer(verify bool) *store.Result {
	if verify && f.fresh != nil {
		return f.fresh
	}
	return f.res
}

// timing is, for a request admitted to f at admitted, how long it waited
// for the kernel to start and how long the kernel ran. Call after done.
func (f *flight) timing(admitted time.Time) (wait, kernel time.Duration) {
	if f.started.IsZero() {
		return 0, 0
	}
	return max(0, f.started.Sub(admitted)), f.kernel
}

// subscribe returns a channel of queued, progress and preview events, which
// its reader must not change (every listener gets the same). Sends never
// block: a slow reader misses intermediate progress and previews (the
// protocol makes both advisory), never the result.
func (f *flight) subscribe() chan *protocol.Event {
	ch := make(chan *protocol.Event, 16)
	f.mu.Lock()
	f.listeners[ch] = struct{}{}
	f.mu.Unlock()
	return ch
}

func (f *flight) unsubscribe(ch chan *protocol.Event) {
	f.mu.Lock()
	delete(f.listeners, ch)
	f.mu.Unlock()
}

func (f *flight) broadcast(e protocol.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e.Type != protocol.EventPreview {
		// A preview says nothing about where the task stands, and is too
		// big to repeat as a keepalive.
		f.last = e
	}
	for ch := range f.listeners {
		select {
		case ch <- &e:
		default:
		}
	}
}

// handle serves one task stream: one request, its answer.
func (s *server) handle(st network.Stream) {
	defer st.Close()
	start := time.Now()
	remote := st.Conn().RemotePeer()
	_ = st.SetReadDeadline(time.Now().Add(protocol.RequestTimeout))
	// Small: the request's body is read straight into its own buffer
	// (protocol.ReadFrame), and after it the reader only watches for a
	// reset (watchCancel).
	link := &streamLink{st: st, br: bufio.NewReaderSize(st, 512)}
	body, err := protocol.ReadFrame(link.br, protocol.MaxRequestBytes)
	var req *protocol.TaskRequest
	if err == nil {
		req, err = protocol.DecodeTaskRequest(body)
	}
	if err != nil {
		s.refuse(remote, cid.Undef, link, nil, badRequest(err), start)
		return
	}
	if !s.answer(remote, req, link, start) {
		st.Reset()
	}
}

// taskLink is how the answer to one request reaches its client: a task
// stream of its own (streamLink), or the request's ID on a session
// (sessionLink, session.go).
type taskLink interface {
	// send writes whole event frames, in one write when it can; pieces
	// are the frames' bytes in order, cut anywhere. An error means the
	// client cannot be reached.
	send(pieces ...[]byte) error
	// cancelled returns a channel closed when the client withdraws the
	// request. Called once, after the first send.
	cancelled() <-chan struct{}
}

// streamLink is a task stream's taskLink; br is its reader, past the
// request.
type streamLink struct {
	st network.Stream
	br *bufio.Reader
}

func (l *streamLink) send(pieces ...[]byte) error {
	for _, p := range pieces {
		_ = l.st.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := l.st.Write(p); err != nil {
			return err
		}
	}
	return nil
}

func (l *streamLink) cancelled() <-chan struct{} { return watchCancel(l.st, l.br) }

// answer serves one decoded request over link, and reports false when the
// client went away or could not be written to (a task stream is then
// reset).
func (s *server) answer(remote peer.ID, req *protocol.TaskRequest, link taskLink, start time.Time) bool {
	// The connection manager spares the client's connection while this
	// host works for it.
	tag := taskTag()
	s.n.host.ConnManager().Protect(remote, tag)
	defer s.n.host.ConnManager().Unprotect(remote, tag)
	// out holds events not yet written: the last of them go out in one
	// write with the result or the refusal.
	var out bytes.Buffer
	if re := canRun(s.n.cfg.Kernel, req.Task); re != nil {
		return s.refuse(remote, cid.Undef, link, &out, re, start)
	}
	tc, err := req.Task.CID()
	if err != nil {
		return s.refuse(remote, cid.Undef, link, &out, badRequest(err), start)
	}

	var res *store.Result
	var f *flight
	var admitted time.Time
	cached := false
	if !req.NoCache && !req.Verify && s.n.store.Has(s.n.ctx, tc) {
		if r, err := s.n.reservable(s.n.ctx, tc); err == nil {
			res, cached = r, true
		}
	}
	if res == nil {
		if f, err = s.admitPreviews(remote, req.Submitter, int(req.Previews), req.NoCache || req.Verify, req.Task, tc); err != nil {
			return s.refuse(remote, tc, link, &out, err, start)
		}
		admitted = time.Now()
		res, err = s.wait(link, f, int(req.Previews), &out)
		if err == nil {
			res = f.answer(req.Verify)
		}
		gone := errors.Is(err, errClientGone)
		s.leave(f, gone)
		if gone {
			s.log.Debug("client went away", "peer", remote, "task", tc, "err", err)
			return false
		}
		if err != nil {
			return s.refuse(remote, tc, link, &out, err, start)
		}
	}
	if err := sendResultAfter(link, &out, res, cached); err != nil {
		s.log.Debug("sending result", "peer", remote, "task", tc, "err", err)
		return false
	}
	s.n.stats.served.Add(1)
	if cached {
		s.n.stats.servedCached.Add(1)
		s.n.announce(res.Manifest) // re-served to another peer (announce.go)
	}
	ev := ServedEvent{TaskCID: tc, Peer: remote, Cached: cached, Elapsed: time.Since(start)}
	if f != nil {
		ev.QueueWait, ev.KernelTime = f.timing(admitted)
	}
	s.n.observe(func(o Observer) { o.Served(ev) })
	s.log.Info("task served", "peer", remote, "task", tc, "cache", cacheWord(cached), "ms", ev.Elapsed.Milliseconds())
	return true
}

// refuse answers a request of remote (for task tc, when known) with the
// error event err maps to, after the events in out (nil for none), counts
// the refusal and reports whether it went out.
func (s *server) refuse(remote peer.ID, tc cid.Cid, link taskLink, out *bytes.Buffer, err error, start time.Time) bool {
	re := asRemote(err)
	s.refused(ServedEvent{TaskCID: tc, Peer: remote, Code: re.Code, Elapsed: time.Since(start)})
	s.log.Debug("refusing task", "peer", remote, "task", tc, "code", re.Code, "msg", re.Message)
	if out == nil {
		out = new(bytes.Buffer)
	}
	_ = protocol.WriteMsg(out, protocol.ErrorEvent(re.Code, re.Message, re.RetryAfter))
	return link.send(out.Bytes()) == nil
}

// refused counts a refusal and tells the observers.
func (s *server) refused(ev ServedEvent) {
	s.n.stats.refused.Add(1)
	s.mu.Lock()
	s.refusals[ev.Code]++
	s.mu.Unlock()
	s.n.observe(func(o Observer) { o.Served(ev) })
}

var errClientGone = errors.New("client stopped reading")

// taskTags numbers taskTag's tags.
var taskTags atomic.Uint64

// taskTag returns a connection manager tag of its own for one task
// stream: a protection per stream, so that one stream's end does not lift
// another's. Numbered rather than named by the stream's ID, which costs a
// formatted string with the peer's base58 ID.
func taskTag() string {
	return "gpunet-task-" + strconv.FormatUint(taskTags.Add(1), 10)
}

// local runs a task submitted on this host on its own GPU: the host side of
// the task protocol without the stream. Admission is the same as for a
// remote submitter's (the owner's pause, the governor, the queue); onEvent
// gets the events a stream would carry, up to previews preview events among
// them.
func (s *server) local(ctx context.Context, req protocol.TaskRequest, tc cid.Cid, onEvent func(protocol.Event)) (*store.Result, error) {
	t, submitter, previews := req.Task, req.Submitter, int(req.Previews)
	if re := canRun(s.n.cfg.Kernel, t); re != nil {
		return nil, re
	}
	start := time.Now()
	self := s.n.host.ID()
	if !req.NoCache && !req.Verify {
		if r, err := s.n.servable(ctx, tc); err == nil {
			s.n.stats.served.Add(1)
			s.n.stats.servedCached.Add(1)
			ev := ServedEvent{TaskCID: tc, Peer: self, Cached: true, Elapsed: time.Since(start)}
			s.n.observe(func(o Observer) { o.Served(ev) })
			return r, nil
		}
	}
	f, err := s.admitPreviews(self, submitter, previews, req.NoCache || req.Verify, t, tc)
	if err != nil {
		s.refused(ServedEvent{TaskCID: tc, Peer: self, Code: asRemote(err).Code, Elapsed: time.Since(start)})
		return nil, err
	}
	admitted := time.Now()
	ch := f.subscribe()
	defer f.unsubscribe(ch)
	onEvent(s.stateEvent(f))
	for {
		select {
		case <-f.done:
			// This node's own submission: a Submit returns a result its
			// store holds, so it waits for the store write that remote
			// clients need not wait for (compute).
			<-f.over
			s.leave(f, false)
			if f.err == nil {
				s.n.stats.served.Add(1)
				ev := ServedEvent{TaskCID: tc, Peer: self, Elapsed: time.Since(start)}
				ev.QueueWait, ev.KernelTime = f.timing(admitted)
				s.n.observe(func(o Observer) { o.Served(ev) })
				s.log.Info("task served", "peer", "self", "task", tc, "cache", cacheWord(false), "ms", ev.Elapsed.Milliseconds())
			}
			return f.answer(req.Verify), f.err
		case e := <-ch:
			if e.Type == protocol.EventPreview {
				if previews <= 0 {
					continue // another request's
				}
				previews--
			}
			onEvent(*e)
		case <-ctx.Done():
			s.leave(f, true)
			return nil, ctx.Err()
		}
	}
}

// watchCancel returns a channel closed when the client cancels the task by
// resetting the stream (or breaks the protocol by writing after its
// request). A client that closed its write side after the request, as
// clients before the queue hedge did, reads as EOF here: it is noticed
// only when a write to it fails. The watcher ends when the stream closes.
func watchCancel(st network.Stream, br *bufio.Reader) <-chan struct{} {
	gone := make(chan struct{})
	_ = st.SetReadDeadline(time.Time{})
	go func() {
		if _, err := br.ReadByte(); err != io.EOF {
			close(gone)
		}
	}()
	return gone
}

// stateEvent is where f stands now, as the first event a new submitter
// gets: queued, with its position and the host's ETA for it
// (scheduler.QueuedETAMs); or running, as its latest progress event (step 0
// when it has just started).
func (s *server) stateEvent(f *flight) protocol.Event {
	e, _ := s.state(f)
	return e
}

// state is stateEvent, and whether f runs and its model's recent run time
// says it will be done within quickAnswer (wait).
func (s *server) state(f *flight) (e protocol.Event, soon bool) {
	s.mu.Lock()
	pos := 0
	if s.queue.len() > 0 {
		pos = s.queue.position(f)
	}
	svc := s.meanServiceLocked(f.task)
	_, known := s.service[f.task.Model]
	s.mu.Unlock()
	if pos > 0 {
		eta := scheduler.QueuedETAMs(pos, s.n.cfg.Slots, svc)
		return protocol.Event{Type: protocol.EventQueued, Position: uint32(pos), EtaMs: uint64(eta)}, false
	}
	soon = known && svc < float64(quickAnswer/time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last.Type == protocol.EventProgress {
		return f.last, soon
	}
	return startedEvent(f.task, svc), soon
}

// quickAnswer is how long a host may hold the first event of a task it
// expects to finish in less than that (a no-op kernel, a cache-sized
// task), so that the answer goes out whole, in one write with the result:
// a fraction of a millisecond more before the first event, one write and
// one wake-up fewer on each side. A task that runs longer than expected
// gets its first event at quickAnswer, and the rest as usual.
const quickAnswer = time.Millisecond

// startedEvent is the progress event a host sends as a task starts: step 0.
func startedEvent(t protocol.Task, serviceMs float64) protocol.Event {
	return protocol.Event{Type: protocol.EventProgress, Total: uint32(t.Steps), EtaMs: uint64(serviceMs)}
}

func badRequest(err error) error {
	return &protocol.RemoteError{Code: protocol.CodeBadRequest, Message: err.Error()}
}

// asRemote maps any error to what the client is told.
func asRemote(err error) *protocol.RemoteError {
	var re *protocol.RemoteError
	if errors.As(err, &re) {
		return re
	}
	return &protocol.RemoteError{Code: protocol.CodeInternal, Message: err.Error()}
}

// keepaliveEvery is how often a waiting client hears from the host even
// when nothing changed (a long queue wait, a long step), so that it can
// tell a slow host from a frozen one (Config.SuspectAfter).
const keepaliveEvery = protocol.KeepaliveInterval

// wait answers the request at once with where f stands (stateEvent), then
// forwards the flight's events to the stream until it finishes, repeating
// the latest one when nothing was sent for keepaliveEvery; of previews,
// only as many as this request asked for (the flight makes as many as its
// most eager request wants), and never as a keepalive. It watches for the
// client's cancellation (watchCancel) on br, the stream's reader.
//
// "At once" is within quickAnswer for a task expected to be done by then:
// its events and result then go out together (sendResultAfter).
//
// Writes are what a task costs beyond a raw round trip: on a libp2p
// stream each is a yamux frame, a Noise message and a syscall on this
// side, and a read and a wake-up on the client's. So events that are
// ready together go out in one write; a progress event for the step the
// client last heard of is not sent again (the kernel's step 0 after the
// state event says so already); and once the kernel has returned (the
// flight is sealing), the events left wait in out for the result, which
// sendResultAfter writes with them, or for the next keepalive tick should
// sealing take that long. Events left in out when f is done are the
// caller's to send.
func (s *server) wait(link taskLink, f *flight, previews int, out *bytes.Buffer) (*store.Result, error) {
	// Subscribed before the state event is taken, so that no event
	// between the two is lost.
	ch := f.subscribe()
	defer f.unsubscribe(ch)
	last, soon := s.state(f)
	lastSent := time.Now()
	flush := func() error {
		if out.Len() == 0 {
			return nil
		}
		err := link.send(out.Bytes())
		out.Reset()
		if err != nil {
			return fmt.Errorf("%w: %v", errClientGone, err)
		}
		lastSent = time.Now()
		return nil
	}
	add := func(e protocol.Event) {
		if e.Type == protocol.EventPreview {
			if previews <= 0 {
				return // another request's
			}
			previews--
		} else {
			if e.Type == protocol.EventProgress && last.Type == protocol.EventProgress && e.Step == last.Step && e.Total == last.Total {
				return // the client knows this step
			}
			last = e
		}
		_ = protocol.WriteMsg(out, e) // into a buffer: only encoding could fail, and events encode
	}
	drain := func() {
		for {
			select {
			case e := <-ch:
				add(*e)
			default:
				return
			}
		}
	}
	// The answer at once (docs/protocol.md, Ordering), or with the result
	// when that is as good as at once.
	_ = protocol.WriteMsg(out, last)
	if soon {
		t := time.NewTimer(quickAnswer)
		select {
		case <-f.done:
			t.Stop()
			drain()
			return f.res, f.err
		case <-t.C:
		}
		drain()
	}
	if err := flush(); err != nil {
		return nil, err
	}
	cancelled := link.cancelled()
	tick := time.NewTicker(keepaliveEvery)
	defer tick.Stop()
	for {
		select {
		case <-f.done:
			return f.res, f.err
		case <-cancelled:
			return nil, fmt.Errorf("%w: request withdrawn", errClientGone)
		case e := <-ch:
			add(*e)
			drain()
			if f.sealing.Load() {
				continue // the result follows: these go out with it
			}
			if err := flush(); err != nil {
				return nil, err
			}
		case <-tick.C:
			if out.Len() == 0 {
				if time.Since(lastSent) < keepaliveEvery/2 {
					continue
				}
				if last.Type == protocol.EventQueued {
					last = s.stateEvent(f)
				}
				_ = protocol.WriteMsg(out, last)
			}
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
}

// leave ends one request's wait on f. When the last request leaves because
// its client went away (it gave up, or took the task elsewhere), nobody
// wants f any more: a queued flight is dropped and a running one cancelled
// at its next step, so the GPU does not compute what nobody wants. A
// request for the same task that arrives later starts afresh.
func (s *server) leave(f *flight, gone bool) {
	s.mu.Lock()
	f.waiters--
	drop := gone && f.waiters == 0
	queued := drop && s.queue.remove(f)
	if drop && s.flights[f.taskCID] == f {
		delete(s.flights, f.taskCID)
	}
	s.mu.Unlock()
	switch {
	case queued:
		s.finish(f, nil, &protocol.RemoteError{Code: protocol.CodeBusy, Message: "every submitter left the queue"})
		poke(s.changed)
	case drop:
		f.cancel()
	}
}

// admit attaches the request to the running or queued computation of tc,
// or queues a new one. Joining a computation is always allowed: it costs
// the GPU nothing. A new one must pass, in order: the owner's pause, the
// thermal governor, the queue bound, and the peer's rate limit, which is
// charged last so that only admitted work spends a token (a refusal for a
// full queue must not turn the client's retry into a rate-limit refusal).
// Every refusal says when to retry, so the client can go elsewhere
// meanwhile. The queue is fair between peers first and then between the
// submitters a peer forwards for.
//
// Either way the request counts as one of the flight's waiters until it
// leaves.
func (s *server) admit(from peer.ID, submitter string, t protocol.Task, tc cid.Cid) (*flight, error) {
	return s.admitPreviews(from, submitter, 0, false, t, tc)
}

// admitPreviews is admit for a request that wants previews partial images.
// They are recorded before the flight can start: a free slot starts it
// within this call. A fresh request (no_cache, verify) joins a computation
// still running, never one that has delivered its result and is storing
// it (compute): that result is as good as stored, and the request asked
// for a computation.
func (s *server) admitPreviews(from peer.ID, submitter string, previews int, fresh bool, t protocol.Task, tc cid.Cid) (*flight, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.flights[tc]; ok {
		if _, sent := f.delivered(); !fresh || !sent {
			f.waiters++
			f.previews = max(f.previews, previews)
			return f, nil
		}
	}
	switch {
	case s.n.closed.Load():
		return nil, &protocol.RemoteError{Code: protocol.CodeBusy, Message: "host shutting down"}
	case s.gov.Paused():
		return nil, s.pausedErrLocked()
	case s.gov.Hot():
		return nil, &protocol.RemoteError{Code: protocol.CodeTooHot,
			Message: fmt.Sprintf("GPU at %.1f °C, limit %.0f °C", s.tempC, s.gov.LimitC), RetryAfter: 5 * time.Second}
	}
	if s.queue.len() >= s.n.cfg.QueueLen && s.running >= s.n.cfg.Slots {
		// A place frees when a running task ends: on average a service
		// time over the slots.
		return nil, &protocol.RemoteError{Code: protocol.CodeBusy, Message: fmt.Sprintf("queue full (%d waiting)", s.queue.len()),
			RetryAfter: time.Duration(s.meanServiceLocked(t)/float64(s.n.cfg.Slots)) * time.Millisecond}
	}
	if ok, retry := s.limiter.take(from, time.Now()); !ok {
		return nil, &protocol.RemoteError{Code: protocol.CodeRateLimited, Message: "too many tasks from you", RetryAfter: retry}
	}
	f := &flight{task: t, taskCID: tc, from: from, done: make(chan struct{}), over: make(chan struct{}), listeners: map[chan *protocol.Event]struct{}{}, waiters: 1, previews: previews}
	f.ctx, f.cancel = context.WithCancel(s.n.ctx)
	s.flights[tc] = f
	// The peer's binary ID: a key, never shown, so not worth base58.
	s.queue.push(fairKey{string(from), submitter}, f)
	s.startLocked() // a free slot takes it now, so its first event says so
	poke(s.changed)
	return f, nil
}

// startLocked starts queued flights, in the fair queue's order, while the
// governor allows at the last temperature read. Callers hold mu.
func (s *server) startLocked() {
	allowed := s.gov.Observe(s.tempC)
	for s.running < allowed && s.queue.len() > 0 {
		f, _ := s.queue.pop()
		s.running++
		s.starts++
		select {
		case s.runq <- f: // an idle runner takes it
		default:
			s.wg.Add(1)
			go s.runner(f)
		}
	}
}

// runnerIdle is how long a runner waits for its next flight before it
// ends.
const runnerIdle = 10 * time.Second

// runner runs f, then the flights startLocked hands it on runq, until it
// has waited runnerIdle for one or the node closes. A goroutine that has
// run a task has the stack the next one needs (the kernel, CBOR, the
// signature, the store): a new goroutine per task grew its stack, copying
// it, every time. Runners are at most as many as tasks ran at once.
func (s *server) runner(f *flight) {
	defer s.wg.Done()
	idle := time.NewTimer(runnerIdle)
	defer idle.Stop()
	for {
		s.run(f)
		idle.Reset(runnerIdle)
		select {
		case f = <-s.runq:
		case <-idle.C:
			return
		case <-s.n.ctx.Done():
			return
		}
	}
}

// dispatchLoop starts queued flights while the governor allows, with a
// fresh temperature reading. It wakes on finished work, and on a short tick
// while work waits (the GPU may have cooled); admit starts new work itself
// when a slot is free.
func (s *server) dispatchLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		s.observe()
		s.mu.Lock()
		s.startLocked()
		s.mu.Unlock()
		select {
		case <-s.n.ctx.Done():
			return
		case <-s.wake:
		case <-tick.C:
		}
	}
}

// observe reads the device's temperature into s.tempC.
func (s *server) observe() {
	if s.dev == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.n.ctx, 2*time.Second)
	defer cancel()
	t, err := s.dev.Telemetry(ctx)
	if err != nil {
		return
	}
	if s.heat != nil {
		s.heat.Add(time.Now(), t.TempC, t.PowerW, t.UtilPct/100)
	}
	s.mu.Lock()
	s.tempC = t.TempC
	s.mu.Unlock()
}

// run computes one flight and releases its slot.
func (s *server) run(f *flight) {
	start := time.Now()
	released := false
	// release frees the slot, and for a result folds its time into the
	// model's service time; compute calls it as it delivers a result
	// before storing it, so that the slot is free by the time the client
	// has the result and may send its next task.
	release := func(ok bool) {
		if released {
			return
		}
		released = true
		s.mu.Lock()
		s.running--
		queued := s.queue.len() > 0
		if ok {
			const alpha = 0.3 // recent runs dominate, one outlier does not
			ms := float64(time.Since(start).Milliseconds()) * referenceWork / taskWork(f.task)
			if old, ok := s.service[f.task.Model]; ok {
				ms = alpha*ms + (1-alpha)*old
			}
			s.service[f.task.Model] = ms
		}
		s.mu.Unlock()
		if queued {
			poke(s.wake) // the dispatcher starts the next; admit starts new work itself
		}
	}
	res, err := s.compute(f, func() { release(true) })
	release(err == nil)
	switch {
	case err != nil && f.ctx.Err() != nil && s.n.ctx.Err() == nil:
		s.log.Debug("task cancelled: nobody waits for it", "task", f.taskCID)
	case err != nil:
		s.log.Warn("task failed", "task", f.taskCID, "err", err)
	}
	s.finish(f, res, err)
	poke(s.changed)
}

// finish ends a flight: requests for its task no longer join it, and its
// waiters get res or err unless compute delivered the result already.
func (s *server) finish(f *flight, res *store.Result, err error) {
	s.mu.Lock()
	if s.flights[f.taskCID] == f {
		delete(s.flights, f.taskCID)
	}
	s.mu.Unlock()
	f.cancel() // releases its context
	f.deliver(res, err)
	close(f.over)
}

// storing returns the result of tc that this host has sent and is still
// storing (compute delivers before the store write ends), if any: the
// fetch protocol serves it as if stored, since a client may ask for it as
// soon as it has it.
func (s *server) storing(tc cid.Cid) (*store.Result, bool) {
	s.mu.Lock()
	f := s.flights[tc]
	s.mu.Unlock()
	if f == nil {
		return nil, false
	}
	return f.delivered()
}

// compute runs the kernel for f, then stores and provides the result.
// freeSlot frees f's slot early (run).
func (s *server) compute(f *flight, freeSlot func()) (*store.Result, error) {
	n := s.n
	// Input images are fetched as the task starts, not at admission, so
	// a task refused or cancelled in the queue costs no transfer; the slot
	// waits for them, the GPU's heat and the kernel's time do not count it.
	var in kernel.Inputs
	if len(f.task.Inputs) > 0 {
		var err error
		if in, err = n.taskInputs(f.ctx, f.task, f.from); err != nil {
			return nil, err
		}
	}
	// The GPU is loaded from the start of the first step to the end of the
	// last; encoding the outputs afterwards is the CPU's work.
	lt, _ := s.dev.(loadTracker)
	loaded := lt != nil
	if loaded {
		lt.Begin()
	}
	release := func() {
		if loaded {
			loaded = false
			lt.End()
		}
	}
	defer release()
	var lastTemp float64
	s.coolDown(f.ctx, lt, &lastTemp)
	s.mu.Lock()
	svc := s.meanServiceLocked(f.task)
	previews := f.previews
	s.mu.Unlock()
	f.broadcast(startedEvent(f.task, svc))
	pace := newPacer(s.dev, f.task, n.cfg.SimulateGPUSpeed)
	start := time.Now()
	f.started = start
	run := n.cfg.Kernel.Run
	var at []int
	var preview kernel.PreviewFunc
	if previews > 0 {
		at = kernel.PreviewSteps(int(f.task.Steps), previews)
		preview = func(step int, png []byte) {
			// A kernel's contract caps a preview, but the host vouches for
			// what it sends: one over the cap would fail the client's
			// decoder and with it the task.
			if len(png) == 0 || len(png) > protocol.MaxPreviewBytes || step < 0 || step > int(f.task.Steps) {
				return
			}
			f.broadcast(protocol.Event{Type: protocol.EventPreview, Data: png, Step: uint32(step), Total: f.task.Steps})
		}
	}
	if pk, ok := n.cfg.Kernel.(kernel.Previewer); ok && previews > 0 {
		run = func(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
			return pk.RunWithPreviews(ctx, t, progress, at, preview)
		}
	}
	if len(f.task.Inputs) > 0 {
		// canRun admitted the task only for an Editor.
		ek, _ := n.cfg.Kernel.(kernel.Editor)
		run = func(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
			return ek.Edit(ctx, t, in, progress, at, preview)
		}
	}
	outs, err := run(f.ctx, f.task, func(step, total int) {
		pace.step(f.ctx)
		if step >= total {
			release()
		} else {
			s.coolDown(f.ctx, lt, &lastTemp)
			pace.mark() // time spent cooling down is not the GPU's pace
		}
		var eta time.Duration
		if step > 0 {
			eta = time.Since(start) * time.Duration(total-step) / time.Duration(step)
		}
		f.broadcast(protocol.Event{Type: protocol.EventProgress, Step: uint32(step), Total: uint32(total), EtaMs: uint64(eta.Milliseconds())})
	})
	f.kernel = time.Since(start)
	f.sealing.Store(true)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", n.cfg.Kernel.Name(), err)
	}
	n.stats.kernelRuns.Add(1)
	m, mbytes, blocks, err := n.seal(f.task, outs)
	if err != nil {
		return nil, err
	}
	fresh := &store.Result{CID: protocol.ManifestCID(mbytes), Manifest: m, ManifestBytes: mbytes, Blocks: blocks}
	// A result is the waiters' once it is signed: they need not wait for
	// the store too (a synced write, on a daemon), which goes on while
	// the result travels. The GPU's slot is free from then on; the
	// flight stays joinable until the result is stored, and only then is
	// it provided. When the store holds a result for the task already (a
	// --no-cache rerun), the first result wins and every server must
	// hand out the same ResultCID: the stored one is the answer, so the
	// waiters wait for it.
	early := !n.store.Has(n.ctx, f.taskCID)
	if early {
		release() // the GPU's load too, if the kernel did not report its last step
		freeSlot()
		f.deliver(fresh, nil)
		// The waiters' goroutines are ready to send the result: let them
		// run first, the store write after. Without this the result waits
		// for the write, or for another core, whichever frees first.
		runtime.Gosched()
	}
	// A result cheaper to compute than to find is not provided (quiet,
	// announce.go) until someone asks for it again.
	quiet := f.kernel < n.cfg.ProvideMinCompute
	put := n.store.PutEncoded // seal encoded m
	if quiet {
		put = n.store.PutQuiet
	}
	kept, err := put(n.ctx, m, mbytes, blocks)
	switch {
	case err != nil && early:
		// Its clients have it; this host does not, so it does not
		// provide it either.
		s.log.Warn("a result sent to its clients could not be stored", "task", f.taskCID, "err", err)
		return fresh, nil
	case err != nil:
		return nil, fmt.Errorf("storing result: %w", err)
	}
	res := fresh
	if !kept.Equals(fresh.CID) && !early {
		f.fresh = fresh
		if res, err = n.store.Get(n.ctx, f.taskCID); err != nil {
			return nil, fmt.Errorf("reading stored result: %w", err)
		}
	}
	if !quiet && kept.Equals(fresh.CID) {
		n.provideResult(f.taskCID)
	}
	return res, nil
}

// coolDown is the governor's hard stop, between two steps of a running
// task. It judges the temperature the GPU will have at the end of the next
// step: now plus 1.5 times the rise over the step just done (heating is
// smooth, so one step predicts the next). At the limit the GPU idles (the
// task's load is released) until it is back under the resume threshold.
// Predicting, rather than reacting to the reading, keeps the GPU under its
// owner's limit however long a step takes; prev carries the last reading
// between calls for one task.
func (s *server) coolDown(ctx context.Context, lt loadTracker, prev *float64) {
	if s.dev == nil {
		return
	}
	s.observe()
	s.mu.Lock()
	now := s.tempC
	rise := 0.0
	if *prev > 0 && now > *prev {
		rise = now - *prev
	}
	*prev = now
	s.gov.Observe(now + 1.5*rise)
	hot := s.gov.Hot()
	s.mu.Unlock()
	if !hot {
		return
	}
	s.noteThrottle(true, now)
	defer func() { s.noteThrottle(false, s.lastTemp()) }()
	poke(s.changed)
	if lt != nil {
		lt.End()
		defer lt.Begin()
	}
	for hot && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
		s.observe()
		s.mu.Lock()
		s.gov.Observe(s.tempC)
		hot = s.gov.Hot()
		*prev = s.tempC
		s.mu.Unlock()
	}
	poke(s.changed)
}

// setPaused pauses or resumes the host on its owner's word. Pausing hands
// back every queued task (its waiters get "paused", a retryable refusal, and
// their clients place it elsewhere); running tasks finish. Resuming outside
// the lending hours clears the owner's pause only: the host takes work
// again when the hours begin.
func (s *server) setPaused(p bool) {
	handedBack, _, offHours := s.repause(func() { s.ownerPaused = p })
	switch {
	case p:
		s.log.Info("paused by the owner: taking no work", "handed_back", handedBack)
	case offHours:
		s.log.Info("resumed by the owner: taking work once the lending hours begin", "hours", s.n.cfg.LendHours)
	default:
		s.log.Info("resumed by the owner: taking work")
	}
}

// setOffHours pauses the host outside its lending hours h and lets it take
// work again inside them, logging each change once. The owner's own pause
// is left as it is.
func (s *server) setOffHours(off bool, h LendHours) {
	changed := false
	handedBack, ownerPaused, _ := s.repause(func() {
		changed = s.offHours != off
		s.offHours = off
	})
	switch {
	case !changed:
	case off:
		s.log.Info("outside the lending hours: taking no work", "hours", h, "handed_back", handedBack)
	case ownerPaused:
		s.log.Info("lending hours begin, but the owner paused the host: still taking no work", "hours", h)
	default:
		s.log.Info("lending hours begin: taking work", "hours", h)
	}
}

// repause runs change (which sets a cause of the pause) under mu, sets the
// governor's pause from its causes and, when paused, hands every queued
// task back to its clients with the cause (a retryable refusal: they place
// it elsewhere); running tasks finish. It returns how many were handed
// back and the two causes as they now stand.
func (s *server) repause(change func()) (handedBack int, ownerPaused, offHours bool) {
	s.mu.Lock()
	change()
	queued, perr := s.holdLocked()
	ownerPaused, offHours = s.ownerPaused, s.offHours
	s.mu.Unlock()
	for _, f := range queued {
		s.finish(f, nil, perr)
	}
	poke(s.wake)
	poke(s.changed)
	return len(queued), ownerPaused, offHours
}

// holdLocked sets the governor's pause from its two causes and, when
// paused, takes the queued tasks out to be handed back with the error to
// refuse them with. Callers hold mu.
func (s *server) holdLocked() ([]*flight, error) {
	s.gov.SetPaused(s.ownerPaused || s.offHours)
	if !s.gov.Paused() {
		return nil, nil
	}
	return s.queue.drain(), s.pausedErrLocked()
}

// pausedErrLocked is the refusal of a paused host, naming the cause: the
// owner's pause first, as it holds whatever the clock says. Callers hold
// mu.
func (s *server) pausedErrLocked() error {
	if s.ownerPaused || !s.offHours {
		return &protocol.RemoteError{Code: protocol.CodePaused, Message: "the host's owner paused it", RetryAfter: time.Minute}
	}
	return &protocol.RemoteError{Code: protocol.CodePaused,
		Message: fmt.Sprintf("outside the host's lending hours (%s, its local time)", s.n.cfg.LendHours), RetryAfter: time.Minute}
}

// setMaxTemp replaces the governor's limit and returns the old one. The
// next reading judges by the new limit (dispatchLoop reads within 50 ms),
// so lowering it under the GPU's temperature stops new work at once and
// raising it lets a cooling host take work as soon as it is under.
func (s *server) setMaxTemp(c float64) (old float64) {
	s.mu.Lock()
	old = s.gov.LimitC
	s.gov.LimitC = c
	if c <= 0 {
		s.gov.hot = false // no limit, no cool-down band for Observe to end
	}
	s.gov.Observe(s.tempC)
	s.mu.Unlock()
	poke(s.wake)
	poke(s.changed)
	return old
}

// Refusals counts the task requests this host refused, by error code
// (protocol.CodeBusy, ...). Empty for a node that is not a host.
func (n *Node) Refusals() map[string]uint64 {
	out := map[string]uint64{}
	if n.serve == nil {
		return out
	}
	n.serve.mu.Lock()
	defer n.serve.mu.Unlock()
	for c, k := range n.serve.refusals {
		out[c] = k
	}
	return out
}

// noteThrottle logs when the governor starts and stops holding work back
// for heat: once per episode, however many tasks wait in coolDown.
func (s *server) noteThrottle(on bool, tempC float64) {
	s.mu.Lock()
	changed := s.throttled != on && (on || s.coolers == 1)
	switch {
	case on:
		s.coolers++
	default:
		s.coolers--
	}
	if changed {
		s.throttled = on
	}
	limitC := s.gov.LimitC // under mu: the owner may change it (setMaxTemp)
	s.mu.Unlock()
	switch {
	case changed && on:
		s.log.Info("GPU at its limit: work paused until it cools", "temp_c", tempC, "limit_c", limitC)
	case changed:
		s.log.Info("GPU cooled: work resumed", "temp_c", tempC, "limit_c", limitC)
	}
}

func (s *server) lastTemp() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tempC
}

func cacheWord(cached bool) string {
	if cached {
		return "hit"
	}
	return "miss"
}

// meanServiceLocked is the recent mean run time of task t in ms (1 s when
// unknown). Callers hold mu.
func (s *server) meanServiceLocked(t protocol.Task) float64 {
	if ms, ok := s.service[t.Model]; ok {
		return ms * taskWork(t) / referenceWork
	}
	return 1000
}

// seal turns kernel outputs into raw blocks and a signed manifest.
func (n *Node) seal(t protocol.Task, outs []kernel.Output) (*protocol.Manifest, []byte, [][]byte, error) {
	if len(outs) == 0 || len(outs) > protocol.MaxOutputs {
		return nil, nil, nil, fmt.Errorf("kernel returned %d outputs, want 1..%d", len(outs), protocol.MaxOutputs)
	}
	var mo []protocol.Output
	var blocks [][]byte
	for _, o := range outs {
		if len(o.Data) == 0 || len(o.Data) > protocol.MaxBlockBytes {
			return nil, nil, nil, fmt.Errorf("kernel output of %d bytes, want 1..%d", len(o.Data), protocol.MaxBlockBytes)
		}
		mo = append(mo, protocol.Output{CID: protocol.Link{Cid: protocol.RawCID(o.Data)}, MediaType: o.MediaType, Size: uint64(len(o.Data))})
		blocks = append(blocks, o.Data)
	}
	m, err := protocol.NewManifestBy(n.self, t, mo, n.cfg.Kernel.Name(), uint64(time.Now().UnixMilli()), n.key)
	if err != nil {
		return nil, nil, nil, err
	}
	mb, err := m.Encode()
	if err != nil {
		return nil, nil, nil, err
	}
	return m, mb, blocks, nil
}

// provideResult announces on the DHT that this node holds taskCID's result,
// in the background: the answer to the client must not wait on the DHT.
func (n *Node) provideResult(tc cid.Cid) {
	if n.closed.Load() || !n.reachable() {
		return
	}
	if !n.provides.add(tc) {
		n.log.Debug("provide queue full: the reprovide round will provide the result", "task", tc)
	}
}

// reachable reports whether other peers can dial this node: a one-shot
// client that listens nowhere must not leave provider records that name it.
func (n *Node) reachable() bool { return len(n.host.Addrs()) > 0 }

// sendResult writes one block event per output, then the result event.
func sendResult(st network.Stream, res *store.Result, cached bool) error {
	return sendResultAfter(&streamLink{st: st}, nil, res, cached)
}

// sendResultAfter is sendResult after the events in out (nil for none),
// over link: a small result goes in the same write as they do, blocks and
// manifest together, since on a libp2p stream every write is a yamux
// frame, a Noise message and a syscall of its own.
func sendResultAfter(link taskLink, out *bytes.Buffer, res *store.Result, cached bool) error {
	size := len(res.ManifestBytes)
	for _, b := range res.Blocks {
		size += len(b)
	}
	if out == nil {
		out = new(bytes.Buffer)
	}
	if size > oneWriteResult {
		// Blocks this size dwarf a write: the events first, then each
		// frame on its own, its length prefix and body as they are.
		if out.Len() > 0 {
			if err := link.send(out.Bytes()); err != nil {
				return err
			}
			out.Reset()
		}
		for _, b := range res.Blocks {
			body, err := protocol.Marshal(protocol.Event{Type: protocol.EventBlock, Data: b})
			if err != nil {
				return err
			}
			if err := link.send(binary.AppendUvarint(nil, uint64(len(body))), body); err != nil {
				return err
			}
		}
	} else {
		out.Grow(size + 256)
		for _, b := range res.Blocks {
			_ = protocol.WriteMsg(out, protocol.Event{Type: protocol.EventBlock, Data: b}) // into a buffer
		}
	}
	if err := protocol.WriteMsg(out, protocol.Event{Type: protocol.EventResult, Manifest: res.ManifestBytes, Cached: cached}); err != nil {
		return err
	}
	return link.send(out.Bytes())
}

// oneWriteResult is the largest result (blocks and manifest) sendResult
// writes at once.
const oneWriteResult = 64 << 10

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
