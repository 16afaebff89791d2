// Package nodetest starts nodes for tests: one node on loopback, with its
// own throwaway identity and store, mDNS off and logs discarded, closed
// when the test ends. Tests of the node's rooms (localapi, web, openai,
// gateway) build on it; tests of swarms use node/swarm.
package nodetest

import (
	"bytes"
	"context"
	"log/slog"
	"testing"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
)

// Config is the configuration Start begins from: node.DefaultConfig on
// 127.0.0.1 only, ephemeral, no mDNS, logs discarded.
func Config() node.Config {
	cfg := node.DefaultConfig()
	cfg.DataDir = ""
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.MDNS = false
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

// Start starts a node from Config, adjusted by tune (may be nil).
func Start(t testing.TB, tune func(*node.Config)) *node.Node {
	t.Helper()
	cfg := Config()
	if tune != nil {
		tune(&cfg)
	}
	n, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// Host starts a lone host with the sketch kernel, adjusted by tune (may be
// nil).
func Host(t testing.TB, tune func(*node.Config)) *node.Node {
	t.Helper()
	return Start(t, func(c *node.Config) {
		c.Kernel = kernel.Sketch{}
		if tune != nil {
			tune(c)
		}
	})
}

// SimGPU returns a simulated GPU of the named profile (kernel.ProfileNames),
// closed when the test ends.
func SimGPU(t testing.TB, profile string) *kernel.SimGPU {
	t.Helper()
	p, err := kernel.ProfileByName(profile)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := kernel.NewSimGPU(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

// Logger logs warnings and errors through t, so a failing test shows what
// its nodes complained about.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
