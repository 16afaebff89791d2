package localapi_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/protocol"
)

func startAPI(t *testing.T) (*localapi.Server, *node.Node) {
	t.Helper()
	return startAPIWith(t, func(*node.Config) {})
}

// startHostAPI serves the API of a lone host with the sketch kernel.
func startHostAPI(t *testing.T) (*localapi.Server, *node.Node) {
	t.Helper()
	return startAPIWith(t, func(c *node.Config) { c.Kernel = kernel.Sketch{} })
}

func startAPIWith(t *testing.T, tune func(*node.Config)) (*localapi.Server, *node.Node) {
	t.Helper()
	n := nodetest.Start(t, tune)
	s, err := localapi.Listen(n, "127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, n
}

func TestListenRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", "192.0.2.1:7447", "example.com:7447"} {
		if s, err := localapi.Listen(nil, addr, slog.New(slog.DiscardHandler)); err == nil {
			s.Close()
			t.Errorf("Listen(%q) succeeded; the API must stay on loopback", addr)
		}
	}
}

func TestStatusAndPeers(t *testing.T) {
	s, n := startAPI(t)
	c := localapi.NewClient(s.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerID != n.ID().String() || len(st.Addrs) == 0 || st.Host {
		t.Errorf("status %+v: want this daemon's id and addresses, not a host", st)
	}
	if _, err := c.Peers(ctx); err != nil {
		t.Errorf("peers: %v", err)
	}
	if _, err := c.SetPaused(ctx, true); err == nil || !strings.Contains(err.Error(), "not a host") {
		t.Errorf("pausing a daemon without a kernel: %v, want a clear refusal", err)
	}
}

func TestRejectsForeignHostHeader(t *testing.T) {
	s, _ := startAPI(t)
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.Addr()+"/v1/status", nil)
	req.Host = "evil.example:7447" // what a DNS-rebinding page would send
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign Host header: status %d, want 403", resp.StatusCode)
	}
}

func TestSubmitRejectsBadRequestsBeforeWork(t *testing.T) {
	s, n := startAPI(t)
	cases := map[string]string{
		"not JSON":           "{prompt:",
		"unknown field":      `{"prompt":"x","colour":"red"}`,
		"empty prompt":       `{"prompt":"   "}`,
		"bad size":           `{"prompt":"x","width":65}`,
		"oversized":          `{"prompt":"` + strings.Repeat("a", 70<<10) + `"}`,
		"bad submitter":      `{"prompt":"x","submitter":"a\u0000b"}`,
		"long submitter":     `{"prompt":"x","submitter":"` + strings.Repeat("s", 65) + `"}`,
		"timeout over a day": `{"prompt":"x","timeout_ms":86400001}`,
	}
	for name, body := range cases {
		resp, err := http.Post("http://"+s.Addr()+"/v1/tasks", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d (%s), want 400", name, resp.StatusCode, msg)
		}
	}
	if st := n.Status(context.Background()); st.Submitted != 0 {
		t.Errorf("%d submissions reached the node", st.Submitted)
	}
}

const taskJSON = `{"prompt":"a quiet harbour at dusk","width":64,"height":64,"steps":2}`

// post sends a POST with the given headers and returns the status and body.
func post(t *testing.T, url, body string, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A web page on another site can send a POST without a CORS preflight
// (text/plain body); the API must refuse it before it acts, on every route.
func TestRefusesCrossOriginRequests(t *testing.T) {
	s, n := startHostAPI(t)
	base := "http://" + s.Addr()
	evil := map[string]string{"Origin": "http://evil.example.com", "Content-Type": "text/plain"}
	for _, tc := range []struct {
		name, path, body string
		headers          map[string]string
		want             int
	}{
		{"pause from another origin", "/v1/host/pause", "", evil, http.StatusForbidden},
		{"task from another origin", "/v1/tasks", taskJSON, evil, http.StatusForbidden},
		{"task from another origin, JSON", "/v1/tasks", taskJSON, map[string]string{"Origin": "http://evil.example.com", "Content-Type": "application/json"}, http.StatusForbidden},
		{"pause from a sandboxed page", "/v1/host/pause", "", map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"pause from another port of localhost", "/v1/host/pause", "", map[string]string{"Origin": "http://127.0.0.1:1"}, http.StatusForbidden},
		{"pause, cross-site without Origin", "/v1/host/pause", "", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"gc, same-site without Origin", "/v1/cache/gc", "", map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
		{"task as text/plain", "/v1/tasks", taskJSON, map[string]string{"Content-Type": "text/plain"}, http.StatusUnsupportedMediaType},
		{"task as a form", "/v1/tasks", taskJSON, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType},
		{"task without a type", "/v1/tasks", taskJSON, nil, http.StatusUnsupportedMediaType},
	} {
		code, body := post(t, base+tc.path, tc.body, tc.headers)
		if code != tc.want {
			t.Errorf("%s: status %d (%.200s), want %d", tc.name, code, body, tc.want)
		} else if !strings.Contains(body, `"message"`) {
			t.Errorf("%s: body %q is not a JSON error", tc.name, body)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/status", nil)
	req.Header.Set("Origin", "http://evil.example.com")
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET from another origin: status %d, want 403", resp.StatusCode)
	}
	st := n.Status(context.Background())
	if st.Paused {
		t.Error("a cross-origin request paused the host")
	}
	if st.Submitted != 0 || n.KernelRuns() != 0 {
		t.Errorf("%d submissions, %d kernel runs after refused requests; want none", st.Submitted, n.KernelRuns())
	}
}

// A page the node serves itself (same origin) and programs that send no
// Origin (curl, the Go client) use the API as before.
func TestSameOriginAndProgramsAreServed(t *testing.T) {
	s, n := startHostAPI(t)
	base := "http://" + s.Addr()
	same := map[string]string{"Origin": base, "Sec-Fetch-Site": "same-origin"}
	if code, body := post(t, base+"/v1/host/pause", "", same); code != http.StatusOK || !n.Status(context.Background()).Paused {
		t.Fatalf("same-origin pause: status %d (%.200s), paused %v", code, body, n.Status(context.Background()).Paused)
	}
	if code, body := post(t, base+"/v1/host/resume", "", same); code != http.StatusOK || n.Status(context.Background()).Paused {
		t.Fatalf("same-origin resume: status %d (%.200s)", code, body)
	}
	same["Content-Type"] = "application/json; charset=utf-8"
	code, body := post(t, base+"/v1/tasks", taskJSON, same)
	if code != http.StatusOK || !strings.Contains(body, `"result"`) {
		t.Fatalf("same-origin task: status %d, body %.300s", code, body)
	}

	c := localapi.NewClient(s.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := c.SetPaused(ctx, true); err != nil || !st.Paused {
		t.Fatalf("client pause: %+v, %v", st.Paused, err)
	}
	if st, err := c.SetPaused(ctx, false); err != nil || st.Paused {
		t.Fatalf("client resume: %+v, %v", st.Paused, err)
	}
	res, err := c.Submit(ctx, localapi.SubmitRequest{Task: protocol.Task{Prompt: "a lighthouse", Width: 64, Height: 64, Steps: 2}}, nil)
	if err != nil {
		t.Fatalf("client submit: %v", err)
	}
	if len(res.Outputs) == 0 {
		t.Errorf("client submit: no outputs in %+v", res)
	}
}
