package protocol

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// eventFrames writes events as a host writes them on a task stream: each a
// frame of its own, back to back.
func eventFrames(tb testing.TB, events ...Event) []byte {
	tb.Helper()
	var b bytes.Buffer
	for _, e := range events {
		if err := WriteMsg(&b, e); err != nil {
			tb.Fatal(err)
		}
	}
	return b.Bytes()
}

// rawFrames writes bodies as frames, whatever they hold.
func rawFrames(tb testing.TB, bodies ...[]byte) []byte {
	tb.Helper()
	var b bytes.Buffer
	for _, body := range bodies {
		if err := WriteFrame(&b, body); err != nil {
			tb.Fatal(err)
		}
	}
	return b.Bytes()
}

// sessionAnswer is a whole answer to one task, as a task stream carries it.
func sessionAnswer(tb testing.TB) []Event {
	return []Event{
		{Type: EventQueued, Position: 2, EtaMs: 700},
		{Type: EventProgress, Step: 0, Total: 20, EtaMs: 400},
		{Type: EventPreview, Data: []byte("\x89PNG so far"), Step: 10, Total: 20},
		{Type: EventProgress, Step: 20, Total: 20},
		{Type: EventBlock, Data: bytes.Repeat([]byte("png "), 300)},
		{Type: EventBlock, Data: []byte("a second output")},
		{Type: EventResult, Manifest: encodeManifest(tb, testManifest(tb, testKey(tb, 1)))},
	}
}

func TestSessionProtocolID(t *testing.T) {
	// Negotiated on the wire and named in docs/protocol.md.
	if SessionProtocol != "/gpunet/session/1.0.0" {
		t.Errorf("SessionProtocol = %q", SessionProtocol)
	}
}

func TestSessionRequestRoundTrip(t *testing.T) {
	n := mustNormalize(t, exampleTask())
	inner := mustMarshal(t, TaskRequest{Task: n, NoCache: true, Previews: 1})
	for _, id := range []uint64{1, 23, 24, 1 << 32, math.MaxUint64} {
		b := mustMarshal(t, SessionRequest{ID: id, Request: inner})
		if err := checkDAGCBOR(b); err != nil {
			t.Errorf("request %d is not canonical DAG-CBOR: %v", id, err)
		}
		if keys := mapKeys(t, b); !slices.Equal(keys, []string{"id", "request"}) {
			t.Errorf("request keys %v, want [id request]", keys)
		}
		s, req, err := DecodeSessionRequest(b)
		if err != nil {
			t.Fatalf("DecodeSessionRequest(id %d): %v", id, err)
		}
		if s.ID != id || s.Cancel || !bytes.Equal(s.Request, inner) {
			t.Errorf("decoded %+v, want id %d and the request", s, id)
		}
		if req == nil || !req.Task.Equal(n) || !req.NoCache || req.Previews != 1 {
			t.Errorf("decoded request %+v, want the one sent", req)
		}
	}

	b := mustMarshal(t, SessionRequest{ID: 7, Cancel: true})
	if keys := mapKeys(t, b); !slices.Equal(keys, []string{"id", "cancel"}) {
		t.Errorf("cancellation keys %v, want [id cancel]", keys)
	}
	s, req, err := DecodeSessionRequest(b)
	if err != nil || s.ID != 7 || !s.Cancel || s.Request != nil || req != nil {
		t.Errorf("DecodeSessionRequest(cancel 7) = %+v, %+v, %v", s, req, err)
	}

	// Senders write canonical envelopes; receivers do not require them
	// (docs/protocol.md): here the ID 7 in a 2-byte head.
	s, _, err = DecodeSessionRequest([]byte{0xa2, 0x62, 'i', 'd', 0x18, 0x07, 0x66, 'c', 'a', 'n', 'c', 'e', 'l', 0xf5})
	if err != nil || s.ID != 7 || !s.Cancel {
		t.Errorf("a cancellation with a non-minimal ID = %+v, %v", s, err)
	}

	// DAG-CBOR orders keys length-first: the doc's "wire order: id,
	// cancel, request" (a frame with both is invalid, but this is the order).
	both := mustMarshal(t, SessionRequest{ID: 1, Request: inner, Cancel: true})
	if keys := mapKeys(t, both); !slices.Equal(keys, []string{"id", "cancel", "request"}) {
		t.Errorf("keys %v, want [id cancel request]", keys)
	}
}

func TestDecodeSessionRequestRejects(t *testing.T) {
	n := mustNormalize(t, exampleTask())
	inner := mustMarshal(t, TaskRequest{Task: n})
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"not a map", mustMarshal(t, []any{1, inner})},
		{"id 0", mustMarshal(t, SessionRequest{ID: 0, Request: inner})},
		{"id 0 cancel", mustMarshal(t, SessionRequest{ID: 0, Cancel: true})},
		{"no id", mustMarshal(t, map[string]any{"request": inner})},
		{"negative id", mustMarshal(t, map[string]any{"id": -1, "request": inner})},
		{"id as text", mustMarshal(t, map[string]any{"id": "1", "request": inner})},
		{"both request and cancel", mustMarshal(t, SessionRequest{ID: 1, Request: inner, Cancel: true})},
		{"neither request nor cancel", mustMarshal(t, SessionRequest{ID: 1})},
		{"cancel false", mustMarshal(t, map[string]any{"id": 1, "cancel": false})},
		{"empty request", mustMarshal(t, map[string]any{"id": 1, "request": []byte{}})},
		{"null request", mustMarshal(t, map[string]any{"id": 1, "request": nil})},
		{"cancel not a bool", mustMarshal(t, map[string]any{"id": 1, "cancel": 1})},
		{"request as a map", mustMarshal(t, map[string]any{"id": 1, "request": TaskRequest{Task: n}})},
		{"unknown key", mustMarshal(t, map[string]any{"id": 1, "request": inner, "priority": 9})},
		{"key in another case", mustMarshal(t, map[string]any{"ID": 1, "request": inner})},
		{"duplicate id", []byte{0xa3, 0x62, 'i', 'd', 0x01, 0x62, 'i', 'd', 0x02, 0x66, 'c', 'a', 'n', 'c', 'e', 'l', 0xf5}},
		{"trailing bytes", append(mustMarshal(t, SessionRequest{ID: 1, Request: inner}), 0)},
		{"a bare task request", inner},
		{"oversize", mustMarshal(t, SessionRequest{ID: 1, Request: make([]byte, MaxSessionRequestBytes)})},
		{"oversize garbage", make([]byte, MaxSessionRequestBytes+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, req, err := DecodeSessionRequest(tt.b)
			if !errors.Is(err, ErrBadSession) {
				t.Fatalf("DecodeSessionRequest = %+v, %+v, %v; want ErrBadSession", s, req, err)
			}
			// A host resets the session on these: nothing it could answer.
			if s != nil || req != nil {
				t.Errorf("returned %+v, %+v with a protocol error", s, req)
			}
			if errors.Is(err, ErrBadTask) {
				t.Errorf("error %v also matches ErrBadTask: a host would answer it instead of resetting", err)
			}
		})
	}
}

// A frame that decodes but carries an invalid request is not a protocol
// error: the host answers that ID with bad_request and goes on, so the
// error is DecodeTaskRequest's and the frame's ID comes back with it.
func TestDecodeSessionRequestInvalidInnerRequest(t *testing.T) {
	n := mustNormalize(t, exampleTask())
	unnormal := n
	unnormal.Prompt = "a  quiet harbour at dusk"
	tests := []struct {
		name  string
		inner []byte
		want  error
	}{
		{"a bare task", mustEncode(t, n), ErrBadTask},
		{"not CBOR", []byte("hello"), ErrBadTask},
		{"task not normalised", mustMarshal(t, TaskRequest{Task: unnormal}), ErrBadTask},
		{"previews over the cap", mustMarshal(t, TaskRequest{Task: n, Previews: MaxPreviews + 1}), ErrBadTask},
		{"submitter with a control character", mustMarshal(t, TaskRequest{Task: n, Submitter: "bob\n"}), ErrBadTask},
		{"unknown request key", mustMarshal(t, map[string]any{"task": n, "no_cache": false, "priority": 9}), ErrBadTask},
		{"request over MaxRequestBytes", make([]byte, MaxRequestBytes+1), ErrFrameTooLarge},
		{"request of MaxRequestBytes", make([]byte, MaxRequestBytes), ErrBadTask},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, want := DecodeTaskRequest(tt.inner)
			if !errors.Is(want, tt.want) {
				t.Fatalf("fixture: DecodeTaskRequest = %v, want %v", want, tt.want)
			}
			for _, id := range []uint64{1, math.MaxUint64} {
				s, req, err := DecodeSessionRequest(mustMarshal(t, SessionRequest{ID: id, Request: tt.inner}))
				if !errors.Is(err, tt.want) || errors.Is(err, ErrBadSession) {
					t.Fatalf("error %v; want one wrapping %v and not ErrBadSession", err, tt.want)
				}
				if err.Error() != want.Error() {
					t.Errorf("error %q, want DecodeTaskRequest's %q", err, want)
				}
				if s == nil || s.ID != id || s.Cancel || req != nil {
					t.Errorf("returned %+v, %+v; want the frame's ID %d to answer", s, req, id)
				}
			}
		})
	}
}

// Each envelope leaves room for the largest message it carries, under any
// ID: the slack in the caps is what makes that true.
func TestSessionCapsHoldTheLargestMessage(t *testing.T) {
	reqHead := len(mustMarshal(t, SessionRequest{ID: math.MaxUint64, Request: []byte{1}})) - 1
	// The head above is for a 1-byte string; a string of MaxRequestBytes
	// has a 3-byte head, not 1.
	if got := reqHead + 2 + MaxRequestBytes; got > MaxSessionRequestBytes {
		t.Errorf("a request of MaxRequestBytes in a frame is %d bytes, over MaxSessionRequestBytes %d", got, MaxSessionRequestBytes)
	}
	big := make([]byte, MaxRequestBytes)
	b := mustMarshal(t, SessionRequest{ID: math.MaxUint64, Request: big})
	if _, _, err := DecodeSessionRequest(b); errors.Is(err, ErrBadSession) {
		t.Errorf("a request of MaxRequestBytes under the largest ID: %v", err)
	}

	events := MaxEventBytes + len(binary.AppendUvarint(nil, MaxEventBytes))
	if got := len(AppendSessionEvents(nil, math.MaxUint64, events)) + events; got > MaxSessionEventBytes {
		t.Errorf("an event of MaxEventBytes in a frame is %d bytes, over MaxSessionEventBytes %d", got, MaxSessionEventBytes)
	}
}

func TestDecodeSessionEvents(t *testing.T) {
	answer := sessionAnswer(t)
	body := mustMarshal(t, SessionEvents{ID: 9, Events: eventFrames(t, answer...)})
	if err := checkDAGCBOR(body); err != nil {
		t.Errorf("not canonical DAG-CBOR: %v", err)
	}
	if keys := mapKeys(t, body); !slices.Equal(keys, []string{"id", "events"}) {
		t.Errorf("keys %v, want [id events]", keys)
	}
	id, evs, err := DecodeSessionEvents(body)
	if err != nil {
		t.Fatalf("DecodeSessionEvents: %v", err)
	}
	if id != 9 || len(evs) != len(answer) {
		t.Fatalf("task %d with %d events, want 9 with %d", id, len(evs), len(answer))
	}
	for i, e := range evs {
		if !eventsEqual(*e, answer[i]) {
			t.Errorf("event %d = %+v, want %+v", i, e, answer[i])
		}
	}

	// An error event, alone, under the largest ID.
	refusal := ErrorEvent(CodeBusy, "256 tasks in flight on this session", time.Second)
	id, evs, err = DecodeSessionEvents(mustMarshal(t, SessionEvents{ID: math.MaxUint64, Events: eventFrames(t, refusal)}))
	if err != nil || id != math.MaxUint64 || len(evs) != 1 || !eventsEqual(*evs[0], refusal) {
		t.Errorf("DecodeSessionEvents(busy) = %d, %v, %v", id, evs, err)
	}

	// The largest block fits in one frame with its envelope.
	block := Event{Type: EventBlock, Data: make([]byte, MaxBlockBytes)}
	id, evs, err = DecodeSessionEvents(mustMarshal(t, SessionEvents{ID: 1 << 40, Events: eventFrames(t, block)}))
	if err != nil || id != 1<<40 || len(evs) != 1 || len(evs[0].Data) != MaxBlockBytes {
		t.Errorf("a block of MaxBlockBytes: task %d, %d events, %v", id, len(evs), err)
	}
}

func TestDecodeSessionEventsRejects(t *testing.T) {
	queued := eventFrames(t, Event{Type: EventQueued, Position: 1})
	good := eventFrames(t, sessionAnswer(t)...)
	// An event just over MaxEventBytes, in a frame under MaxSessionEventBytes.
	over := mustMarshal(t, Event{Type: EventBlock, Data: make([]byte, MaxEventBytes-20)})
	if len(over) <= MaxEventBytes {
		t.Fatalf("fixture: event of %d bytes is not over MaxEventBytes", len(over))
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"not a map", mustMarshal(t, []any{1, queued})},
		{"id 0", mustMarshal(t, SessionEvents{ID: 0, Events: queued})},
		{"no id", mustMarshal(t, map[string]any{"events": queued})},
		{"negative id", mustMarshal(t, map[string]any{"id": -1, "events": queued})},
		{"no events", mustMarshal(t, map[string]any{"id": 1})},
		{"empty events", mustMarshal(t, SessionEvents{ID: 1, Events: []byte{}})},
		{"null events", mustMarshal(t, SessionEvents{ID: 1})},
		{"events as text", mustMarshal(t, map[string]any{"id": 1, "events": string(queued)})},
		{"unknown key", mustMarshal(t, map[string]any{"id": 1, "events": queued, "more": true})},
		{"duplicate id", append([]byte{0xa3, 0x62, 'i', 'd', 0x01, 0x62, 'i', 'd', 0x02}, mustMarshal(t, SessionEvents{ID: 1, Events: queued})[5:]...)},
		{"trailing bytes", append(mustMarshal(t, SessionEvents{ID: 1, Events: queued}), 0)},
		{"a bare event", queued[1:]},
		{"truncated frame", mustMarshal(t, SessionEvents{ID: 1, Events: good[:len(good)-1]})},
		{"truncated length", mustMarshal(t, SessionEvents{ID: 1, Events: append(slices.Clone(queued), 0x80)})},
		{"length beyond the end", mustMarshal(t, SessionEvents{ID: 1, Events: append(slices.Clone(queued), 0x05, 'a')})},
		{"length over 2^64", mustMarshal(t, SessionEvents{ID: 1, Events: bytes.Repeat([]byte{0xff}, 11)})},
		{"huge length", mustMarshal(t, SessionEvents{ID: 1, Events: binary.AppendUvarint(nil, 1<<60)})},
		{"empty event frame", mustMarshal(t, SessionEvents{ID: 1, Events: []byte{0x00}})},
		{"bad event after good ones", mustMarshal(t, SessionEvents{ID: 1, Events: append(slices.Clone(good), eventFrames(t, Event{Type: "cancel"})...)})},
		{"step beyond total", mustMarshal(t, SessionEvents{ID: 1, Events: eventFrames(t, Event{Type: EventProgress, Step: 21, Total: 20})})},
		{"event with trailing byte", mustMarshal(t, SessionEvents{ID: 1, Events: rawFrames(t, append(queued[1:], 0))})},
		{"event over MaxEventBytes", mustMarshal(t, SessionEvents{ID: 1, Events: rawFrames(t, over)})},
		{"oversize", make([]byte, MaxSessionEventBytes+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, evs, err := DecodeSessionEvents(tt.b)
			if !errors.Is(err, ErrBadSession) {
				t.Fatalf("DecodeSessionEvents = %d, %d events, %v; want ErrBadSession", id, len(evs), err)
			}
			if id != 0 || evs != nil {
				t.Errorf("returned task %d and %d events with an error", id, len(evs))
			}
		})
	}
}

// checkChunks fails t unless chunks are b cut into whole frames, each chunk
// at most max bytes unless it is one frame alone, and each as full as it
// can be (the next frame would not have fitted): as few frames on the
// session as the answer allows.
func checkChunks(t *testing.T, b []byte, max int, chunks [][]byte) {
	t.Helper()
	if got := bytes.Join(chunks, nil); !bytes.Equal(got, b) {
		t.Fatalf("chunks join to %d bytes, not the %d of the input", len(got), len(b))
	}
	for i, c := range chunks {
		if len(c) == 0 {
			t.Fatalf("chunk %d is empty", i)
		}
		frames := 0
		for rest := c; len(rest) > 0; frames++ {
			_, next, err := cutFrame(rest)
			if err != nil {
				t.Fatalf("chunk %d does not hold whole frames: %v", i, err)
			}
			rest = next
		}
		if len(c) > max && frames > 1 {
			t.Errorf("chunk %d: %d frames in %d bytes, over %d", i, frames, len(c), max)
		}
		if i+1 < len(chunks) {
			_, next, _ := cutFrame(chunks[i+1])
			if first := len(chunks[i+1]) - len(next); len(c)+first <= max {
				t.Errorf("chunk %d (%d bytes) had room for the next frame (%d bytes) under %d", i, len(c), first, max)
			}
		}
	}
}

func TestSplitEventFrames(t *testing.T) {
	small := rawFrames(t, []byte("a"), []byte("bb"), []byte("ccc")) // frames of 2, 3 and 4 bytes
	big := bytes.Repeat([]byte{7}, 300)                             // a frame of 302 bytes
	tests := []struct {
		name string
		b    []byte
		max  int
		want []int // chunk sizes
	}{
		{"nothing", nil, 100, nil},
		{"all in one", small, 100, []int{9}},
		{"exactly the max", small, 9, []int{9}},
		{"one under", small, 8, []int{5, 4}},
		{"one frame each", small, 4, []int{2, 3, 4}},
		{"max 0", small, 0, []int{2, 3, 4}},
		{"a frame over max alone", rawFrames(t, []byte("a"), big, []byte("bb")), 100, []int{2, 302, 3}},
		{"a frame over max first", rawFrames(t, big, []byte("a"), []byte("bb")), 100, []int{302, 5}},
		{"empty frames", rawFrames(t, nil, nil, nil), 2, []int{2, 1}},
		{"the whole answer of a task", eventFrames(t, sessionAnswer(t)...), MaxSessionEventBytes, []int{len(eventFrames(t, sessionAnswer(t)...))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chunks, err := SplitEventFrames(tt.b, tt.max)
			if err != nil {
				t.Fatal(err)
			}
			var sizes []int
			for _, c := range chunks {
				sizes = append(sizes, len(c))
			}
			if !slices.Equal(sizes, tt.want) {
				t.Errorf("chunk sizes %v, want %v", sizes, tt.want)
			}
			checkChunks(t, tt.b, tt.max, chunks)
		})
	}
}

func TestSplitEventFramesRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		bodies := make([][]byte, rng.IntN(20))
		for j := range bodies {
			bodies[j] = make([]byte, rng.IntN(300))
		}
		b, max := rawFrames(t, bodies...), rng.IntN(1000)
		chunks, err := SplitEventFrames(b, max)
		if err != nil {
			t.Fatal(err)
		}
		checkChunks(t, b, max, chunks)
	}
}

func TestSplitEventFramesRejects(t *testing.T) {
	good := rawFrames(t, []byte("a"), []byte("bb"))
	for name, b := range map[string][]byte{
		"truncated body":        {0x05, 'a', 'b'},
		"truncated length":      {0x80},
		"length over 2^64":      bytes.Repeat([]byte{0xff}, 11),
		"huge length":           binary.AppendUvarint(nil, 1<<62),
		"bad frame after good":  append(slices.Clone(good), 0x03, 'x'),
		"truncated after good":  append(slices.Clone(good), 0x80),
		"bad frame after a big": append(rawFrames(t, make([]byte, 200)), 0x02),
	} {
		t.Run(name, func(t *testing.T) {
			if chunks, err := SplitEventFrames(b, 4); err == nil {
				t.Errorf("SplitEventFrames(%x) = %d chunks, nil; want an error", b, len(chunks))
			}
		})
	}
}

// AppendSessionEvents lets a host send a big answer without copying it; the
// bytes must be exactly what encoding the frame would give, at every
// boundary of a CBOR head.
func TestAppendSessionEventsMatchesMarshal(t *testing.T) {
	boundaries := []uint64{1, 23, 24, 255, 256, 65535, 65536, 1 << 32}
	prefix := []byte("already in the buffer")
	for _, id := range append(boundaries, 1<<32-1, math.MaxUint64) {
		for _, n := range boundaries {
			if n > 1<<20 {
				continue // below, by its head alone
			}
			events := bytes.Repeat([]byte{0x5a}, int(n))
			want := mustMarshal(t, SessionEvents{ID: id, Events: events})
			head := AppendSessionEvents(slices.Clone(prefix), id, int(n))
			if !bytes.HasPrefix(head, prefix) {
				t.Fatalf("AppendSessionEvents did not append to dst: %x", head)
			}
			if got := append(head[len(prefix):], events...); !bytes.Equal(got, want) {
				t.Errorf("id %d, %d bytes of events: head %x, want %x", id, n, head[len(prefix):], want[:len(want)-int(n)])
			}
		}
	}

	// An events length of 2^32 (far over the cap, but the head must still
	// be right): check the byte string head with the independent reader.
	head := AppendSessionEvents(nil, 7, 1<<32)
	idHead := mustMarshal(t, SessionEvents{ID: 7, Events: []byte{}})
	idHead = idHead[:len(idHead)-1]
	if !bytes.HasPrefix(head, idHead) {
		t.Errorf("head %x does not start with %x", head, idHead)
	}
	h, err := readHead(head[len(idHead):])
	if err != nil || h.major != 2 || h.arg != 1<<32 || !h.minimal() || h.size != len(head)-len(idHead) {
		t.Errorf("byte string head %x: %+v, %v", head[len(idHead):], h, err)
	}

	// An answer of the largest event: the head a host really writes.
	events := eventFrames(t, Event{Type: EventBlock, Data: make([]byte, MaxBlockBytes)})
	want := mustMarshal(t, SessionEvents{ID: 300, Events: events})
	if got := append(AppendSessionEvents(nil, 300, len(events)), events...); !bytes.Equal(got, want) {
		t.Errorf("a block of MaxBlockBytes: head %x, want %x", got[:16], want[:16])
	}
}

// A host's answer to several tasks, split, enveloped and interleaved on one
// session, reads back as each task's events in order.
func TestSessionEventsRoundTrip(t *testing.T) {
	answers := map[uint64][]Event{
		1:         sessionAnswer(t),
		2:         {{Type: EventQueued, Position: 1}, ErrorEvent(CodeInternal, "kernel failed", 0)},
		1<<32 + 5: {{Type: EventProgress, Total: 20}, {Type: EventBlock, Data: []byte("x")}, {Type: EventResult, Manifest: []byte("m"), Cached: true}},
		1<<64 - 1: {ErrorEvent(CodeBadRequest, "invalid task", 0)},
		1 << 10:   {{Type: EventQueued, Position: 3}, {Type: EventQueued, Position: 3}, {Type: EventQueued, Position: 2}},
	}
	ids := slices.Sorted(func(yield func(uint64) bool) {
		for id := range answers {
			if !yield(id) {
				return
			}
		}
	})
	var pending [][]byte // frames in the order the host writes them
	chunksOf := map[uint64][][]byte{}
	for _, id := range ids {
		chunks, err := SplitEventFrames(eventFrames(t, answers[id]...), 200)
		if err != nil {
			t.Fatal(err)
		}
		chunksOf[id] = chunks
	}
	// Round robin over the tasks, one frame each, as a host might.
	for more := true; more; {
		more = false
		for _, id := range ids {
			if len(chunksOf[id]) == 0 {
				continue
			}
			c := chunksOf[id][0]
			chunksOf[id] = chunksOf[id][1:]
			pending = append(pending, append(AppendSessionEvents(nil, id, len(c)), c...))
			more = true
		}
	}
	var stream bytes.Buffer
	for _, f := range pending {
		if err := WriteFrame(&stream, f); err != nil {
			t.Fatal(err)
		}
	}

	got := map[uint64][]*Event{}
	r := bufio.NewReader(&stream)
	frames := 0
	for {
		body, err := ReadFrame(r, MaxSessionEventBytes)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		frames++
		id, evs, err := DecodeSessionEvents(body)
		if err != nil {
			t.Fatalf("frame %d: %v", frames, err)
		}
		got[id] = append(got[id], evs...)
	}
	if frames <= len(answers) {
		t.Errorf("%d frames for %d tasks: the test meant to split answers", frames, len(answers))
	}
	for _, id := range ids {
		if len(got[id]) != len(answers[id]) {
			t.Errorf("task %d: %d events, want %d", id, len(got[id]), len(answers[id]))
			continue
		}
		for i, e := range got[id] {
			if !eventsEqual(*e, answers[id][i]) {
				t.Errorf("task %d event %d = %+v, want %+v", id, i, e, answers[id][i])
			}
		}
	}
}

// sessionExample renders the byte layout examples of docs/protocol.md
// ("/gpunet/session/1.0.0", "Example") from the code.
func sessionExample(t *testing.T) string {
	var b strings.Builder
	row := func(depth int, raw []byte, note string) {
		h, err := readHead(raw)
		if err != nil {
			t.Fatal(err)
		}
		s := hex.EncodeToString(raw[:h.size])
		if h.size < len(raw) {
			s += " " + hex.EncodeToString(raw[h.size:])
		}
		fmt.Fprintf(&b, "%s%-36s %s\n", strings.Repeat("  ", depth), s, note)
	}
	entries := func(depth int, enc []byte) []cborEntry {
		es, err := mapEntries(enc)
		if err != nil {
			t.Fatal(err)
		}
		row(depth, enc[:1], fmt.Sprintf("map, %d entries", len(es)))
		return es
	}
	prefix := func(depth int, frame []byte, what string) {
		n, k := binary.Uvarint(frame)
		fmt.Fprintf(&b, "%s%-36s %s length, %d\n", strings.Repeat("  ", depth), hex.EncodeToString(frame[:k]), what, n)
	}

	// The host's frame: task 7, one queued event.
	ev := Event{Type: EventQueued, Position: 1}
	evFrame := eventFrames(t, ev)
	body := mustMarshal(t, SessionEvents{ID: 7, Events: evFrame})
	if head := AppendSessionEvents(nil, 7, len(evFrame)); !bytes.Equal(append(head, evFrame...), body) {
		t.Errorf("AppendSessionEvents gives %x, Marshal %x", append(head, evFrame...), body)
	}
	frame := rawFrames(t, body)
	fmt.Fprintf(&b, "SessionEvents {id: 7, events: one queued event at position 1}, as a frame (%d bytes):\n", len(frame))
	fmt.Fprintf(&b, "%s\n", hex.EncodeToString(frame))
	prefix(0, frame, "frame")
	for _, e := range entries(0, body) {
		row(1, e.KeyBytes, strconv.Quote(e.Key))
		h, err := readHead(e.Val)
		if err != nil {
			t.Fatal(err)
		}
		if e.Key == "id" {
			row(2, e.Val, fmt.Sprint(h.arg))
			continue
		}
		row(2, e.Val[:h.size], fmt.Sprintf("bytes, %d: the task's event frames", h.arg))
		prefix(3, e.Val[h.size:], "event frame")
		_, k := binary.Uvarint(e.Val[h.size:])
		for _, f := range entries(3, e.Val[h.size+k:]) {
			row(4, f.KeyBytes, strconv.Quote(f.Key))
			if vh, _ := readHead(f.Val); vh.major == 3 {
				row(5, f.Val, strconv.Quote(string(f.Val[vh.size:])))
			} else {
				row(5, f.Val, fmt.Sprint(vh.arg))
			}
		}
	}

	// The client's frames: task 7's cancellation, and the head of a request.
	fmt.Fprintf(&b, "SessionRequest {id: 7, cancel: true}, as a frame: %s\n",
		hex.EncodeToString(rawFrames(t, mustMarshal(t, SessionRequest{ID: 7, Cancel: true}))))
	inner := mustMarshal(t, TaskRequest{Task: mustNormalize(t, exampleTask())})
	req := rawFrames(t, mustMarshal(t, SessionRequest{ID: 1, Request: inner}))
	fmt.Fprintf(&b, "SessionRequest {id: 1, request: the %d-byte request of the worked example's task}, as a frame (%d bytes):\n", len(inner), len(req))
	fmt.Fprintf(&b, "%s ‖ the request, %s…\n", hex.EncodeToString(req[:len(req)-len(inner)]), hex.EncodeToString(inner[:6]))
	// The prose under the example says how the request ends.
	if end, _ := hex.DecodeString("686e6f5f6361636865f4"); !bytes.HasSuffix(inner, end) {
		t.Errorf("the request %x does not end with \"no_cache\": false (%x)", inner, end)
	}
	return b.String()
}

// docs/protocol.md must agree with the code on the session's example and
// constants; TestProtocolDocMatchesCode does the same for the rest.
func TestSessionDocMatchesCode(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	example := sessionExample(t)
	var missing []string
	for _, l := range strings.Split(example, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.Contains(string(doc), l) {
			missing = append(missing, l)
		}
	}
	if missing != nil {
		t.Errorf("docs/protocol.md lacks these lines of the session example:\n%s\n\nthe whole example, from the code:\n%s",
			strings.Join(missing, "\n"), example)
	}
	for _, c := range []struct {
		name  string
		value any
	}{
		{"MaxSessionTasks", MaxSessionTasks}, {"MaxSessionRequestBytes", MaxSessionRequestBytes},
		{"MaxSessionEventBytes", MaxSessionEventBytes}, {"SessionIdleTimeout", SessionIdleTimeout},
	} {
		if row := fmt.Sprintf("| `%s` | %s ", c.name, docValue(c.value)); !strings.Contains(string(doc), row) {
			t.Errorf("docs/protocol.md lacks the table row %q", row)
		}
	}
	for _, s := range []string{
		"## " + SessionProtocol,
		"[" + SessionProtocol + "](#gpunetsession100)",
		"| 1.5 |",
	} {
		if !strings.Contains(string(doc), s) {
			t.Errorf("docs/protocol.md never mentions %q", s)
		}
	}
	// The session section sits between the task and fetch sections.
	task := strings.Index(string(doc), "## "+TaskProtocol)
	session := strings.Index(string(doc), "## "+SessionProtocol)
	fetch := strings.Index(string(doc), "## "+FetchProtocol)
	if !(task < session && session < fetch) {
		t.Errorf("sections at %d (task), %d (session), %d (fetch); want the session between", task, session, fetch)
	}
}
