package main

import (
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/web"
)

// webSurface serves the live dashboard (GET /, docs/dashboard.md): it
// observes the node from its start, so the page shows every submission.
func webSurface(cfg *node.Config) func(*node.Node) []localapi.Option {
	d := web.New()
	cfg.Observers = append(cfg.Observers, d)
	return func(n *node.Node) []localapi.Option { return d.Routes(web.NodeSource{Node: n}) }
}

var _ surface = webSurface
