package node_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/gpunet/gpunet/node"
)

// freePort is a port nothing listens on just now, on 127.0.0.1: listen on
// port 0 and close.
func freePort(t *testing.T, network string) int {
	t.Helper()
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	default:
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
}

// A second node on a listen port another holds fails with an error that
// says so, on TCP (where go-libp2p would share the port through
// SO_REUSEPORT) and on QUIC.
func TestSecondNodeOnSamePortIsRefused(t *testing.T) {
	for _, tc := range []struct{ network, format string }{
		{"tcp", "/ip4/127.0.0.1/tcp/%d"},
		{"udp", "/ip4/127.0.0.1/udp/%d/quic-v1"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			port := freePort(t, tc.network)
			listen := fmt.Sprintf(tc.format, port)
			startDaemon(t, daemonConfig(t, "", listen, nil))
			n, err := node.New(context.Background(), daemonConfig(t, "", listen, nil))
			if err == nil {
				n.Close()
				t.Fatalf("a second node started on %s", listen)
			}
			if want := fmt.Sprintf("listen port %d in use", port); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		})
	}
}

// A second node on a data directory another holds fails, naming the
// holder's pid; once the first closes, the directory is free again.
func TestDataDirIsLocked(t *testing.T) {
	dir := t.TempDir()
	first, err := node.New(context.Background(), daemonConfig(t, dir, loopback0, nil))
	if err != nil {
		t.Fatal(err)
	}
	second, err := node.New(context.Background(), daemonConfig(t, dir, loopback0, nil))
	if err == nil {
		second.Close()
		first.Close()
		t.Fatal("a second node opened a data directory in use")
	}
	if !errors.Is(err, node.ErrDataDirInUse) {
		t.Errorf("error %v is not ErrDataDirInUse", err)
	}
	if want := fmt.Sprintf("in use by another gpunet process (pid %d)", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := node.New(context.Background(), daemonConfig(t, dir, loopback0, nil))
	if err != nil {
		t.Fatalf("data directory still locked after Close: %v", err)
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
}
