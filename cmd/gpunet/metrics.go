package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/metrics"
)

// metricsSurface serves Prometheus metrics (GET /metrics, docs/metrics.md):
// gpunet's own and go-libp2p's, on a registry of the daemon's own. It
// joins the config before the node starts, so it counts from the first
// event and libp2p registers there rather than on the global registry.
func metricsSurface(cfg *node.Config) func(*node.Node) []localapi.Option {
	var opts []metrics.Option
	if cfg.Logger != nil {
		opts = append(opts, metrics.WithLogger(cfg.Logger.With("sub", "metrics")))
	}
	m := metrics.New(version, opts...)
	m.Attach(cfg)
	return func(n *node.Node) []localapi.Option {
		m.Bind(n)
		return []localapi.Option{localapi.WithRoute("GET /metrics", m.Handler())}
	}
}

var _ surface = metricsSurface

// addMetricsFlag gives a command that runs a peer --metrics, read back by
// runPeer.
func addMetricsFlag(cmd *cobra.Command) {
	cmd.Flags().String("metrics", "", "also serve GET /metrics alone on HOST:PORT, for a Prometheus on another machine (the local API serves it on loopback anyway; docs/metrics.md)")
}

// serveMetricsOnly serves GET /metrics, from the routes the local API
// got, on addr and nothing else: the admin routes, the dashboard and the
// API stay on loopback. It returns the listener's address and a stop.
func serveMetricsOnly(addr string, routes []localapi.Option, log *slog.Logger) (string, func(), error) {
	mux := http.NewServeMux()
	for _, r := range routes {
		r(mux)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.Error(w, "only /metrics is served here", http.StatusNotFound)
			return
		}
		mux.ServeHTTP(w, r)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	return ln.Addr().String(), func() { _ = srv.Close(); <-done }, nil
}
