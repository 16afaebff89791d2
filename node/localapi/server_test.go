package localapi_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
)

func startAPI(t *testing.T) (*localapi.Server, *node.Node) {
	t.Helper()
	cfg := node.DefaultConfig()
	cfg.DataDir = ""
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.MDNS = false
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	s, err := localapi.Listen(n, "127.0.0.1:0", cfg.Logger)
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
		"not JSON":      "{prompt:",
		"unknown field": `{"prompt":"x","colour":"red"}`,
		"empty prompt":  `{"prompt":"   "}`,
		"bad size":      `{"prompt":"x","width":65}`,
		"oversized":     `{"prompt":"` + strings.Repeat("a", 70<<10) + `"}`,
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
