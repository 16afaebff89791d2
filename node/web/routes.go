package web

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/store"
	"github.com/ipfs/go-cid"
)

//go:embed static
var static embed.FS

// Stream bounds. A snapshot a second keeps ages and temperatures moving;
// changes (a step, a result) are sent as they come but at most every
// minGap, so a host streaming steps cannot flood a page. A client that
// cannot take a snapshot within writeTimeout is dropped: its handler
// stops, and the node never waited on it anyway (the observer only
// signals).
const (
	tick         = time.Second
	minGap       = 250 * time.Millisecond
	writeTimeout = 5 * time.Second
	// maxStreams bounds the open streams: each one reads the node's
	// status up to four times a second.
	maxStreams = 16
)

// csp keeps the page to its own origin: no script, style, font or image
// from anywhere else, and no framing (clickjacking the pause button).
const csp = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// Routes returns the dashboard's routes for the local API:
//
//	GET /                 the page
//	GET /static/...       its script and style
//	GET /v1/events        Server-Sent Events: a Snapshot a second and on change
//	GET /v1/blocks/{cid}  a raw output block from the store
func (d *Dashboard) Routes(src Source) []localapi.Option {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	return []localapi.Option{
		localapi.WithRoute("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Security-Policy", csp)
			w.Header().Set("Cache-Control", "no-cache")
			http.ServeFileFS(w, r, sub, "index.html")
		})),
		localapi.WithRoute("GET /static/", http.StripPrefix("/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "no-cache")
			files.ServeHTTP(w, r)
		}))),
		localapi.WithRoute("GET /v1/events", d.events(src)),
		localapi.WithRoute("GET /v1/blocks/{cid}", blocks(src)),
	}
}

// events streams snapshots until the client leaves or falls behind.
func (d *Dashboard) events(src Source) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		wake, unsubscribe, ok := d.subscribe()
		if !ok {
			http.Error(w, fmt.Sprintf("too many dashboard streams open (%d): close a tab", maxStreams), http.StatusServiceUnavailable)
			return
		}
		defer unsubscribe()
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		// retry: how long a browser waits before it reconnects.
		if _, err := fmt.Fprint(w, "retry: 2000\n\n"); err != nil {
			return
		}
		ctx := r.Context()
		t := time.NewTicker(tick)
		defer t.Stop()
		var last time.Time
		for {
			if gap := minGap - time.Since(last); gap > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(gap):
				}
			}
			b, err := json.Marshal(d.snapshot(ctx, src))
			if err != nil {
				return
			}
			_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
			if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			last = time.Now()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-wake:
			}
		}
	}
}

// imageTypes are the media types a block is served as. Anything else goes
// out as an attachment: a block is whatever some host made, and served as
// HTML or SVG from the API's origin it could drive the API.
var imageTypes = map[string]bool{"image/png": true, "image/jpeg": true, "image/gif": true, "image/webp": true}

// blocks serves a raw output block by its CID. The type is sniffed from
// the bytes rather than taken from the manifest, for the same reason.
func blocks(src Source) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := cid.Decode(r.PathValue("cid"))
		if err != nil {
			http.Error(w, "bad CID: "+err.Error(), http.StatusBadRequest)
			return
		}
		if c.Prefix().Codec != cid.Raw {
			http.Error(w, "not a raw block's CID: output blocks use the raw codec (a bafk… CID)", http.StatusBadRequest)
			return
		}
		b, err := src.Block(r.Context(), c)
		switch {
		case errors.Is(err, store.ErrNotFound):
			http.Error(w, "no such block in this node's store", http.StatusNotFound)
			return
		case err != nil:
			http.Error(w, "reading block: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		mt := http.DetectContentType(b)
		if !imageTypes[mt] {
			mt = "application/octet-stream"
			h.Set("Content-Disposition", "attachment")
		}
		h.Set("Content-Type", mt)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
		// Content-addressed: the bytes under this URL never change.
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
		h.Set("ETag", `"`+c.String()+`"`)
		if r.Header.Get("If-None-Match") == `"`+c.String()+`"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = w.Write(b)
	}
}
