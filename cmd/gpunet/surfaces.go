package main

import (
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
)

// A surface is something a daemon or host serves on its local API beside
// the API's own routes (the metrics, the dashboard). It is set up in two
// steps because it observes the node it serves: before the node starts it
// may add to the node's config (an observer, a metrics registry), and once
// the node runs it gives the routes to serve.
type surface func(cfg *node.Config) (routes func(n *node.Node) []localapi.Option)

// surfaces lists them, in the order their routes are added.
var surfaces = []surface{webSurface, metricsSurface, openaiSurface}
