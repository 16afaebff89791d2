package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
)

// maxRequestBody bounds a request body: a task is a few KiB at most.
const maxRequestBody = 64 << 10

// SubmitRequest is the body of POST /v1/tasks.
type SubmitRequest struct {
	protocol.Task
	NoCache bool `json:"no_cache,omitempty"`
	// Submitter names the caller among the node's callers (a user, an app):
	// the node's waiting room and the hosts share their places fairly
	// between submitters, so one heavy caller cannot starve the others.
	// At most protocol.MaxSubmitterBytes of printable UTF-8; empty means the
	// node's own line, shared by every caller that sends none.
	Submitter string `json:"submitter,omitempty"`
	// Previews asks for up to protocol.MaxPreviews partial images of the
	// run, as progress lines with stage "preview" and a base64 PNG in
	// "preview" (hosts whose kernel makes none send none).
	Previews int `json:"previews,omitempty"`
	// TimeoutMs is the task's deadline in milliseconds from the request (0:
	// the node's default, 10 minutes; at most maxTimeout). The task waits
	// out a saturated swarm until then.
	TimeoutMs uint64 `json:"timeout_ms,omitempty"`
}

// maxTimeout bounds timeout_ms: a day is longer than any surge worth
// waiting out.
const maxTimeout = 24 * time.Hour

// Line is one line of the NDJSON stream of POST /v1/tasks: exactly one of
// Progress, Result or Error is set; Result or Error ends the stream.
type Line struct {
	Progress *node.Progress `json:"progress,omitempty"`
	Result   *TaskResult    `json:"result,omitempty"`
	Error    *Error         `json:"error,omitempty"`
}

// TaskResult is a finished task as the API returns it.
type TaskResult struct {
	TaskCID   string   `json:"task_cid"`
	ResultCID string   `json:"result_cid"`
	Host      string   `json:"host"`
	Provider  string   `json:"provider"`
	Cache     string   `json:"cache"`
	ElapsedMs float64  `json:"elapsed_ms"`
	Outputs   []Output `json:"outputs"`
	Manifest  []byte   `json:"manifest"` // the signed DAG-CBOR manifest, base64
}

// Output is one output file, its bytes inline (base64 in JSON).
type Output struct {
	CID       string `json:"cid"`
	MediaType string `json:"media_type"`
	Bytes     int    `json:"bytes"`
	Data      []byte `json:"data"`
}

// CodeDeadline is the error code of a task whose deadline (timeout_ms, or
// the node's default) passed before it was done.
const CodeDeadline = "deadline_exceeded"

// Error is an API error.
type Error struct {
	Message string `json:"message"`
	Code    string `json:"code,omitempty"`
}

// Server serves the local API for one node.
type Server struct {
	n   *node.Node
	log *slog.Logger
	srv *http.Server
	ln  net.Listener
	wg  sync.WaitGroup
}

// Listen starts the API on addr, which must be a loopback address: the API
// has no authentication, so it must not be reachable from other machines.
func Listen(n *node.Node, addr string, log *slog.Logger, opts ...Option) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("api address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("api address %q: must be loopback (127.0.0.1, ::1 or localhost)", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("local API on %s: %w (another gpunet daemon running? use --api to pick another port)", addr, err)
	}
	s := &Server{n: n, log: log, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/peers", s.peers)
	mux.HandleFunc("POST /v1/tasks", s.submit)
	mux.HandleFunc("POST /v1/host/pause", s.pause(true))
	mux.HandleFunc("POST /v1/host/resume", s.pause(false))
	mux.HandleFunc("POST /v1/host/limits", s.limits)
	registerCache(mux, s)
	for _, o := range opts {
		o(mux)
	}
	s.srv = &http.Server{Handler: localOnly(sameOrigin(s.Addr(), mux)), ReadHeaderTimeout: 10 * time.Second}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("local API stopped", "err", err)
		}
	}()
	return s, nil
}

// Option adds to the API, before it serves.
type Option func(*http.ServeMux)

// WithRoute serves h at pattern (http.ServeMux syntax, e.g. "GET /metrics")
// beside the API's own routes, behind the same loopback and same-origin
// checks: how the metrics and the dashboard join the API without it
// importing them.
func WithRoute(pattern string, h http.Handler) Option {
	return func(mux *http.ServeMux) { mux.Handle(pattern, h) }
}

// Addr is the address the API listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, waiting up to 5 s for running requests.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	s.wg.Wait()
	return err
}

// localOnly refuses requests whose Host header is not a loopback name, so a
// web page cannot reach the API through DNS rebinding.
func localOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			writeJSON(w, http.StatusForbidden, Error{Message: "the local API answers loopback hosts only"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// sameOrigin refuses requests a web page on another origin made: the API
// has no authentication, so any page the machine's user opens could
// otherwise drive it. A page cannot forge Origin or Sec-Fetch-Site; every
// browser sends Origin on a cross-origin POST, including the "simple" ones
// (text/plain, no preflight) that CORS lets through without asking the
// server, and current browsers send Sec-Fetch-Site on every request. So,
// whatever the method:
//
//   - an Origin other than the API's own (http:// and the request's Host,
//     or the listen address) is refused, "null" included;
//   - without Origin, Sec-Fetch-Site cross-site or same-site (a page on
//     another port of localhost) is refused.
//
// Programs that are not browsers (curl, the Go client) send neither and
// pass, as does a page served from the API's own origin.
func sameOrigin(listen string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o := r.Header.Get("Origin"); o != "" {
			if !strings.EqualFold(o, "http://"+r.Host) && !strings.EqualFold(o, "http://"+listen) {
				writeJSON(w, http.StatusForbidden, Error{Message: fmt.Sprintf(
					"cross-origin request from %s refused: the local API serves programs on this machine and pages from its own origin only", o)})
				return
			}
		} else if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
			writeJSON(w, http.StatusForbidden, Error{Message: "cross-site request refused: the local API serves programs on this machine and pages from its own origin only"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// wantJSON refuses a request body that is not declared JSON with 415. A
// browser can send text/plain, form or multipart bodies to another origin
// without a CORS preflight, but not application/json; so this is a second
// lock behind sameOrigin, for a browser that sends neither Origin nor
// Sec-Fetch-Site.
func wantJSON(w http.ResponseWriter, r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		writeJSON(w, http.StatusUnsupportedMediaType, Error{
			Message: fmt.Sprintf("Content-Type %q: want application/json", r.Header.Get("Content-Type")),
			Code:    protocol.CodeBadRequest,
		})
		return false
	}
	return true
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.n.Status(r.Context()))
}

func (s *Server) peers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.n.Peers())
}

// pause pauses or resumes the host; a daemon without a kernel answers 409.
func (s *Server) pause(p bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ok := s.n.Resume
		if p {
			ok = s.n.Pause
		}
		if !ok() {
			writeJSON(w, http.StatusConflict, Error{Message: "this daemon is not a host: nothing to pause"})
			return
		}
		writeJSON(w, http.StatusOK, s.n.Status(r.Context()))
	}
}

// LimitsRequest is the body of POST /v1/host/limits. Only the keys given
// change; the others keep their values. The change lasts until the host
// stops (its flags and config file say what it starts with).
type LimitsRequest struct {
	// MaxTempC is the temperature limit in °C, node.MinMaxTempC to
	// node.MaxMaxTempC, or 0 for 5 °C under the GPU's slowdown temperature.
	MaxTempC *float64 `json:"max_temp_c,omitempty"`
}

// limits changes the host's limits and answers its status; a value out of
// range is 400 and changes nothing, a daemon without a kernel 409.
func (s *Server) limits(w http.ResponseWriter, r *http.Request) {
	if !wantJSON(w, r) {
		return
	}
	var req LimitsRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Message: "decoding limits: " + err.Error(), Code: protocol.CodeBadRequest})
		return
	}
	notHost := Error{Message: "this daemon is not a host: it has no limits to set"}
	if req.MaxTempC != nil {
		_, err := s.n.SetMaxTemp(r.Context(), *req.MaxTempC)
		switch {
		case errors.Is(err, node.ErrNotHost):
			writeJSON(w, http.StatusConflict, notHost)
			return
		case err != nil:
			writeJSON(w, http.StatusBadRequest, Error{Message: err.Error(), Code: protocol.CodeBadRequest})
			return
		}
	}
	st := s.n.Status(r.Context())
	if !st.Host {
		writeJSON(w, http.StatusConflict, notHost)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) submit(w http.ResponseWriter, r *http.Request) {
	if !wantJSON(w, r) {
		return
	}
	var req SubmitRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Message: "decoding task: " + err.Error(), Code: protocol.CodeBadRequest})
		return
	}
	if _, err := req.Task.Normalize(); err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Message: err.Error(), Code: protocol.CodeBadRequest})
		return
	}
	if err := protocol.ValidSubmitter(req.Submitter); err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Message: err.Error(), Code: protocol.CodeBadRequest})
		return
	}
	if req.Previews < 0 || req.Previews > protocol.MaxPreviews {
		writeJSON(w, http.StatusBadRequest, Error{Message: fmt.Sprintf("previews %d: want 0 to %d", req.Previews, protocol.MaxPreviews), Code: protocol.CodeBadRequest})
		return
	}
	if req.TimeoutMs > uint64(maxTimeout/time.Millisecond) {
		writeJSON(w, http.StatusBadRequest, Error{Message: fmt.Sprintf("timeout_ms %d: at most %d (a day)", req.TimeoutMs, maxTimeout/time.Millisecond), Code: protocol.CodeBadRequest})
		return
	}
	ctx := r.Context()
	if req.TimeoutMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.TimeoutMs)*time.Millisecond)
		defer cancel()
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	send := func(l Line) {
		_ = enc.Encode(l)
		if flusher != nil {
			flusher.Flush()
		}
	}
	res, err := s.n.Submit(ctx, req.Task, node.SubmitOptions{
		NoCache:   req.NoCache,
		Submitter: req.Submitter,
		Previews:  req.Previews,
		Progress:  func(p node.Progress) { send(Line{Progress: &p}) },
	})
	if err != nil {
		e := &Error{Message: err.Error()}
		var re *protocol.RemoteError
		switch {
		case errors.As(err, &re):
			e.Code = re.Code
		case errors.Is(err, context.DeadlineExceeded):
			e.Code = CodeDeadline
		}
		send(Line{Error: e})
		return
	}
	send(Line{Result: ToTaskResult(res)})
}

// ToTaskResult converts a node result for the API.
func ToTaskResult(res *node.Result) *TaskResult {
	mb, _ := res.Manifest.Encode()
	tr := &TaskResult{
		TaskCID: res.TaskCID.String(), ResultCID: res.ResultCID.String(),
		Host: res.Host.String(), Provider: res.Provider.String(), Cache: res.Cache,
		ElapsedMs: float64(res.Elapsed.Microseconds()) / 1000, Manifest: mb,
	}
	for i, o := range res.Manifest.Outputs {
		tr.Outputs = append(tr.Outputs, Output{CID: o.CID.String(), MediaType: o.MediaType, Bytes: len(res.Blocks[i]), Data: res.Blocks[i]})
	}
	return tr
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
