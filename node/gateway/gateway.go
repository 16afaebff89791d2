package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpunet/gpunet/node/localapi"
)

const (
	// DefaultReloadInterval is how often, at most, a request checks
	// whether the keys file changed: a revoked key stops working within a
	// second, and a busy gateway stats the file once a second, not once a
	// request.
	DefaultReloadInterval = time.Second
)

// Option configures the gateway.
type Option func(*Server)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithReloadInterval sets how often, at most, the keys file is checked for
// a change (DefaultReloadInterval; 0: on every request).
func WithReloadInterval(d time.Duration) Option { return func(s *Server) { s.every = d } }

// Server is a running gateway.
type Server struct {
	path  string
	log   *slog.Logger
	every time.Duration
	inner *http.ServeMux
	srv   *http.Server
	ln    net.Listener
	wg    sync.WaitGroup

	mu      sync.Mutex
	keys    []Key
	buckets map[[32]byte]*bucket
	checked time.Time // when the file was last stat'ed
	modTime time.Time // the file's mtime and size when last read,
	size    int64     // whether or not it was valid
}

// Listen loads the keys file and serves routes on addr to the key
// holders. It refuses a file that is invalid or holds no key: a gateway
// must start closed or not at all. routes are node/openai's, registered
// on a mux of the gateway's own.
func Listen(addr, keysFile string, routes []localapi.Option, opts ...Option) (*Server, error) {
	s := &Server{path: keysFile, log: slog.New(slog.DiscardHandler), every: DefaultReloadInterval,
		inner: http.NewServeMux(), buckets: map[[32]byte]*bucket{}}
	for _, o := range opts {
		o(s)
	}
	fi, keys, err := load(keysFile)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("keys file %s holds no key: add one with `gpunet gateway-key new --name NAME`", keysFile)
	}
	s.setKeys(keys, time.Now())
	s.modTime, s.size, s.checked = fi.ModTime(), fi.Size(), time.Now()
	for _, r := range routes {
		r(s.inner)
	}
	// Anything else (the local API's admin routes among it) is not here.
	s.inner.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		notServed(w, r)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("gateway on %s: %w", addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("gateway stopped", "err", err)
		}
	}()
	s.log.Info("gateway", "addr", ln.Addr().String(), "keys", len(keys), "file", keysFile)
	return s, nil
}

// Addr is the address the gateway listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops serving, cutting open requests, and waits for the server.
func (s *Server) Close() error {
	err := s.srv.Close()
	s.wg.Wait()
	return err
}

func load(path string) (os.FileInfo, []Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("keys file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("keys file: %w", err)
	}
	keys, err := ParseKeys(f)
	if err != nil {
		return fi, nil, fmt.Errorf("keys file %s: %w", path, err)
	}
	return fi, keys, nil
}

// setKeys installs keys. A key keeps its bucket across reloads unless its
// rate changed. Only called with s.mu held (or before serving).
func (s *Server) setKeys(keys []Key, now time.Time) {
	buckets := map[[32]byte]*bucket{}
	for _, k := range keys {
		if k.Rate.N == 0 {
			continue
		}
		if b, ok := s.buckets[k.Hash]; ok && b.rate == k.Rate {
			buckets[k.Hash] = b
			continue
		}
		buckets[k.Hash] = &bucket{rate: k.Rate, tokens: max(1, k.Rate.N), last: now}
	}
	s.keys, s.buckets = keys, buckets
}

// reload rereads the keys file if its mtime or size changed, at most once
// per s.every. An invalid or missing file keeps the keys in force, with
// one log line per change of the file. Only called with s.mu held.
func (s *Server) reload(now time.Time) {
	if now.Sub(s.checked) < s.every {
		return
	}
	s.checked = now
	st, err := os.Stat(s.path)
	if err != nil {
		if !s.modTime.IsZero() {
			s.log.Error("keys file gone; keeping the keys in force", "file", s.path, "err", err)
			s.modTime, s.size = time.Time{}, -1
		}
		return
	}
	if st.ModTime().Equal(s.modTime) && st.Size() == s.size {
		return
	}
	fi, keys, err := load(s.path)
	if fi != nil {
		s.modTime, s.size = fi.ModTime(), fi.Size()
	}
	if err != nil {
		s.log.Error("keys file invalid; keeping the keys in force", "err", err)
		return
	}
	s.setKeys(keys, now)
	if len(keys) == 0 {
		// Revoking every key is an operator's right; say so loudly.
		s.log.Warn("keys file reloaded with no key: every request is refused", "file", s.path)
		return
	}
	s.log.Info("keys file reloaded", "file", s.path, "keys", len(keys))
}

// authorize finds the request's key and spends one of its tokens.
func (s *Server) authorize(r *http.Request) (Key, *apiError) {
	presented, ok := bearer(r)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reload(now)
	if !ok {
		return Key{}, badKey("no API key: send Authorization: Bearer <key>")
	}
	k, ok := match(s.keys, presented)
	if !ok {
		return Key{}, badKey("invalid API key")
	}
	if b := s.buckets[k.Hash]; b != nil {
		if ok, wait := b.take(now); !ok {
			return Key{}, &apiError{status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "rate_limit_exceeded",
				Message:    fmt.Sprintf("this key may send %s requests; retry later", k.Rate),
				retryAfter: wait}
		}
	}
	return k, nil
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "Bearer ") {
		return "", false
	}
	k := strings.TrimSpace(h[7:])
	return k, k != ""
}

// ServeHTTP checks the key, then forwards what it can attribute to it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k, e := s.authorize(r)
	if e != nil {
		writeError(w, e)
		return
	}
	switch {
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		// No GET route of the inner mux submits: nothing to attribute.
	case r.Method == http.MethodPost && (r.URL.Path == "/v1/images/generations" || r.URL.Path == "/v1/images/edits"):
		// The key is the submitter: node/openai reads it from the
		// request, whatever the body says.
		r = localapi.WithCaller(r, localapi.Caller{Submitter: k.Submitter()})
	default:
		// A route the gateway cannot attribute to the key is not
		// forwarded: better a 404 than a request under a borrowed name.
		notServed(w, r)
		return
	}
	s.inner.ServeHTTP(w, r)
}

// apiError is OpenAI's error object, as node/openai writes it.
type apiError struct {
	status     int
	Message    string  `json:"message"`
	Type       string  `json:"type"`
	Param      *string `json:"param"`
	Code       any     `json:"code"`
	retryAfter time.Duration
}

func badKey(msg string) *apiError {
	return &apiError{status: http.StatusUnauthorized, Type: "invalid_request_error", Code: "invalid_api_key", Message: msg}
}

func badRequest(param, msg string) *apiError {
	e := &apiError{status: http.StatusBadRequest, Type: "invalid_request_error", Message: msg}
	if param != "" {
		e.Param = &param
	}
	return e
}

func notServed(w http.ResponseWriter, r *http.Request) {
	writeError(w, &apiError{status: http.StatusNotFound, Type: "invalid_request_error",
		Message: r.Method + " " + r.URL.Path + ": not served on this gateway; it serves GET /v1/models, POST /v1/images/generations and POST /v1/images/edits"})
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.retryAfter.Seconds()))))
	}
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="gpunet"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // the messages quote <key>; nobody renders them as HTML
	_ = enc.Encode(struct {
		Error *apiError `json:"error"`
	}{e})
}
