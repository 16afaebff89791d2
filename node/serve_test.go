package node_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/swarm"
	"github.com/gpunet/gpunet/protocol"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lp2pproto "github.com/libp2p/go-libp2p/core/protocol"
)

// TestHostRefusesMalformedRequests plays a hostile peer on the raw task
// protocol: every bad request gets a bad_request error event, the host
// runs nothing, and it still serves a good task afterwards.
func TestHostRefusesMalformedRequests(t *testing.T) {
	sw := startSwarm(t, "rtx4090")
	h := sw.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := raw.Connect(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	huge := binary.AppendUvarint(nil, 1<<60)
	goodTask := mustNormalize(t, smallTask)
	okReq, err := protocol.Marshal(protocol.TaskRequest{Task: goodTask})
	if err != nil {
		t.Fatal(err)
	}
	unnormal := goodTask
	unnormal.Prompt = "  a quiet   harbour at dusk "
	unReq, _ := protocol.Marshal(protocol.TaskRequest{Task: unnormal})
	cases := map[string][]byte{
		"huge length prefix":     huge,
		"over the request cap":   frame(make([]byte, protocol.MaxRequestBytes+1)),
		"not CBOR":               frame([]byte("hello, host")),
		"truncated frame":        append(binary.AppendUvarint(nil, 100), 1, 2, 3),
		"task not in normalform": frame(unReq),
		"trailing bytes":         frame(append(append([]byte(nil), okReq...), 0)),
	}
	for name, payload := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := raw.NewStream(ctx, h.ID(), lp2pproto.ID(protocol.TaskProtocol))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_ = s.SetDeadline(time.Now().Add(15 * time.Second))
			if _, err := s.Write(payload); err != nil {
				t.Fatal(err)
			}
			_ = s.CloseWrite()
			body, err := protocol.ReadFrame(bufio.NewReader(s), protocol.MaxEventBytes)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			e, err := protocol.DecodeEvent(body)
			if err != nil {
				t.Fatal(err)
			}
			if e.Type != protocol.EventError || e.Code != protocol.CodeBadRequest {
				t.Errorf("got %s/%s (%s), want error/bad_request", e.Type, e.Code, e.Message)
			}
		})
	}
	if runs := h.KernelRuns(); runs != 0 {
		t.Errorf("kernel ran %d times for bad requests", runs)
	}
	c := addClient(t, sw)
	if _, err := c.SubmitTo(ctx, h.ID(), smallTask, node.SubmitOptions{}); err != nil {
		t.Fatalf("host no longer serves after bad requests: %v", err)
	}
}

func frame(b []byte) []byte { return append(binary.AppendUvarint(nil, uint64(len(b))), b...) }

// TestSilentHostIsAbandoned: a peer that takes the task stream and then
// says nothing is given up after EventIdleTimeout, not TaskTimeout.
func TestSilentHostIsAbandoned(t *testing.T) {
	sw := startSwarmWith(t, swarm.Options{Profiles: []string{"rtx4090"},
		Tune: func(c *node.Config) { c.EventIdleTimeout = 300 * time.Millisecond }})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	silent, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	release := make(chan struct{})
	defer close(release)
	silent.SetStreamHandler(lp2pproto.ID(protocol.TaskProtocol), func(s network.Stream) {
		<-release // read nothing, answer nothing
		s.Reset()
	})
	c := addClient(t, sw)
	c.Host().Peerstore().AddAddrs(silent.ID(), silent.Addrs(), time.Minute)
	start := time.Now()
	_, err = c.SubmitTo(ctx, silent.ID(), smallTask, node.SubmitOptions{})
	if err == nil {
		t.Fatal("a silent host produced a result")
	}
	if ctx.Err() != nil {
		t.Fatalf("gave up only when the test's own deadline passed (%s): %v", time.Since(start), err)
	}
}
