package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/reach"
)

func swarmKeyFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "swarm.key")
	if err := reach.WriteSwarmKey(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPrivateSwarm: over TCP on loopback, a client with the host's swarm
// key connects and has a task served; one without a key and one with
// another key are refused at the bootstrap dial, with an error that names
// the swarm key as the cause.
func TestPrivateSwarm(t *testing.T) {
	key, other := swarmKeyFile(t), swarmKeyFile(t)
	h := nodetest.Host(t, func(c *node.Config) {
		c.SwarmKeyFile = key
		// QUIC beside TCP: dropped, since QUIC cannot carry the key.
		c.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	})
	for _, a := range h.Addrs() {
		if strings.Contains(a, "quic") {
			t.Fatalf("a host in a private swarm listens on QUIC: %v", h.Addrs())
		}
	}
	if st := h.Status(context.Background()); !st.Reach.PrivateSwarm {
		t.Errorf("status does not say private swarm: %+v", st.Reach)
	}
	client := func(keyFile string) node.Config {
		cfg := nodetest.Config()
		cfg.ListenAddrs = nil
		cfg.DHTServer = false
		cfg.Bootstrap = h.Addrs()
		cfg.SwarmKeyFile = keyFile
		cfg.Logger = testLogger(t)
		return cfg
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := node.New(ctx, client(key))
	if err != nil {
		t.Fatalf("client with the swarm key: %v", err)
	}
	defer c.Close()
	res, err := c.Submit(ctx, smallTask, node.SubmitOptions{})
	if err != nil {
		t.Fatalf("task in the private swarm: %v", err)
	}
	if res.Host != h.ID() || h.KernelRuns() != 1 {
		t.Fatalf("served by %s (%d runs), want the keyed host %s", res.Host, h.KernelRuns(), h.ID())
	}

	for _, tc := range []struct{ name, key, want string }{
		{"no key", "", "the peer is in a private swarm or uses another swarm key"},
		{"another key", other, "the peer is not in this private swarm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := node.New(ctx, client(tc.key))
			if err == nil {
				n.Close()
				t.Fatal("connected to a private swarm without its key")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// TestPrivateSwarmQUICOnlyIsRefused: a swarm key with nothing but QUIC to
// listen on is a one-line error that says to listen on TCP.
func TestPrivateSwarmQUICOnlyIsRefused(t *testing.T) {
	cfg := nodetest.Config()
	cfg.SwarmKeyFile = swarmKeyFile(t)
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/udp/0/quic-v1"}
	n, err := node.New(context.Background(), cfg)
	if err == nil {
		n.Close()
		t.Fatal("started on QUIC with a swarm key")
	}
	if msg := err.Error(); !strings.Contains(msg, "QUIC cannot carry a swarm key") || !strings.Contains(msg, "listen on TCP") || strings.Contains(msg, "\n") {
		t.Fatalf("error %q: want one line saying to listen on TCP", msg)
	}
}

// TestSwarmKeyInDataDirIsPickedUp: DATA/swarm.key needs no flag.
func TestSwarmKeyInDataDirIsPickedUp(t *testing.T) {
	dir := t.TempDir()
	if err := reach.WriteSwarmKey(filepath.Join(dir, reach.SwarmKeyFile)); err != nil {
		t.Fatal(err)
	}
	n := nodetest.Start(t, func(c *node.Config) { c.DataDir = dir })
	if !n.Status(context.Background()).Reach.PrivateSwarm {
		t.Fatal("DATA/swarm.key was not used")
	}
	// And a damaged key stops the node with the file's name in the error.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, reach.SwarmKeyFile), []byte("/key/swarm/psk/1.0.0/\n/base16/\n00\n"), 0o600)
	cfg := nodetest.Config()
	cfg.DataDir = bad
	if n, err := node.New(context.Background(), cfg); err == nil {
		n.Close()
		t.Fatal("started with a damaged swarm key")
	} else if !strings.Contains(err.Error(), filepath.Join(bad, reach.SwarmKeyFile)) {
		t.Fatalf("error %q does not name the key file", err)
	}
}
