// Package metrics exports a node's work as Prometheus metrics: gpunet's own
// (submissions, served tasks, refusals, the queue, the GPU and its
// governor, the results store, fetches, gossip, DHT provides), named by
// Prometheus conventions under one gpunet_ prefix, and, on the same
// registry, go-libp2p's (swarm, resource manager, identify, hole punching,
// AutoNAT, relay). docs/metrics.md lists them all.
//
// A Metrics owns its own registry, never the global one, so several nodes
// in one process each keep their own. It learns of events as a
// node.Observer (counters and histograms, updated as work happens) and
// reads the node's Status at scrape time (gauges, and the counters the node
// keeps itself). Labels take only bounded values: outcomes, cache kinds,
// refusal codes, never peer IDs, TaskCIDs or prompts.
//
// It imports node, never the reverse: cmd/gpunet joins it to a daemon (a
// surface, serving GET /metrics on the local API), and tests may use it.
package metrics
