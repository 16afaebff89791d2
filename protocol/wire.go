package protocol

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrFrameTooLarge means a length prefix announced more than the cap allows.
var ErrFrameTooLarge = errors.New("frame exceeds size cap")

// WriteFrame writes one frame: the unsigned-varint length of body, then body.
//
// A frame of up to oneWriteMax bytes goes out in one Write: on a libp2p
// stream every Write is its own yamux frame, Noise message and syscall
// (yamux does not coalesce), so a small frame written as header then body
// cost two of each. A larger body is written after its header rather than
// copied.
func WriteFrame(w io.Writer, body []byte) error {
	var hdr [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(hdr[:], uint64(len(body)))
	if len(body) <= oneWriteMax {
		bp := framePool.Get().(*[]byte)
		buf := append(append((*bp)[:0], hdr[:n]...), body...)
		_, err := w.Write(buf)
		*bp = buf[:0]
		framePool.Put(bp)
		return err
	}
	if _, err := w.Write(hdr[:n]); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// oneWriteMax is the largest body WriteFrame copies to send with its
// header: events, requests and manifests fit; big output blocks do not
// need it (their own size dwarfs a second write).
const oneWriteMax = 16 << 10

var framePool = sync.Pool{New: func() any { return new([]byte) }}

// ReadFrame reads one frame of at most max bytes. The length is checked
// before the body is allocated, so a peer cannot make us allocate more than
// max.
func ReadFrame(r *bufio.Reader, max int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("reading frame length: %w", err)
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("%w: %d bytes, cap %d", ErrFrameTooLarge, n, max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // a length prefix promised a body
		}
		return nil, fmt.Errorf("reading frame body: %w", err)
	}
	return body, nil
}

// WriteMsg encodes v as DAG-CBOR and writes it as one frame.
func WriteMsg(w io.Writer, v any) error {
	b, err := encMode.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding message: %w", err)
	}
	return WriteFrame(w, b)
}

// TaskRequest is the single message a client sends on TaskProtocol.
type TaskRequest struct {
	Task Task `cbor:"task"`
	// NoCache asks the host to run the kernel even if it holds a result.
	NoCache bool `cbor:"no_cache"`
	// Submitter, when set, names whom the client submits for among those
	// it forwards for (a daemon's API callers): the host shares its queue
	// fairly between a client's submitters as it does between clients. It
	// is the client's word, so it is never worth more than the client's
	// own share: the host's fairness is by peer first, submitter second.
	Submitter string `cbor:"submitter,omitempty"`
	// Previews asks for up to MaxPreviews partial images (preview events)
	// while the task runs; 0 asks for none. It is advisory: a host may send
	// fewer (its kernel makes none, or the client reads too slowly). A 1.0
	// host rejects the key as it rejects submitter.
	Previews uint32 `cbor:"previews,omitempty"`
	// Verify asks the host to run the kernel itself and answer with its
	// own result, never with one it holds already (since 1.3): a client
	// checking another host's result (docs/trust.md). It implies NoCache.
	// A host older than 1.3 rejects the key.
	Verify bool `cbor:"verify,omitempty"`
}

// DecodeTaskRequest decodes and validates a request frame.
func DecodeTaskRequest(b []byte) (*TaskRequest, error) {
	if len(b) > MaxRequestBytes {
		return nil, fmt.Errorf("%w: request %d bytes", ErrFrameTooLarge, len(b))
	}
	var r TaskRequest
	if err := Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: decoding request: %v", ErrBadTask, err)
	}
	if err := r.Task.Validate(); err != nil {
		return nil, err
	}
	if err := ValidSubmitter(r.Submitter); err != nil {
		return nil, err
	}
	if r.Previews > MaxPreviews {
		return nil, fmt.Errorf("%w: %d previews asked, at most %d", ErrBadTask, r.Previews, MaxPreviews)
	}
	return &r, nil
}

// ValidSubmitter checks a request's submitter: at most MaxSubmitterBytes of
// printable UTF-8 (empty is valid: the client submits for itself).
func ValidSubmitter(s string) error {
	if len(s) > MaxSubmitterBytes {
		return fmt.Errorf("%w: submitter is %d bytes, at most %d", ErrBadTask, len(s), MaxSubmitterBytes)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: submitter is not UTF-8", ErrBadTask)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: submitter has a control character", ErrBadTask)
		}
	}
	return nil
}

// Event types a host sends on TaskProtocol, in this order: any number of
// queued, progress and preview events, then one block event per output, then
// exactly one result; or, at any point, one error, which ends the stream.
const (
	EventQueued   = "queued"
	EventProgress = "progress"
	EventPreview  = "preview"
	EventBlock    = "block"
	EventResult   = "result"
	EventError    = "error"
)

// Event is one message from host to client on TaskProtocol. Which fields are
// set depends on Type; the others are omitted from the encoding.
type Event struct {
	Type string `cbor:"type" json:"type,omitempty"`
	// queued: 1-based position in the host's queue.
	Position uint32 `cbor:"position,omitempty" json:"position,omitempty"`
	// progress: step k of n, and the host's estimate of the time left.
	Step  uint32 `cbor:"step,omitempty" json:"step,omitempty"`
	Total uint32 `cbor:"total,omitempty" json:"total,omitempty"`
	EtaMs uint64 `cbor:"eta_ms,omitempty" json:"eta_ms,omitempty"`
	// block: the bytes of one output, in manifest order. preview: a PNG of
	// the task so far (at most MaxPreviewBytes), at step Step of Total.
	Data []byte `cbor:"data,omitempty" json:"-"`
	// result: the encoded, signed manifest; Cached says the host answered
	// from its store without running the kernel.
	Manifest []byte `cbor:"manifest,omitempty" json:"-"`
	Cached   bool   `cbor:"cached,omitempty" json:"cached,omitempty"`
	// error
	Code         string `cbor:"code,omitempty" json:"code,omitempty"`
	Message      string `cbor:"message,omitempty" json:"message,omitempty"`
	RetryAfterMs uint64 `cbor:"retry_after_ms,omitempty" json:"retry_after_ms,omitempty"`
}

// DecodeEvent decodes one event frame and checks its shape.
func DecodeEvent(b []byte) (*Event, error) {
	if len(b) > MaxEventBytes {
		return nil, fmt.Errorf("%w: event %d bytes", ErrFrameTooLarge, len(b))
	}
	var e Event
	if err := Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("decoding event: %w", err)
	}
	switch e.Type {
	case EventQueued, EventProgress:
		if e.Step > e.Total {
			return nil, fmt.Errorf("progress step %d beyond total %d", e.Step, e.Total)
		}
	case EventPreview:
		if len(e.Data) == 0 || len(e.Data) > MaxPreviewBytes {
			return nil, fmt.Errorf("preview of %d bytes", len(e.Data))
		}
		if e.Step > e.Total {
			return nil, fmt.Errorf("preview step %d beyond total %d", e.Step, e.Total)
		}
	case EventBlock:
		if len(e.Data) == 0 || len(e.Data) > MaxBlockBytes {
			return nil, fmt.Errorf("block of %d bytes", len(e.Data))
		}
	case EventResult:
		if len(e.Manifest) == 0 || len(e.Manifest) > MaxManifestBytes {
			return nil, fmt.Errorf("result manifest of %d bytes", len(e.Manifest))
		}
	case EventError:
		if e.Code == "" || len(e.Message) > 1024 {
			return nil, errors.New("error event without code or with an oversized message")
		}
	default:
		return nil, fmt.Errorf("unknown event type %q", e.Type)
	}
	return &e, nil
}

// Error codes carried by error events.
const (
	CodeBusy             = "busy"
	CodeTooHot           = "too_hot"
	CodePaused           = "paused"
	CodeRateLimited      = "rate_limited"
	CodeUnsupportedModel = "unsupported_model"
	CodeBadRequest       = "bad_request"
	CodeNotFound         = "not_found"
	CodeInternal         = "internal"
)

// Sentinel errors callers branch on. A RemoteError matches the one for its
// code with errors.Is.
var (
	ErrBusy             = errors.New("host busy")
	ErrTooHot           = errors.New("host GPU too hot")
	ErrPaused           = errors.New("host paused by its owner")
	ErrRateLimited      = errors.New("rate limited")
	ErrUnsupportedModel = errors.New("model not served")
	ErrBadRequest       = errors.New("bad request")
	ErrNotFound         = errors.New("not found")
	ErrInternal         = errors.New("host internal error")
)

var codeErrs = map[string]error{
	CodeBusy: ErrBusy, CodeTooHot: ErrTooHot, CodePaused: ErrPaused, CodeRateLimited: ErrRateLimited,
	CodeUnsupportedModel: ErrUnsupportedModel, CodeBadRequest: ErrBadRequest, CodeNotFound: ErrNotFound,
	CodeInternal: ErrInternal,
}

// RemoteError is a refusal or failure reported by a peer.
type RemoteError struct {
	Code       string
	Message    string
	RetryAfter time.Duration
}

func (e *RemoteError) Error() string {
	s := "remote: " + e.Code
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

// Is makes errors.Is(err, ErrBusy) and friends work on remote errors.
func (e *RemoteError) Is(target error) bool { return codeErrs[e.Code] == target }

// Retryable reports whether another host might accept the same task: true for
// refusals about the host's state, false for problems with the task itself.
func (e *RemoteError) Retryable() bool { return e.Code != CodeBadRequest }

// ErrorEvent builds the error event for code.
func ErrorEvent(code, msg string, retryAfter time.Duration) Event {
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	if len(msg) > 1024 {
		n := 1024
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n]
	}
	return Event{Type: EventError, Code: code, Message: msg, RetryAfterMs: uint64(retryAfter / time.Millisecond)}
}

// Err converts an error event to a *RemoteError.
func (e *Event) Err() *RemoteError {
	return &RemoteError{Code: e.Code, Message: e.Message, RetryAfter: time.Duration(e.RetryAfterMs) * time.Millisecond}
}
