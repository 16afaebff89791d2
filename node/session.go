package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpunet/gpunet/node/reach"
	"github.com/gpunet/gpunet/protocol"
)

// Sessions (protocol 1.5, docs/protocol.md "/gpunet/session/1.0.0"): a
// client sends every task for one host on one long-lived stream, each
// request under an ID, and the host answers each under its ID with the
// event frames it would write on a task stream of its own. A task then
// costs one frame each way, where a stream of its own costs its opening,
// protocol negotiation and close on both sides, and a resource-manager
// scope on each (issue 14: the no-op round trip over a raw stream's).
//
// A client uses a session with a host that lists the protocol in identify
// (a host before 1.5 does not; a host not yet connected is not known to):
// otherwise, and with Config.NoSessions, a stream per task as before.

// clientSessionIdle is how long a client keeps a session with no task open:
// a client sending a burst to a host reuses it, an idle one frees the
// host's (protocol.SessionIdleTimeout is the host's own bound).
const clientSessionIdle = 30 * time.Second

// noSessionFor is how long a client sends a host that refused a session
// its tasks on streams of their own before it tries a session again.
const noSessionFor = 10 * time.Minute

// clientSession is this node's session with one host.
type clientSession struct {
	n     *Node
	p     peer.ID
	name  string        // p as a string
	ready chan struct{} // closed once st is open or err is set
	st    network.Stream

	w *frameWriter // st's write side

	// heard is set once a frame came from the host: it serves sessions.
	heard atomic.Bool

	mu    sync.Mutex
	next  uint64 // the last ID sent
	tasks map[uint64]*sessionTask
	err   error // why the session ended; nil while it is open
	idle  *time.Timer
}

// sessionTask is one request's answer as the session's reader hands it on.
type sessionTask struct {
	mu   sync.Mutex
	evs  []*protocol.Event
	err  error         // the session ended before the answer did
	wake chan struct{} // one token: evs or err changed
}

// errSessionIdle ends a session closed for want of tasks.
var errSessionIdle = errors.New("session closed while idle")

// session returns this node's open session with p, opening one if p
// serves sessions; nil when tasks for p go on streams of their own.
func (n *Node) session(ctx context.Context, p peer.ID) *clientSession {
	if n.cfg.NoSessions {
		return nil
	}
	if since, ok := n.noSession.Load(p); ok {
		if time.Since(since.(time.Time)) < noSessionFor {
			return nil
		}
		n.noSession.Delete(p)
	}
	n.sessMu.Lock()
	cs := n.sessions[p]
	if cs == nil {
		if ok, _ := n.host.Peerstore().SupportsProtocols(p, libp2pProto(protocol.SessionProtocol)); len(ok) == 0 || n.closed.Load() {
			n.sessMu.Unlock()
			return nil
		}
		cs = &clientSession{n: n, p: p, name: p.String(), ready: make(chan struct{}), tasks: make(map[uint64]*sessionTask)}
		n.sessions[p] = cs
		n.sessMu.Unlock()
		cs.open(ctx)
	} else {
		n.sessMu.Unlock()
	}
	select {
	case <-cs.ready:
	case <-ctx.Done():
		return nil
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.err != nil {
		return nil // a stream of its own this time; the next call opens afresh
	}
	return cs
}

// open opens cs's stream and starts its reader; a failure ends cs.
func (cs *clientSession) open(ctx context.Context) {
	defer close(cs.ready)
	// Not past the node's life: Close waits for ready.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(cs.n.ctx, cancel)()
	st, err := cs.n.host.NewStream(reach.AllowRelayed(ctx), cs.p, libp2pProto(protocol.SessionProtocol))
	if err != nil {
		cs.end(fmt.Errorf("opening session: %w", err))
		return
	}
	cs.attach(st)
	cs.n.wg.Add(1)
	go cs.read()
}

// attach makes st cs's stream: its writer, and the idle timer.
func (cs *clientSession) attach(st network.Stream) {
	cs.st = st
	cs.w = newFrameWriter(st, protocol.RequestTimeout, cs.broke)
	cs.mu.Lock()
	cs.idle = time.AfterFunc(clientSessionIdle, cs.closeIfIdle)
	cs.mu.Unlock()
}

// run sends req on the session and reads its answer (readAnswer). It
// returns an error wrapping errNoSession when the host turned out not to
// serve sessions, before it could have seen the request.
func (cs *clientSession) run(ctx context.Context, req protocol.TaskRequest, tc cid.Cid, onEvent func(protocol.Event)) (*Result, error) {
	id, t, err := cs.start(req)
	if err != nil {
		return nil, err
	}
	// Withdrawn from the host unless its answer is complete.
	defer cs.finish(id)
	return cs.n.readAnswer(ctx, cs.p, cs.name, tc, func(idle time.Time) (*protocol.Event, error) { return t.nextEvent(ctx, idle) }, onEvent)
}

// errNoSession ends a session that broke before the host's first answer:
// a host that does not serve the protocol though identify said it did (it
// changed since), or one that broke down; either way its tasks, not yet
// answered, go to a stream of their own.
var errNoSession = errors.New("host does not serve sessions")

// start sends req under a new ID and returns the task its answer goes to.
func (cs *clientSession) start(req protocol.TaskRequest) (uint64, *sessionTask, error) {
	body, err := protocol.Marshal(req)
	if err != nil {
		return 0, nil, fmt.Errorf("encoding task: %w", err)
	}
	t := &sessionTask{wake: make(chan struct{}, 1)}
	var id uint64
	// IDs must reach the host in increasing order: each is taken as its
	// frame joins the writer's queue, under the queue's lock.
	err = cs.w.enqueue(func(buf []byte) ([]byte, error) {
		cs.mu.Lock()
		defer cs.mu.Unlock()
		if cs.err != nil {
			return buf, cs.err
		}
		cs.next++
		id = cs.next
		cs.tasks[id] = t
		cs.idle.Stop()
		return appendMsg(buf, protocol.SessionRequest{ID: id, Request: body})
	})
	if err != nil {
		cs.mu.Lock()
		if cs.err != nil {
			err = cs.err // why the session ended (broke), errNoSession among them
		}
		cs.mu.Unlock()
		return 0, nil, fmt.Errorf("sending task: %w", err)
	}
	return id, t, nil
}

// appendMsg appends m to buf as one frame.
func appendMsg(buf []byte, m any) ([]byte, error) {
	body, err := protocol.Marshal(m)
	if err != nil {
		return buf, err
	}
	return append(binary.AppendUvarint(buf, uint64(len(body))), body...), nil
}

// finish forgets task id; one the host has not answered yet is withdrawn.
func (cs *clientSession) finish(id uint64) {
	cs.mu.Lock()
	_, open := cs.tasks[id]
	delete(cs.tasks, id)
	alive := cs.err == nil
	if len(cs.tasks) == 0 && alive {
		cs.idle.Reset(clientSessionIdle)
	}
	cs.mu.Unlock()
	if open && alive {
		_ = cs.w.enqueue(func(buf []byte) ([]byte, error) {
			return appendMsg(buf, protocol.SessionRequest{ID: id, Cancel: true})
		})
	}
}

// read hands the host's frames to their tasks until the session ends. A
// frame for an ID no longer waited on (withdrawn) is dropped; one that
// does not decode ends the session, since nothing after it can be trusted.
func (cs *clientSession) read() {
	defer cs.n.wg.Done()
	br := bufio.NewReaderSize(cs.st, 16<<10)
	for {
		body, err := protocol.ReadFrame(br, protocol.MaxSessionEventBytes)
		if err == nil {
			err = cs.deliver(body)
		}
		if err != nil {
			cs.broke(err)
			return
		}
		cs.heard.Store(true)
	}
}

// broke ends the session on a failed read or write. A host that does not
// serve the protocol, though identify said it did, resets the stream at
// once (its multistream-select takes the request for a protocol name),
// which the reader or the writer may see first. Whatever ended a session
// before the host's first frame, its tasks go on streams of their own
// (errNoSession), now and for a while.
func (cs *clientSession) broke(err error) {
	cs.mu.Lock()
	ended := cs.err != nil
	cs.mu.Unlock()
	switch {
	case ended:
		return
	case !cs.heard.Load():
		cs.n.noSession.Store(cs.p, time.Now())
		err = fmt.Errorf("%w: %v", errNoSession, err)
	case errors.Is(err, io.EOF):
		err = errors.New("host closed the session")
	}
	cs.end(err)
}

// deliver hands one frame's events to its task; the task's last event (a
// result or an error) ends it on the session.
func (cs *clientSession) deliver(body []byte) error {
	id, evs, err := protocol.DecodeSessionEvents(body)
	if err != nil {
		return fmt.Errorf("host sent a bad session frame: %w", err)
	}
	cs.mu.Lock()
	t := cs.tasks[id]
	if t != nil {
		if last := evs[len(evs)-1].Type; last == protocol.EventResult || last == protocol.EventError {
			delete(cs.tasks, id)
		}
	}
	cs.mu.Unlock()
	if t != nil {
		t.mu.Lock()
		t.evs = append(t.evs, evs...)
		t.mu.Unlock()
		poke(t.wake)
	}
	return nil
}

// end ends the session with err: every task waiting on it fails, and the
// next one for the host opens another.
func (cs *clientSession) end(err error) {
	cs.mu.Lock()
	if cs.err != nil {
		cs.mu.Unlock()
		return
	}
	cs.err = err
	tasks := cs.tasks
	cs.tasks = nil
	if cs.idle != nil {
		cs.idle.Stop()
	}
	cs.mu.Unlock()
	cs.n.sessMu.Lock()
	if cs.n.sessions[cs.p] == cs {
		delete(cs.n.sessions, cs.p)
	}
	cs.n.sessMu.Unlock()
	if cs.st != nil {
		if errors.Is(err, errSessionIdle) {
			_ = cs.st.Close()
		} else {
			_ = cs.st.Reset()
		}
	}
	for _, t := range tasks {
		t.mu.Lock()
		t.err = err
		t.mu.Unlock()
		poke(t.wake)
	}
}

// closeIfIdle closes the session if no task has used it since the timer
// was set.
func (cs *clientSession) closeIfIdle() {
	cs.mu.Lock()
	idle := len(cs.tasks) == 0
	cs.mu.Unlock()
	if idle {
		cs.end(errSessionIdle)
	}
}

// nextEvent returns t's next event, waiting at most until idle or ctx ends.
func (t *sessionTask) nextEvent(ctx context.Context, idle time.Time) (*protocol.Event, error) {
	var timer *time.Timer
	for {
		t.mu.Lock()
		if len(t.evs) > 0 {
			e := t.evs[0]
			t.evs[0] = nil
			t.evs = t.evs[1:]
			t.mu.Unlock()
			return e, nil
		}
		err := t.err
		t.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if timer == nil {
			timer = time.NewTimer(time.Until(idle))
			defer timer.Stop()
		}
		select {
		case <-t.wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, errors.New("host silent too long")
		}
	}
}

// closeSessions ends this node's sessions as it closes.
func (n *Node) closeSessions() {
	n.sessMu.Lock()
	all := slices.Collect(maps.Values(n.sessions))
	n.sessMu.Unlock()
	for _, cs := range all {
		<-cs.ready
		cs.end(errors.New("node closing"))
	}
}

// handleSession serves one client's session: it reads the client's
// frames until the client closes its side (the requests in flight are
// answered, then the stream is closed), breaks the protocol (the stream is
// reset, which withdraws every request on it), or leaves it idle for
// protocol.SessionIdleTimeout. Each request is answered by its own
// goroutine, as a task stream's is.
func (s *server) handleSession(st network.Stream) {
	remote := st.Conn().RemotePeer()
	hs := &hostSession{st: st, links: make(map[uint64]*sessionLink)}
	hs.w = newFrameWriter(st, writeTimeout, func(error) { _ = st.Reset() })
	var wg sync.WaitGroup
	hs.idle = time.AfterFunc(protocol.SessionIdleTimeout, hs.closeIfIdle)
	clean := false
	defer func() {
		hs.idle.Stop()
		if !clean {
			hs.fail()
		}
		wg.Wait()
		if clean {
			_ = st.Close()
		}
	}()
	br := bufio.NewReaderSize(st, 4<<10)
	var last uint64
	for {
		body, err := protocol.ReadFrame(br, protocol.MaxSessionRequestBytes)
		if err != nil {
			clean = errors.Is(err, io.EOF) || hs.idled.Load()
			if !clean {
				s.log.Debug("session ended", "peer", remote, "err", err)
			}
			return
		}
		hs.idle.Reset(protocol.SessionIdleTimeout)
		start := time.Now()
		m, req, err := protocol.DecodeSessionRequest(body)
		if m == nil || (!m.Cancel && m.ID <= last) {
			if err == nil {
				err = fmt.Errorf("request ID %d after %d", m.ID, last)
			}
			s.log.Debug("breaking a session", "peer", remote, "err", err)
			return
		}
		if m.Cancel {
			hs.cancel(m.ID)
			continue
		}
		last = m.ID
		if err != nil {
			s.refuse(remote, cid.Undef, &sessionLink{hs: hs, id: m.ID}, nil, badRequest(err), start)
			continue
		}
		link, ok := hs.add(m.ID)
		if !ok {
			s.refuse(remote, cid.Undef, link, nil, &protocol.RemoteError{Code: protocol.CodeBusy,
				Message: fmt.Sprintf("%d tasks in flight on this session", protocol.MaxSessionTasks), RetryAfter: time.Second}, start)
			continue
		}
		wg.Add(1)
		s.n.jobs.do(func() {
			defer wg.Done()
			defer hs.done(m.ID)
			s.answer(remote, req, link, start)
		})
	}
}

// hostSession is the host's side of one session: the write side shared by
// its requests' answers, and their cancellations.
type hostSession struct {
	st    network.Stream
	idle  *time.Timer
	idled atomic.Bool // closeIfIdle closed it

	w *frameWriter // st's write side

	mu    sync.Mutex
	links map[uint64]*sessionLink // the requests in flight, until answered
}

// add registers request id, and reports false when the session already has
// MaxSessionTasks in flight (the link then only answers the refusal).
func (hs *hostSession) add(id uint64) (*sessionLink, bool) {
	l := &sessionLink{hs: hs, id: id, ch: make(chan struct{})}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if len(hs.links) >= protocol.MaxSessionTasks {
		return l, false
	}
	hs.links[id] = l
	return l, true
}

// done forgets request id, answered or withdrawn: it no longer counts
// against MaxSessionTasks.
func (hs *hostSession) done(id uint64) {
	hs.mu.Lock()
	delete(hs.links, id)
	hs.mu.Unlock()
}

// cancel withdraws request id, if it is still in flight; it counts until its
// goroutine has let go of it (done).
func (hs *hostSession) cancel(id uint64) {
	hs.mu.Lock()
	l := hs.links[id]
	hs.mu.Unlock()
	if l != nil {
		l.withdraw()
	}
}

// fail ends the session: every request in flight is withdrawn and the
// stream reset.
func (hs *hostSession) fail() {
	hs.mu.Lock()
	links := slices.Collect(maps.Values(hs.links))
	hs.mu.Unlock()
	for _, l := range links {
		l.withdraw()
	}
	_ = hs.st.Reset()
}

// closeIfIdle closes a session with no request in flight: its reader then
// ends, and the handler closes the stream. One with requests in flight is
// looked at again a timeout later.
func (hs *hostSession) closeIfIdle() {
	hs.mu.Lock()
	idle := len(hs.links) == 0
	hs.mu.Unlock()
	if !idle {
		hs.idle.Reset(protocol.SessionIdleTimeout)
		return
	}
	hs.idled.Store(true)
	_ = hs.st.CloseRead()
}

// send writes one host frame: events of request id, pieces of whole event
// frames. An answer too big for one frame goes in several, cut at frame
// boundaries.
func (hs *hostSession) send(id uint64, pieces [][]byte) error {
	total := 0
	for _, p := range pieces {
		total += len(p)
	}
	if total > maxSessionChunk {
		chunks, err := protocol.SplitEventFrames(bytes.Join(pieces, nil), maxSessionChunk)
		if err != nil {
			return err
		}
		if len(chunks) == 1 {
			return fmt.Errorf("an event of %d bytes, over a session frame's cap", total)
		}
		for _, c := range chunks {
			if err := hs.send(id, [][]byte{c}); err != nil {
				return err
			}
		}
		return nil
	}
	var hb [32]byte
	h := protocol.AppendSessionEvents(hb[:0], id, total)
	frame := append(binary.AppendUvarint(make([]byte, 0, 48), uint64(len(h)+total)), h...)
	if total > sessionOneWrite {
		return hs.w.direct(frame, pieces)
	}
	return hs.w.enqueue(func(buf []byte) ([]byte, error) {
		buf = append(buf, frame...)
		for _, p := range pieces {
			buf = append(buf, p...)
		}
		return buf, nil
	})
}

// sessionOneWrite is the largest frame send copies to write at once; a
// bigger one goes out as its head and then its pieces as they are.
const sessionOneWrite = 64 << 10

// maxSessionChunk bounds the events of one host frame: the frame's cap
// less its envelope.
const maxSessionChunk = protocol.MaxSessionEventBytes - 32

// sessionLink is one request's taskLink on a session.
type sessionLink struct {
	hs   *hostSession
	id   uint64
	ch   chan struct{} // closed when the client withdraws the request
	once sync.Once
}

func (l *sessionLink) send(pieces ...[]byte) error { return l.hs.send(l.id, pieces) }

func (l *sessionLink) cancelled() <-chan struct{} { return l.ch }

func (l *sessionLink) withdraw() { l.once.Do(func() { close(l.ch) }) }

// frameWriter is one side of a session's writes, shared by its tasks. A
// frame ready while another is being written joins a queue, and the
// writer of the moment writes the whole queue in one write before it
// leaves (flat combining): concurrent tasks share writes, each a yamux
// frame, a Noise message and a syscall, and a lone one pays no hand-off
// to a writer goroutine.
type frameWriter struct {
	st      network.Stream
	timeout time.Duration
	fail    func(error) // called once, with the first failed write

	mu      sync.Mutex
	idle    sync.Cond // signalled when writing ends
	writing bool
	queue   []byte // frames waiting to be written
	spare   []byte // the last written queue, reused
	err     error

	// deadline is the write deadline last set on st, by the writer of the
	// moment only. It moves once less than half of timeout is left, as
	// yamux moves its connection's: each setting costs the stream a new
	// timer, and a busy session writes thousands of frames a second. A
	// stalled write so fails after between timeout/2 and timeout.
	deadline time.Time
}

func newFrameWriter(st network.Stream, timeout time.Duration, fail func(error)) *frameWriter {
	w := &frameWriter{st: st, timeout: timeout, fail: fail}
	w.idle.L = &w.mu
	return w
}

// enqueue appends frames to the queue with add (under the queue's lock, so
// frames are written in the order add is called) and, unless a write is
// under way, writes the queue. A nil error from add's caller means the
// frames are queued; a later failed write ends the session (fail).
func (w *frameWriter) enqueue(add func([]byte) ([]byte, error)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	q, err := add(w.queue)
	if err != nil {
		return err
	}
	w.queue = q
	if w.writing {
		return nil // the writer of the moment takes it
	}
	return w.flushLocked(nil, nil)
}

// direct writes head and then pieces as they are, after the queue: for a
// frame too big to copy.
func (w *frameWriter) direct(head []byte, pieces [][]byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.writing && w.err == nil {
		w.idle.Wait()
	}
	if w.err != nil {
		return w.err
	}
	return w.flushLocked(head, pieces)
}

// flushLocked writes the queue, then head and pieces, then whatever was
// queued meanwhile, until the queue is empty; called with mu held and no
// write under way.
func (w *frameWriter) flushLocked(head []byte, pieces [][]byte) error {
	w.writing = true
	defer func() {
		w.writing = false
		w.idle.Broadcast()
	}()
	for len(w.queue) > 0 || head != nil {
		buf := w.queue
		w.queue = w.spare[:0]
		w.mu.Unlock()
		err := w.write(buf)
		if head != nil {
			for _, b := range append([][]byte{head}, pieces...) {
				if err == nil {
					err = w.write(b)
				}
			}
			head = nil
		}
		w.mu.Lock()
		w.spare = buf[:0]
		if err != nil {
			w.err = err
			w.mu.Unlock()
			w.fail(err)
			w.mu.Lock()
			return err
		}
	}
	return nil
}

func (w *frameWriter) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if now := time.Now(); w.deadline.Sub(now) < w.timeout/2 {
		w.deadline = now.Add(w.timeout)
		_ = w.st.SetWriteDeadline(w.deadline)
	}
	_, err := w.st.Write(b)
	return err
}
