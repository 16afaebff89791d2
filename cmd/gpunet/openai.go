package main

import (
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/openai"
)

// openaiSurface serves the OpenAI Images API (/v1/models,
// /v1/images/generations; docs/openai.md), so the official OpenAI clients
// work against the node with only their base URL changed. It adds nothing
// to the config: it submits through the node like any caller.
func openaiSurface(cfg *node.Config) func(*node.Node) []localapi.Option {
	var opts []openai.Option
	if cfg.Logger != nil {
		opts = append(opts, openai.WithLogger(cfg.Logger.With("sub", "openai")))
	}
	return func(n *node.Node) []localapi.Option { return openai.Routes(n, opts...) }
}

var _ surface = openaiSurface
