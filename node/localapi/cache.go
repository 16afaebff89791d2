package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
)

// The results-store endpoints. {cid} is a TaskCID or a ResultCID.
//
//	GET  /v1/cache             CacheListing
//	GET  /v1/cache/{cid}       CacheItem: the entry, its manifest and outputs
//	GET  /v1/cache/{cid}/car   the result as a CARv1 (application/vnd.ipld.car)
//	POST /v1/cache/{cid}/pin   PinResult: keep it from eviction
//	POST /v1/cache/{cid}/unpin PinResult: make it evictable again
//	POST /v1/cache/gc          GCResult: evict to the budget, drop orphans
//
// An unknown CID answers 404, a malformed one 400. The functions that take a
// *store.Store are the same operations for a program that has opened a
// store itself (the CLI, when no daemon runs).

// CacheEntry is one stored result.
type CacheEntry struct {
	TaskCID   string `json:"task_cid"`
	ResultCID string `json:"result_cid"`
	Bytes     int64  `json:"bytes"`
	Pinned    bool   `json:"pinned"`
	// Verified: a re-run on another host agreed with it (docs/trust.md).
	Verified   bool      `json:"verified"`
	LastAccess time.Time `json:"last_access"`
	Created    time.Time `json:"created"`
	Prompt     string    `json:"prompt,omitempty"`
	Host       string    `json:"host,omitempty"`
}

// CacheListing is GET /v1/cache: every stored result, most recently used
// first, and the store's counters.
type CacheListing struct {
	Entries     []CacheEntry `json:"entries"`
	Bytes       int64        `json:"bytes"`
	BudgetBytes int64        `json:"budget_bytes"`
	Hits        uint64       `json:"hits"`
	Misses      uint64       `json:"misses"`
}

// CacheItem is GET /v1/cache/{cid}: one stored result and its manifest.
type CacheItem struct {
	CacheEntry
	Kernel   string        `json:"kernel"`
	Task     protocol.Task `json:"task"`
	Outputs  []CacheOutput `json:"outputs"`
	Manifest []byte        `json:"manifest"` // the signed DAG-CBOR manifest, base64
}

// CacheOutput is one output file of a stored result.
type CacheOutput struct {
	CID       string `json:"cid"`
	MediaType string `json:"media_type"`
	Bytes     uint64 `json:"bytes"`
}

// PinResult answers pin and unpin.
type PinResult struct {
	TaskCID   string `json:"task_cid"`
	ResultCID string `json:"result_cid"`
	Pinned    bool   `json:"pinned"`
}

// GCResult answers POST /v1/cache/gc.
type GCResult struct {
	Removed    int   `json:"removed"`
	FreedBytes int64 `json:"freed_bytes"`
	Entries    int   `json:"entries"`
	Bytes      int64 `json:"bytes"`
}

// CARMediaType is the media type of GET /v1/cache/{cid}/car.
const CARMediaType = "application/vnd.ipld.car; version=1"

// ListCache describes every result in s.
func ListCache(ctx context.Context, s *store.Store) (*CacheListing, error) {
	es, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	st := s.Stats()
	l := &CacheListing{Entries: make([]CacheEntry, 0, len(es)), Bytes: st.Bytes, BudgetBytes: st.Budget, Hits: st.Hits, Misses: st.Misses}
	for _, e := range es {
		l.Entries = append(l.Entries, cacheEntry(e))
	}
	return l, nil
}

func cacheEntry(e store.Entry) CacheEntry {
	return CacheEntry{TaskCID: e.TaskCID.String(), ResultCID: e.ResultCID.String(), Bytes: e.Bytes, Pinned: e.Pinned, Verified: e.Verified,
		LastAccess: e.LastAccess.UTC(), Created: e.Created.UTC(), Prompt: e.Prompt, Host: e.Host}
}

// findEntry returns the entry c names, as a TaskCID or a ResultCID. It goes
// through List, which reads every manifest: fine for a person's command,
// and it keeps these lookups out of the store's hit and miss counts.
func findEntry(ctx context.Context, s *store.Store, c cid.Cid) (store.Entry, error) {
	es, err := s.List(ctx)
	if err != nil {
		return store.Entry{}, err
	}
	i := slices.IndexFunc(es, func(e store.Entry) bool { return e.TaskCID.Equals(c) || e.ResultCID.Equals(c) })
	if i < 0 {
		return store.Entry{}, fmt.Errorf("%s: %w", c, store.ErrNotFound)
	}
	return es[i], nil
}

// GetCacheItem describes the result c names, its manifest verified against
// its ResultCID.
func GetCacheItem(ctx context.Context, s *store.Store, c cid.Cid) (*CacheItem, error) {
	e, err := findEntry(ctx, s, c)
	if err != nil {
		return nil, err
	}
	mb, err := s.GetManifest(ctx, e.ResultCID)
	if err != nil {
		return nil, err
	}
	var m protocol.Manifest
	if err := protocol.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("decoding stored manifest %s: %w", e.ResultCID, err)
	}
	it := &CacheItem{CacheEntry: cacheEntry(e), Kernel: m.Kernel, Task: m.Task, Manifest: mb}
	for _, o := range m.Outputs {
		it.Outputs = append(it.Outputs, CacheOutput{CID: o.CID.String(), MediaType: o.MediaType, Bytes: o.Size})
	}
	return it, nil
}

// SetPinned pins or unpins the result c names.
func SetPinned(ctx context.Context, s *store.Store, c cid.Cid, pinned bool) (*PinResult, error) {
	set := s.Unpin
	if pinned {
		set = s.Pin
	}
	if err := set(ctx, c); err != nil {
		return nil, err
	}
	e, err := findEntry(ctx, s, c)
	if err != nil {
		return nil, err
	}
	return &PinResult{TaskCID: e.TaskCID.String(), ResultCID: e.ResultCID.String(), Pinned: e.Pinned}, nil
}

// GCCache runs the store's garbage collection.
func GCCache(ctx context.Context, s *store.Store) (*GCResult, error) {
	removed, freed, err := s.GC(ctx)
	if err != nil {
		return nil, err
	}
	st := s.Stats()
	return &GCResult{Removed: removed, FreedBytes: freed, Entries: st.Entries, Bytes: st.Bytes}, nil
}

// registerCache adds the cache endpoints to mux.
func registerCache(mux *http.ServeMux, s *Server) {
	mux.HandleFunc("GET /v1/cache", s.cacheList)
	mux.HandleFunc("GET /v1/cache/{cid}", s.cacheItem)
	mux.HandleFunc("GET /v1/cache/{cid}/car", s.cacheCAR)
	mux.HandleFunc("POST /v1/cache/{cid}/pin", func(w http.ResponseWriter, r *http.Request) { s.cachePin(w, r, true) })
	mux.HandleFunc("POST /v1/cache/{cid}/unpin", func(w http.ResponseWriter, r *http.Request) { s.cachePin(w, r, false) })
	mux.HandleFunc("POST /v1/cache/gc", s.cacheGC)
}

func (s *Server) cacheList(w http.ResponseWriter, r *http.Request) {
	l, err := ListCache(r.Context(), s.n.Store())
	if err != nil {
		writeCacheError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Server) cacheItem(w http.ResponseWriter, r *http.Request) {
	c, ok := pathCID(w, r)
	if !ok {
		return
	}
	it, err := GetCacheItem(r.Context(), s.n.Store(), c)
	if err != nil {
		writeCacheError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, it)
}

func (s *Server) cachePin(w http.ResponseWriter, r *http.Request, pinned bool) {
	c, ok := pathCID(w, r)
	if !ok {
		return
	}
	res, err := SetPinned(r.Context(), s.n.Store(), c, pinned)
	if err != nil {
		writeCacheError(w, err)
		return
	}
	if pinned {
		// A pinned result is kept to be served: the node provides it on
		// the DHT from now on (node.Announce). Unpinning does not withdraw
		// it: the record lapses if the result is evicted.
		if err := s.n.Announce(r.Context(), c); err != nil {
			writeCacheError(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) cacheGC(w http.ResponseWriter, r *http.Request) {
	res, err := GCCache(r.Context(), s.n.Store())
	if err != nil {
		writeCacheError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// cacheCAR streams the export. Headers go out with the first bytes, so a
// result that is missing or corrupt still gets a JSON error; a failure
// midway aborts the response, so the client sees a broken transfer rather
// than a CAR that looks complete.
func (s *Server) cacheCAR(w http.ResponseWriter, r *http.Request) {
	c, ok := pathCID(w, r)
	if !ok {
		return
	}
	lw := &lazyWriter{w: w, start: func() {
		w.Header().Set("Content-Type", CARMediaType)
		w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", c.String()+".car"))
		w.WriteHeader(http.StatusOK)
	}}
	err := s.n.Store().ExportCAR(r.Context(), c, lw)
	switch {
	case err == nil:
	case !lw.started:
		writeCacheError(w, err)
	default:
		s.log.Warn("CAR export failed midway", "cid", c, "err", err)
		panic(http.ErrAbortHandler)
	}
}

type lazyWriter struct {
	w       io.Writer
	start   func()
	started bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		l.start()
	}
	return l.w.Write(p)
}

func pathCID(w http.ResponseWriter, r *http.Request) (cid.Cid, bool) {
	c, err := cid.Decode(r.PathValue("cid"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Message: fmt.Sprintf("%q is not a CID: %v", r.PathValue("cid"), err), Code: protocol.CodeBadRequest})
		return cid.Undef, false
	}
	return c, true
}

func writeCacheError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeJSON(w, http.StatusNotFound, Error{Message: err.Error(), Code: protocol.CodeNotFound})
	case errors.Is(err, protocol.ErrBadCID):
		// The store dropped the corrupt result on this read.
		writeJSON(w, http.StatusNotFound, Error{Message: err.Error() + " (corrupt on disk, now dropped)", Code: protocol.CodeNotFound})
	default:
		writeJSON(w, http.StatusInternalServerError, Error{Message: err.Error(), Code: protocol.CodeInternal})
	}
}

// CacheList lists the daemon's stored results.
func (c *Client) CacheList(ctx context.Context) (*CacheListing, error) {
	var l CacheListing
	if err := c.cacheDo(ctx, http.MethodGet, "/v1/cache", &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// CacheGet describes one stored result.
func (c *Client) CacheGet(ctx context.Context, id cid.Cid) (*CacheItem, error) {
	var it CacheItem
	if err := c.cacheDo(ctx, http.MethodGet, "/v1/cache/"+url.PathEscape(id.String()), &it); err != nil {
		return nil, err
	}
	return &it, nil
}

// CachePin keeps a result from eviction.
func (c *Client) CachePin(ctx context.Context, id cid.Cid) (*PinResult, error) {
	var p PinResult
	err := c.cacheDo(ctx, http.MethodPost, "/v1/cache/"+url.PathEscape(id.String())+"/pin", &p)
	return &p, err
}

// CacheUnpin makes a result evictable again.
func (c *Client) CacheUnpin(ctx context.Context, id cid.Cid) (*PinResult, error) {
	var p PinResult
	err := c.cacheDo(ctx, http.MethodPost, "/v1/cache/"+url.PathEscape(id.String())+"/unpin", &p)
	return &p, err
}

// CacheGC runs the daemon's store garbage collection.
func (c *Client) CacheGC(ctx context.Context) (*GCResult, error) {
	var g GCResult
	err := c.cacheDo(ctx, http.MethodPost, "/v1/cache/gc", &g)
	return &g, err
}

// CacheExportCAR writes the result id names to w as a CARv1.
func (c *Client) CacheExportCAR(ctx context.Context, id cid.Cid, w io.Writer) error {
	resp, err := c.cacheRequest(ctx, http.MethodGet, "/v1/cache/"+url.PathEscape(id.String())+"/car")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("reading CAR from the daemon: %w", err)
	}
	return nil
}

func (c *Client) cacheDo(ctx context.Context, method, path string, v any) error {
	resp, err := c.cacheRequest(ctx, method, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v)
}

// cacheRequest sends a bodiless request and turns an error answer into an
// error; a 404 wraps store.ErrNotFound.
func (c *Client) cacheRequest(ctx context.Context, method, path string) (*http.Response, error) {
	hr, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoDaemon, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	err = decodeError(resp)
	if resp.StatusCode == http.StatusNotFound {
		err = fmt.Errorf("%w (%v)", store.ErrNotFound, err)
	}
	return nil, err
}
