package protocol

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestFrameRoundTrip(t *testing.T) {
	tests := []struct {
		size   int
		header []byte // the unsigned varint of size
	}{
		{0, []byte{0x00}},
		{1, []byte{0x01}},
		{127, []byte{0x7f}},
		{128, []byte{0x80, 0x01}},
		{300, []byte{0xac, 0x02}},
		{16383, []byte{0xff, 0x7f}},
		{16384, []byte{0x80, 0x80, 0x01}},
		{MaxRequestBytes, []byte{0x80, 0x80, 0x01}},
	}
	var stream bytes.Buffer
	for _, tt := range tests {
		body := bytes.Repeat([]byte{byte(tt.size)}, tt.size)
		var one bytes.Buffer
		if err := WriteFrame(&one, body); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(one.Bytes(), tt.header) || one.Len() != len(tt.header)+tt.size {
			t.Errorf("frame of %d bytes starts %x, want header %x", tt.size, one.Bytes()[:min(one.Len(), 4)], tt.header)
		}
		stream.Write(one.Bytes())
	}
	// All frames back to back on one stream, then a clean end.
	r := bufio.NewReader(&stream)
	for _, tt := range tests {
		body, err := ReadFrame(r, MaxRequestBytes)
		if err != nil {
			t.Fatalf("ReadFrame(%d bytes): %v", tt.size, err)
		}
		if len(body) != tt.size || (tt.size > 0 && body[0] != byte(tt.size)) {
			t.Errorf("frame of %d bytes came back as %d bytes", tt.size, len(body))
		}
	}
	if _, err := ReadFrame(r, MaxRequestBytes); err != io.EOF {
		t.Errorf("ReadFrame at the end = %v, want io.EOF", err)
	}
}

func TestReadFrameRejectsOversizeWithoutAllocating(t *testing.T) {
	tests := []struct {
		name     string
		announce uint64
		max      int
	}{
		{"2^60", 1 << 60, MaxEventBytes},
		{"max uint64", 1<<64 - 1, MaxEventBytes},
		{"one over a large cap", 1<<30 + 1, 1 << 30},
		{"one over the request cap", MaxRequestBytes + 1, MaxRequestBytes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := binary.AppendUvarint(nil, tt.announce)
			// A body is there to read: only the check can stop the read.
			in := append(hdr, make([]byte, 64)...)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := ReadFrame(bufio.NewReader(bytes.NewReader(in)), tt.max)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("ReadFrame = %v, want ErrFrameTooLarge", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("rejecting a %d-byte frame allocated %d bytes", tt.announce, grew)
			}
		})
	}
	t.Run("exactly the cap is accepted", func(t *testing.T) {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		if b, err := ReadFrame(bufio.NewReader(&buf), 1000); err != nil || len(b) != 1000 {
			t.Errorf("ReadFrame at the cap = %d bytes, %v", len(b), err)
		}
	})
}

func TestReadFrameErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
	}{
		{"truncated body", []byte{0x05, 'a', 'b', 'c'}},
		{"truncated header", []byte{0x80}},
		{"varint overflow", bytes.Repeat([]byte{0xff}, 11)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadFrame(bufio.NewReader(bytes.NewReader(tt.in)), 1<<10)
			if err == nil || errors.Is(err, io.EOF) {
				t.Errorf("ReadFrame(%x) = %v; want an error that is not io.EOF", tt.in, err)
			}
		})
	}
}

// io.EOF from ReadFrame means "the stream ended cleanly between frames";
// callers loop until they see it. BUG: a header followed by no body at all
// returns an error wrapping io.EOF (io.ReadFull reports io.EOF when it reads
// nothing), so a host that dies right after a length prefix looks like a
// clean end of stream.
func TestReadFrameHeaderWithoutBodyIsNotEOF(t *testing.T) {
	_, err := ReadFrame(bufio.NewReader(bytes.NewReader([]byte{0x05})), 1<<10)
	if err == nil || errors.Is(err, io.EOF) {
		t.Errorf("ReadFrame(header only) = %v; want an error that is not io.EOF (io.ErrUnexpectedEOF)", err)
	}
}

func TestWriteFramePropagatesErrors(t *testing.T) {
	big := make([]byte, oneWriteMax+1) // written as header, then body
	for _, c := range []struct {
		body []byte
		n    int
	}{{[]byte("body"), 0}, {big, 0}, {big, 1}} { // one write; the header; the body
		w := &failingWriter{okWrites: c.n}
		if err := WriteFrame(w, c.body); err == nil {
			t.Errorf("WriteFrame of %d bytes with a writer failing after %d writes succeeded", len(c.body), c.n)
		}
	}
}

// A small frame is one Write (a libp2p stream sends each Write as its own
// message), and reads back whole.
func TestWriteFrameSmallIsOneWrite(t *testing.T) {
	var w countingWriter
	if err := WriteFrame(&w, []byte("body")); err != nil {
		t.Fatal(err)
	}
	if w.writes != 1 {
		t.Errorf("%d writes for a small frame, want 1", w.writes)
	}
	got, err := ReadFrame(bufio.NewReader(bytes.NewReader(w.Bytes())), 1<<10)
	if err != nil || string(got) != "body" {
		t.Errorf("read back %q, %v", got, err)
	}
}

type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

type failingWriter struct{ okWrites int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.okWrites == 0 {
		return 0, errors.New("broken pipe")
	}
	w.okWrites--
	return len(p), nil
}

func TestEventRoundTrip(t *testing.T) {
	events := []Event{
		{Type: EventQueued, Position: 3},
		{Type: EventProgress, Step: 5, Total: 20, EtaMs: 1500},
		{Type: EventProgress, Step: 20, Total: 20},
		{Type: EventPreview, Data: []byte("png so far"), Step: 10, Total: 20},
		{Type: EventBlock, Data: []byte("png bytes")},
		{Type: EventResult, Manifest: encodeManifest(t, testManifest(t, testKey(t, 1))), Cached: true},
		ErrorEvent(CodeBusy, "queue full", 2*time.Second),
	}
	var stream bytes.Buffer
	for _, e := range events {
		if err := WriteMsg(&stream, e); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(&stream)
	for _, want := range events {
		b, err := ReadFrame(r, MaxEventBytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkDAGCBOR(b); err != nil {
			t.Errorf("%s event is not canonical DAG-CBOR: %v", want.Type, err)
		}
		got, err := DecodeEvent(b)
		if err != nil {
			t.Fatalf("DecodeEvent(%s): %v", want.Type, err)
		}
		if !eventsEqual(*got, want) {
			t.Errorf("round trip %+v, want %+v", got, want)
		}
	}
	// Fields that do not apply are omitted, not sent as zero.
	if keys := mapKeys(t, mustMarshal(t, Event{Type: EventQueued, Position: 1})); !slices.Equal(keys, []string{"type", "position"}) {
		t.Errorf("queued event keys %v, want [type position]", keys)
	}
}

func eventsEqual(a, b Event) bool {
	return a.Type == b.Type && a.Position == b.Position && a.Step == b.Step && a.Total == b.Total &&
		a.EtaMs == b.EtaMs && bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Manifest, b.Manifest) &&
		a.Cached == b.Cached && a.Code == b.Code && a.Message == b.Message && a.RetryAfterMs == b.RetryAfterMs
}

func TestDecodeEventRejects(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"unknown type", mustMarshal(t, Event{Type: "cancel"})},
		{"no type", mustMarshal(t, Event{Position: 1})},
		{"step beyond total", mustMarshal(t, Event{Type: EventProgress, Step: 21, Total: 20})},
		{"step without total", mustMarshal(t, Event{Type: EventProgress, Step: 1})},
		{"queued with step beyond total", mustMarshal(t, Event{Type: EventQueued, Position: 1, Step: 2, Total: 1})},
		{"preview without data", mustMarshal(t, Event{Type: EventPreview, Step: 1, Total: 2})},
		{"preview over the cap", mustMarshal(t, Event{Type: EventPreview, Data: make([]byte, MaxPreviewBytes+1), Step: 1, Total: 2})},
		{"preview step beyond total", mustMarshal(t, Event{Type: EventPreview, Data: []byte("png"), Step: 3, Total: 2})},
		{"block without data", mustMarshal(t, Event{Type: EventBlock})},
		{"block over the cap", mustMarshal(t, Event{Type: EventBlock, Data: make([]byte, MaxBlockBytes+1)})},
		{"frame over the cap", make([]byte, MaxEventBytes+1)},
		{"result without manifest", mustMarshal(t, Event{Type: EventResult})},
		{"result manifest over the cap", mustMarshal(t, Event{Type: EventResult, Manifest: make([]byte, MaxManifestBytes+1)})},
		{"error without code", mustMarshal(t, Event{Type: EventError, Message: "x"})},
		{"error message over 1024 bytes", mustMarshal(t, Event{Type: EventError, Code: CodeBusy, Message: strings.Repeat("x", 1025)})},
		{"unknown field", mustMarshal(t, map[string]any{"type": EventQueued, "priority": 1})},
		{"trailing bytes", append(mustMarshal(t, Event{Type: EventQueued, Position: 1}), 0)},
		{"not a map", mustMarshal(t, []string{EventQueued})},
		{"type not text", mustMarshal(t, map[string]any{"type": 1})},
		{"negative position", mustMarshal(t, map[string]any{"type": EventQueued, "position": -1})},
		{"position over uint32", mustMarshal(t, map[string]any{"type": EventQueued, "position": uint64(1) << 32})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if e, err := DecodeEvent(tt.b); err == nil {
				t.Errorf("DecodeEvent accepted %+v", e)
			}
		})
	}
	t.Run("preview at the cap", func(t *testing.T) {
		e := Event{Type: EventPreview, Data: make([]byte, MaxPreviewBytes), Step: 5, Total: 20}
		if got, err := DecodeEvent(mustMarshal(t, e)); err != nil || !eventsEqual(*got, e) {
			t.Errorf("DecodeEvent(preview at the cap) = %v", err)
		}
	})
	t.Run("block at the cap", func(t *testing.T) {
		b := mustMarshal(t, Event{Type: EventBlock, Data: make([]byte, MaxBlockBytes)})
		if len(b) > MaxEventBytes {
			t.Fatalf("a block event at MaxBlockBytes is %d bytes, over MaxEventBytes", len(b))
		}
		if _, err := DecodeEvent(b); err != nil {
			t.Errorf("DecodeEvent(block at the cap): %v", err)
		}
	})
}

func TestErrorEvent(t *testing.T) {
	e := ErrorEvent(CodeRateLimited, "slow down", 1500*time.Millisecond)
	if e.Type != EventError || e.Code != CodeRateLimited || e.Message != "slow down" || e.RetryAfterMs != 1500 {
		t.Errorf("ErrorEvent = %+v", e)
	}
	re := e.Err()
	if re.Code != CodeRateLimited || re.Message != "slow down" || re.RetryAfter != 1500*time.Millisecond {
		t.Errorf("Err() = %+v", re)
	}
	if s := re.Error(); !strings.Contains(s, "rate_limited") || !strings.Contains(s, "slow down") || !strings.Contains(s, "1.5s") {
		t.Errorf("Error() = %q, want code, message and retry delay", s)
	}
	if s := (&RemoteError{Code: CodeInternal}).Error(); s != "remote: internal" {
		t.Errorf("Error() without message = %q", s)
	}
	long := ErrorEvent(CodeInternal, strings.Repeat("x", 5000), 0)
	if len(long.Message) != 1024 {
		t.Errorf("message truncated to %d bytes, want 1024", len(long.Message))
	}
	if _, err := DecodeEvent(mustMarshal(t, long)); err != nil {
		t.Errorf("truncated error event does not decode: %v", err)
	}
}

// Every error event a host builds must decode at the client. BUG: ErrorEvent
// truncates the message at byte 1024, which can split a multi-byte UTF-8
// sequence, and passes invalid UTF-8 in the message through; the CBOR text
// string is then invalid UTF-8 and DecodeEvent rejects the whole event, so
// the client sees a decoding error instead of, say, "busy".
func TestErrorEventAlwaysDecodes(t *testing.T) {
	msgs := map[string]string{"invalid UTF-8": "bad byte \xff in a model name"}
	for _, prefix := range []string{"", "a", "ab", "abc"} {
		msgs["prefix "+strconv.Quote(prefix)] = prefix + strings.Repeat("€", 1000) // 3 bytes each
	}
	for prefix, msg := range msgs {
		e := ErrorEvent(CodeBusy, msg, time.Second)
		if !utf8.ValidString(e.Message) || len(e.Message) > 1024 {
			t.Errorf("%s: message is %d bytes, valid UTF-8 %v", prefix, len(e.Message), utf8.ValidString(e.Message))
		}
		var buf bytes.Buffer
		if err := WriteMsg(&buf, e); err != nil {
			t.Fatal(err)
		}
		b, err := ReadFrame(bufio.NewReader(&buf), MaxEventBytes)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeEvent(b)
		if err != nil {
			t.Errorf("%s: DecodeEvent: %v", prefix, err)
			continue
		}
		if !errors.Is(got.Err(), ErrBusy) {
			t.Errorf("%s: decoded error %v does not match ErrBusy", prefix, got.Err())
		}
	}
}

func TestRemoteErrorSentinels(t *testing.T) {
	tests := []struct {
		code      string
		sentinel  error
		retryable bool
	}{
		{CodeBusy, ErrBusy, true},
		{CodeTooHot, ErrTooHot, true},
		{CodePaused, ErrPaused, true},
		{CodeRateLimited, ErrRateLimited, true},
		{CodeUnsupportedModel, ErrUnsupportedModel, true},
		{CodeBadRequest, ErrBadRequest, false},
		{CodeNotFound, ErrNotFound, true},
		{CodeInternal, ErrInternal, true},
	}
	all := make([]error, len(tests))
	for i, tt := range tests {
		all[i] = tt.sentinel
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			// Through the wire, and wrapped the way callers wrap it.
			ev, err := DecodeEvent(mustMarshal(t, ErrorEvent(tt.code, "m", 0)))
			if err != nil {
				t.Fatal(err)
			}
			re := ev.Err()
			wrapped := errors.Join(errors.New("submitting"), re)
			for _, s := range all {
				if got := errors.Is(wrapped, s); got != (s == tt.sentinel) {
					t.Errorf("errors.Is(%s, %v) = %v", tt.code, s, got)
				}
			}
			var target *RemoteError
			if !errors.As(wrapped, &target) || target.Code != tt.code {
				t.Errorf("errors.As did not find the RemoteError")
			}
			if re.Retryable() != tt.retryable {
				t.Errorf("Retryable() = %v, want %v", re.Retryable(), tt.retryable)
			}
		})
	}
	t.Run("unknown code", func(t *testing.T) {
		re := &RemoteError{Code: "overloaded_v2"}
		for _, s := range all {
			if errors.Is(re, s) {
				t.Errorf("unknown code matches %v", s)
			}
		}
		if !re.Retryable() {
			t.Error("an unknown code is not retryable")
		}
	})
	// The codes are wire values: renaming one breaks old peers.
	codes := map[string]string{
		CodeBusy: "busy", CodeTooHot: "too_hot", CodePaused: "paused", CodeRateLimited: "rate_limited",
		CodeUnsupportedModel: "unsupported_model", CodeBadRequest: "bad_request", CodeNotFound: "not_found", CodeInternal: "internal",
	}
	for got, want := range codes {
		if got != want {
			t.Errorf("code %q, want %q", got, want)
		}
	}
}

func TestDecodeTaskRequest(t *testing.T) {
	n := mustNormalize(t, exampleTask())
	good := mustMarshal(t, TaskRequest{Task: n, NoCache: true})
	if keys := mapKeys(t, good); !slices.Equal(keys, []string{"task", "no_cache"}) {
		t.Errorf("request keys %v", keys)
	}
	r, err := DecodeTaskRequest(good)
	if err != nil {
		t.Fatalf("DecodeTaskRequest: %v", err)
	}
	if !r.Task.Equal(n) || !r.NoCache || r.Submitter != "" {
		t.Errorf("decoded %+v", r)
	}
	withSub := mustMarshal(t, TaskRequest{Task: n, Submitter: "alice@laptop"})
	if keys := mapKeys(t, withSub); !slices.Equal(keys, []string{"task", "no_cache", "submitter"}) {
		t.Errorf("request keys with a submitter %v", keys)
	}
	if r, err := DecodeTaskRequest(withSub); err != nil || r.Submitter != "alice@laptop" {
		t.Errorf("DecodeTaskRequest with a submitter = %+v, %v", r, err)
	}
	withPreviews := mustMarshal(t, TaskRequest{Task: n, Previews: MaxPreviews})
	if keys := mapKeys(t, withPreviews); !slices.Equal(keys, []string{"task", "no_cache", "previews"}) {
		t.Errorf("request keys with previews %v", keys)
	}
	if r, err := DecodeTaskRequest(withPreviews); err != nil || r.Previews != MaxPreviews {
		t.Errorf("DecodeTaskRequest with previews = %+v, %v", r, err)
	}
	longest := strings.Repeat("é", MaxSubmitterBytes/2)
	if _, err := DecodeTaskRequest(mustMarshal(t, TaskRequest{Task: n, Submitter: longest})); err != nil {
		t.Errorf("a %d-byte submitter: %v", len(longest), err)
	}

	unnormal := n
	unnormal.Prompt = "a  quiet harbour at dusk"
	noSeed := n
	noSeed.Seed = 0
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"oversize", make([]byte, MaxRequestBytes+1), ErrFrameTooLarge},
		{"empty", nil, ErrBadTask},
		{"task not normalised", mustMarshal(t, TaskRequest{Task: unnormal}), ErrBadTask},
		{"seed 0", mustMarshal(t, TaskRequest{Task: noSeed}), ErrBadTask},
		{"no task", mustMarshal(t, map[string]any{"no_cache": false}), ErrBadTask},
		{"unknown field", mustMarshal(t, map[string]any{"task": n, "no_cache": false, "priority": 9}), ErrBadTask},
		{"unknown task field", mustMarshal(t, map[string]any{"task": map[string]any{"seed": 1, "lora": "x"}}), ErrBadTask},
		{"trailing bytes", append(slices.Clone(good), 0), ErrBadTask},
		{"a bare task", mustEncode(t, n), ErrBadTask},
		{"submitter too long", mustMarshal(t, TaskRequest{Task: n, Submitter: strings.Repeat("s", MaxSubmitterBytes+1)}), ErrBadTask},
		{"submitter with a control character", mustMarshal(t, TaskRequest{Task: n, Submitter: "bob\n"}), ErrBadTask},
		{"submitter not UTF-8", mustMarshal(t, TaskRequest{Task: n, Submitter: "\xff"}), ErrBadTask},
		{"submitter not text", mustMarshal(t, map[string]any{"task": n, "no_cache": false, "submitter": 7}), ErrBadTask},
		{"previews over the cap", mustMarshal(t, TaskRequest{Task: n, Previews: MaxPreviews + 1}), ErrBadTask},
		{"previews negative", mustMarshal(t, map[string]any{"task": n, "no_cache": false, "previews": -1}), ErrBadTask},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r, err := DecodeTaskRequest(tt.b); !errors.Is(err, tt.want) {
				t.Errorf("DecodeTaskRequest = %+v, %v; want %v", r, err, tt.want)
			}
		})
	}
}

func TestProtocolIDs(t *testing.T) {
	// These strings are negotiated on the wire and named in docs/protocol.md.
	ids := map[string]string{
		TaskProtocol:                  "/gpunet/task/1.0.0",
		FetchProtocol:                 "/gpunet/fetch/1.0.0",
		DHTPrefix + "/kad/1.0.0":      "/gpunet/kad/1.0.0",
		BeaconTopic:                   "/gpunet/beacon/1.0.0",
		"/" + CapacityNamespace + "/": "/gpunet-cap/",
	}
	for got, want := range ids {
		if got != want {
			t.Errorf("protocol string %q, want %q", got, want)
		}
	}
}
