package web

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// fakeSource serves a fixed status, view and blocks.
type fakeSource struct {
	status node.Status
	view   scheduler.View
	blocks map[cid.Cid][]byte
}

func (f *fakeSource) Status(context.Context) node.Status { return f.status }
func (f *fakeSource) View() scheduler.View               { return f.view }
func (f *fakeSource) Block(_ context.Context, c cid.Cid) ([]byte, error) {
	if b, ok := f.blocks[c]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("block %s: %w", c, store.ErrNotFound)
}

func rawCID(t *testing.T, b []byte) cid.Cid {
	t.Helper()
	c, err := cid.Prefix{Version: 1, Codec: cid.Raw, MhType: mh.SHA2_256, MhLength: -1}.Sum(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serve puts the dashboard's routes on a mux, as the local API does.
func serve(d *Dashboard, src Source) *httptest.Server {
	mux := http.NewServeMux()
	for _, o := range d.Routes(src) {
		o(mux)
	}
	return httptest.NewServer(mux)
}

func TestBlocks(t *testing.T) {
	var pngBuf bytes.Buffer
	if err := png.Encode(&pngBuf, image.NewRGBA(image.Rect(0, 0, 2, 2))); err != nil {
		t.Fatal(err)
	}
	html := []byte("<html><script>fetch('/v1/host/pause',{method:'POST'})</script></html>")
	pngCID, htmlCID := rawCID(t, pngBuf.Bytes()), rawCID(t, html)
	absent := rawCID(t, []byte("not stored"))
	dagCID, err := cid.Prefix{Version: 1, Codec: cid.DagCBOR, MhType: mh.SHA2_256, MhLength: -1}.Sum([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(New(), &fakeSource{blocks: map[cid.Cid][]byte{pngCID: pngBuf.Bytes(), htmlCID: html}})
	defer srv.Close()

	for _, tc := range []struct {
		name, cid   string
		status      int
		contentType string
	}{
		{"an image", pngCID.String(), http.StatusOK, "image/png"},
		{"HTML a host made goes out as an attachment", htmlCID.String(), http.StatusOK, "application/octet-stream"},
		{"absent", absent.String(), http.StatusNotFound, ""},
		{"not a CID", "bafy-nonsense", http.StatusBadRequest, ""},
		{"not a raw block", dagCID.String(), http.StatusBadRequest, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Get(srv.URL + "/v1/blocks/" + tc.cid)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status != http.StatusOK {
				return
			}
			if got := resp.Header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "immutable") {
				t.Errorf("Cache-Control %q: a content-addressed block is immutable", cc)
			}
		})
	}
}

// TestEventsStream reads the stream: a snapshot at once, another after a
// change, with the submission in flight and then among the results.
func TestEventsStream(t *testing.T) {
	d := New()
	src := &fakeSource{
		status: node.Status{PeerID: "12D3KooWself", Host: true, Models: []string{protocol.DefaultModel}, Running: 1, Slots: 2, QueueMax: 8},
		view: scheduler.View{{ID: "12D3KooWother", Slots: 4, Busy: 1, Accepting: true, Models: []string{protocol.DefaultModel},
			TempC: 60, LimitC: 83, Updated: time.Now().Add(-time.Second), Reach: protocol.ReachPrivate}},
	}
	src.status.Reach.Reachability = "public"
	srv := serve(d, src)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(nil, 1<<20)
	next := func() Snapshot {
		t.Helper()
		for lines.Scan() {
			if data, ok := strings.CutPrefix(lines.Text(), "data: "); ok {
				var s Snapshot
				if err := json.Unmarshal([]byte(data), &s); err != nil {
					t.Fatal(err)
				}
				return s
			}
		}
		t.Fatalf("stream ended: %v", lines.Err())
		return Snapshot{}
	}

	s := next()
	if len(s.Swarm) != 2 || !s.Swarm[0].Self || s.Swarm[0].Slots != 2 || s.Swarm[1].ID != "12D3KooWother" {
		t.Fatalf("swarm %+v: want this host first with its 2 slots, then its peer", s.Swarm)
	}
	if s.Swarm[0].Reach != "public" || s.Swarm[1].Reach != protocol.ReachPrivate {
		t.Errorf("reach %q and %q: want this node's public, the peer's private from its beacon", s.Swarm[0].Reach, s.Swarm[1].Reach)
	}
	if s.Totals.Hosts != 2 || s.Totals.Slots != 6 || s.Totals.FreeSlots != 1+3 {
		t.Errorf("totals %+v: want 2 hosts, 6 slots, 4 free", s.Totals)
	}

	task := protocol.Task{Prompt: "a red kite"}
	tc, _ := cid.Prefix{Version: 1, Codec: cid.DagCBOR, MhType: mh.SHA2_256, MhLength: -1}.Sum([]byte("task"))
	ev := node.SubmitEvent{TaskCID: tc, Task: task, Started: time.Now(),
		Progress: node.Progress{Stage: "waiting", Event: protocol.Event{Position: 3, EtaMs: 4000}}}
	d.SubmitProgress(ev)
	for s = next(); len(s.Inflight) == 0; s = next() {
	}
	if f := s.Inflight[0]; f.Stage != "waiting" || f.Position != 3 || f.EtaMs != 4000 || f.Prompt != "a red kite" {
		t.Errorf("in flight %+v: want the waiting room's position 3 and its ETA", f)
	}
	ev.Err = context.DeadlineExceeded
	d.SubmitDone(ev)
	for s = next(); len(s.Recent) == 0; s = next() {
	}
	if len(s.Inflight) != 0 || s.Recent[0].Error == "" {
		t.Errorf("after the end: in flight %+v, recent %+v; want it moved to the results, failed", s.Inflight, s.Recent)
	}
}

// TestObserverNeverWaitsOnStreams: streams that read nothing do not hold
// up the node's calls, and the recent results stay bounded.
func TestObserverNeverWaitsOnStreams(t *testing.T) {
	d := New()
	for range maxStreams {
		if _, _, ok := d.subscribe(); !ok {
			t.Fatal("refused a stream under the bound")
		}
	}
	if _, _, ok := d.subscribe(); ok {
		t.Error("accepted a stream over the bound")
	}
	tc, _ := cid.Prefix{Version: 1, Codec: cid.DagCBOR, MhType: mh.SHA2_256, MhLength: -1}.Sum([]byte("task"))
	for i := range 1000 {
		ev := node.SubmitEvent{TaskCID: tc, Started: time.Unix(int64(i), 0), Progress: node.Progress{Stage: "running"}}
		d.SubmitProgress(ev)
		d.SubmitDone(ev)
	}
	if len(d.recent) != maxRecent || len(d.inflight) != 0 {
		t.Errorf("%d recent, %d in flight: want %d and 0", len(d.recent), len(d.inflight), maxRecent)
	}
}
