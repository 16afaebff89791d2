// Package node is a gpunet peer: it owns the libp2p host, the private
// Kademlia DHT, the results store and (on hosts) the kernel and GPU device,
// and wires them into the way a task travels:
//
//	submit -> canonical Task -> TaskCID -> local store? -> find hosts on the DHT
//	       -> /gpunet/task/1.0.0 to each candidate in turn -> verify CIDs -> store
//
// Files by concern: config.go (Config and its defaults), node.go (lifecycle),
// lock.go (one process per data directory), peers.go (remembered peers,
// redialled while the node has too few), advertise.go (capacity over the
// DHT), gossip.go and beacon.go (load and heat), probe.go (load by probing,
// node/sampling), serve.go (the inbound task
// protocol) with fairqueue.go and admission.go (its fair queue and rate
// limits), dispatch.go (outbound: Submit) with waitroom.go (where a
// saturated swarm's tasks wait), fetch.go (results from any peer that holds
// them) with announce.go (who provides a result on the DHT), providequeue.go
// and sweep.go (provides batched by keyspace region, reprovide sweeps),
// status.go (what the local API reports).
// Sub-packages: store (content-addressed results), providers (the DHT's
// provider records on disk), sampling (probes, idle notices, peer
// sampling), trust (verification), reach (NAT), localapi (the HTTP API
// and its client), metrics (Prometheus), web (the dashboard), nodeconf (the
// config file) and swarm (nodes on loopback). localapi, metrics and web
// import node and reach it through Observer and small Source interfaces of
// their own; node imports none of them.
package node
