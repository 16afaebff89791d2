package main

import (
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
