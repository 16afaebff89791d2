package node_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// daemonConfig is a daemon's config on loopback: a DHT server with data
// directory dir ("" for an ephemeral one), redialling fast so the tests wait
// milliseconds, not the default seconds.
func daemonConfig(t *testing.T, dir, listen string, boot []string) node.Config {
	cfg := node.DefaultConfig()
	cfg.DataDir = dir
	cfg.ListenAddrs = []string{listen}
	cfg.Bootstrap = boot
	cfg.MDNS = false
	cfg.DHTServer = true
	cfg.RedialMin, cfg.RedialMax = 20*time.Millisecond, 200*time.Millisecond
	cfg.Logger = testLogger(t)
	return cfg
}

const loopback0 = "/ip4/127.0.0.1/tcp/0"

// startDaemon starts a node from cfg and closes it when the test ends (a
// second Close, after the test's own, is a no-op).
func startDaemon(t *testing.T, cfg node.Config) *node.Node {
	t.Helper()
	n, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func connected(a *node.Node, b peer.ID) func() bool {
	return func() bool { return a.Host().Network().Connectedness(b) == network.Connected }
}

// A daemon restarted from its data directory with no --bootstrap rejoins
// through the peers it remembered.
func TestRestartedDaemonRejoinsRememberedPeers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startDaemon(t, daemonConfig(t, "", loopback0, nil))
	dir := t.TempDir()
	a := startDaemon(t, daemonConfig(t, dir, loopback0, b.Addrs()))
	// A client of a's is connected too, but a remembers only DHT servers
	// (clients come and go; they are no way back into the swarm).
	ccfg := daemonConfig(t, "", loopback0, a.Addrs())
	ccfg.DHTServer = false
	c := startDaemon(t, ccfg)
	eventually(t, ctx, "a has b in its DHT routing table and c connected", func() bool {
		for _, p := range a.Peers() {
			if p.ID == b.ID().String() && p.DHT {
				return connected(a, c.ID())()
			}
		}
		return false
	})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "peers.json"))
	if err != nil {
		t.Fatalf("peers.json after Close: %v", err)
	}
	if !strings.Contains(string(raw), b.ID().String()) || strings.Contains(string(raw), c.ID().String()) {
		t.Fatalf("peers.json should remember b (%s) and not the client c (%s):\n%s", b.ID(), c.ID(), raw)
	}

	// b keeps running and does not know a's new port: the connection can
	// only come from a's redial.
	a2 := startDaemon(t, daemonConfig(t, dir, loopback0, nil))
	if a2.ID() != a.ID() {
		t.Fatalf("restart changed the identity: %s, was %s", a2.ID(), a.ID())
	}
	eventually(t, ctx, "restarted a reconnects to b without --bootstrap", connected(a2, b.ID()))
}

// A daemon whose bootstrap peer is down at start starts anyway and joins it
// when it comes back on the same address and identity.
func TestDaemonJoinsBootstrapPeerThatComesLater(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dirB := t.TempDir()
	b := startDaemon(t, daemonConfig(t, dirB, loopback0, nil))
	boot, port := b.Addrs(), tcpPort(t, b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	a := startDaemon(t, daemonConfig(t, "", loopback0, boot))
	if len(a.Host().Network().Peers()) != 0 {
		t.Fatalf("a has peers %v with its only bootstrap peer down", a.Host().Network().Peers())
	}
	b2 := startDaemon(t, daemonConfig(t, dirB, "/ip4/127.0.0.1/tcp/"+port, nil))
	if b2.ID() != b.ID() {
		t.Fatalf("b came back as %s, was %s", b2.ID(), b.ID())
	}
	eventually(t, ctx, "a dials b once it is back", connected(a, b2.ID()))
}

// A client (not a DHT server) still fails at once when no bootstrap peer
// answers: it came to do one thing now.
func TestClientFailsWithUnreachableBootstrap(t *testing.T) {
	dir := t.TempDir()
	b := startDaemon(t, daemonConfig(t, dir, loopback0, nil))
	boot := b.Addrs()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := daemonConfig(t, "", loopback0, boot)
	cfg.DHTServer = false
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.New(ctx, cfg)
	if err == nil {
		n.Close()
		t.Fatal("a client started with its only bootstrap peer down; want an error")
	}
	if !strings.Contains(err.Error(), "could not reach any bootstrap peer") {
		t.Errorf("error %q does not say the bootstrap peer is unreachable", err)
	}
}

// A corrupt peers.json is a lost cache, not a failure: the node starts and
// writes a good one on Close.
func TestCorruptPeersFileIsIgnored(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "peers.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(context.Background(), daemonConfig(t, dir, loopback0, nil))
	if err != nil {
		t.Fatalf("a corrupt peers.json stopped the node: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(raw, &f); err != nil || f.Version != 1 {
		t.Errorf("peers.json after Close: %q (%v), want a version 1 file", raw, err)
	}
}

// The join line keeps the addresses another machine can dial, best first,
// and falls back to loopback when there is nothing else.
func TestJoinAddrs(t *testing.T) {
	const id = "/p2p/12D3KooWDpJ7As7BWAwRMfu1VU6WvGRc2qcBKrHE5KkuSUXnXd7D"
	for _, tc := range []struct {
		name  string
		addrs []string
		want  []string
	}{
		// Loopback and link-local go; a public address leads, then
		// private ones (2001:db8::/32 is documentation space, so not
		// public), TCP before QUIC.
		{"daemon on all interfaces",
			[]string{"/ip4/127.0.0.1/udp/4747/quic-v1", "/ip4/127.0.0.1/tcp/4747", "/ip6/::1/tcp/4747",
				"/ip6/fe80::1/tcp/4747", "/ip4/192.168.1.5/udp/4747/quic-v1", "/ip6/2001:db8::5/tcp/4747",
				"/ip4/192.168.1.5/tcp/4747", "/ip4/5.9.0.1/tcp/4747"},
			[]string{"/ip4/5.9.0.1/tcp/4747", "/ip4/192.168.1.5/tcp/4747", "/ip6/2001:db8::5/tcp/4747",
				"/ip4/192.168.1.5/udp/4747/quic-v1"}},
		{"loopback only",
			[]string{"/ip4/127.0.0.1/udp/4747/quic-v1", "/ip4/127.0.0.1/tcp/4747"},
			[]string{"/ip4/127.0.0.1/tcp/4747", "/ip4/127.0.0.1/udp/4747/quic-v1"}},
		{"not listening", nil, []string{}},
	} {
		var in, want []string
		for _, a := range tc.addrs {
			in = append(in, a+id)
		}
		for _, a := range tc.want {
			want = append(want, a+id)
		}
		got := node.JoinAddrs(in)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: JoinAddrs =\n  %v\nwant\n  %v", tc.name, got, want)
		}
		if len(got) > 0 {
			// The join line is one --bootstrap value.
			if _, err := node.ParseAddrInfos(strings.Split(strings.Join(got, ","), ",")); err != nil {
				t.Errorf("%s: the join line does not parse back: %v", tc.name, err)
			}
		}
	}
}

// tcpPort is the TCP port n listens on.
func tcpPort(t *testing.T, n *node.Node) string {
	t.Helper()
	for _, a := range n.Host().Addrs() {
		if p, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			return p
		}
	}
	t.Fatalf("%s listens on no TCP address: %v", n.ID(), n.Host().Addrs())
	return ""
}
