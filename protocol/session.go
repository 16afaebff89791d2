package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Sessions (since 1.5; docs/protocol.md, "/gpunet/session/1.0.0"). A
// client that sends many tasks to one host sends them on one long-lived
// stream, each tagged with an ID, instead of one stream each: a task then
// costs one frame each way, not a stream's opening, negotiation and close
// on both sides. What a task carries is unchanged: the request is a task
// stream's request, and the host's answer is the bytes it would write on a
// task stream, in chunks of whole event frames.
const (
	// SessionProtocol: the client writes SessionRequest frames, the host
	// SessionEvents frames, in any interleaving, for as long as both keep
	// the stream open.
	SessionProtocol = "/gpunet/session/1.0.0"

	// MaxSessionTasks bounds the tasks in flight on one session: a host
	// answers a request over it with a busy error event.
	MaxSessionTasks = 256
	// MaxSessionRequestBytes bounds one client frame: a request (at most
	// MaxRequestBytes) in its envelope.
	MaxSessionRequestBytes = MaxRequestBytes + 64
	// MaxSessionEventBytes bounds one host frame: whole event frames of
	// one task, at most one event's cap (MaxEventBytes) plus its length
	// prefix, in their envelope. A larger answer goes out in several.
	MaxSessionEventBytes = MaxEventBytes + 64
	// SessionIdleTimeout is how long a host keeps a session open with no
	// task in flight and nothing read; a client closes its own sooner.
	SessionIdleTimeout = 2 * time.Minute
)

// ErrBadSession is wrapped by every error decoding a session frame.
var ErrBadSession = errors.New("invalid session message")

// SessionRequest is one client frame on SessionProtocol: a task request, or
// the cancellation of one sent before on the same session.
type SessionRequest struct {
	// ID names the task on this session: at least 1, and greater than
	// every ID the client sent before on it. A cancellation repeats the
	// ID of its request.
	ID uint64 `cbor:"id"`
	// Request is an encoded request, exactly as a task stream carries one
	// (TaskRequest). Absent in a cancellation.
	Request []byte `cbor:"request,omitempty"`
	// Cancel withdraws the request ID, as a reset does a task stream.
	Cancel bool `cbor:"cancel,omitempty"`
}

// SessionEvents is one host frame on SessionProtocol: one or more whole
// event frames (length prefix and body, as on a task stream) for task ID.
// The task's answer ends as a task stream's does, with its result or an
// error event.
type SessionEvents struct {
	ID     uint64 `cbor:"id"`
	Events []byte `cbor:"events"`
}

// DecodeSessionRequest decodes and checks a client frame, and for a request
// decodes and validates the request it carries (as DecodeTaskRequest). It
// does not know the session's last ID: the host checks that they increase.
func DecodeSessionRequest(b []byte) (*SessionRequest, *TaskRequest, error) {
	if len(b) > MaxSessionRequestBytes {
		return nil, nil, fmt.Errorf("%w: %d bytes, cap %d", ErrBadSession, len(b), MaxSessionRequestBytes)
	}
	var s SessionRequest
	if err := Unmarshal(b, &s); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadSession, err)
	}
	if s.ID == 0 {
		return nil, nil, fmt.Errorf("%w: task ID 0", ErrBadSession)
	}
	if s.Cancel {
		if len(s.Request) > 0 {
			return nil, nil, fmt.Errorf("%w: a cancellation with a request", ErrBadSession)
		}
		return &s, nil, nil
	}
	if len(s.Request) == 0 {
		return nil, nil, fmt.Errorf("%w: neither a request nor a cancellation", ErrBadSession)
	}
	req, err := DecodeTaskRequest(s.Request)
	if err != nil {
		return &s, nil, err
	}
	return &s, req, nil
}

// DecodeSessionEvents decodes a host frame and the events it carries, each
// checked as DecodeEvent checks one.
func DecodeSessionEvents(b []byte) (uint64, []*Event, error) {
	if len(b) > MaxSessionEventBytes {
		return 0, nil, fmt.Errorf("%w: %d bytes, cap %d", ErrBadSession, len(b), MaxSessionEventBytes)
	}
	var s SessionEvents
	if err := Unmarshal(b, &s); err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrBadSession, err)
	}
	if s.ID == 0 || len(s.Events) == 0 {
		return 0, nil, fmt.Errorf("%w: task ID %d with %d bytes of events", ErrBadSession, s.ID, len(s.Events))
	}
	var evs []*Event
	for rest := s.Events; len(rest) > 0; {
		body, next, err := cutFrame(rest)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: task %d: %v", ErrBadSession, s.ID, err)
		}
		e, err := DecodeEvent(body)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: task %d: %v", ErrBadSession, s.ID, err)
		}
		evs, rest = append(evs, e), next
	}
	return s.ID, evs, nil
}

// cutFrame splits the first frame off b: its body, and what follows it.
func cutFrame(b []byte) (body, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, nil, errors.New("bad frame length")
	}
	if n > uint64(len(b)-k) {
		return nil, nil, fmt.Errorf("frame of %d bytes, %d left", n, len(b)-k)
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}

// SplitEventFrames cuts b, whole event frames as a host writes them on a
// task stream, into chunks of whole frames of at most max bytes each
// (a frame larger than max alone in its chunk): the Events of the
// SessionEvents frames that carry b. max is the room for events, not a
// frame's cap: MaxSessionEventBytes less the envelope (up to 29 bytes:
// AppendSessionEvents's head), or a chunk's frame can exceed the cap.
func SplitEventFrames(b []byte, max int) ([][]byte, error) {
	var chunks [][]byte
	start, end := 0, 0
	for end < len(b) {
		_, next, err := cutFrame(b[end:])
		if err != nil {
			return nil, err
		}
		size := len(b) - len(next) - end
		if end > start && end-start+size > max {
			chunks = append(chunks, b[start:end])
			start = end
		}
		end += size
	}
	if end > start {
		chunks = append(chunks, b[start:end])
	}
	return chunks, nil
}

// AppendSessionEvents appends the body of the SessionEvents frame {id,
// events} to dst, without the events: the caller writes them right after.
// The body is len(head) + len(events) bytes, the DAG-CBOR encoding of the
// frame, so a big answer goes out without being copied.
func AppendSessionEvents(dst []byte, id uint64, events int) []byte {
	dst = append(dst, 0xa2)           // map of 2; DAG-CBOR key order: "id", "events"
	dst = append(dst, 0x62, 'i', 'd') // text(2) "id"
	dst = appendHead(dst, 0x00, id)   // unsigned int
	dst = append(dst, 0x66, 'e', 'v', 'e', 'n', 't', 's')
	return appendHead(dst, 0x40, uint64(events)) // byte string header
}
