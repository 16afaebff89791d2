// Package node is a gpunet peer: it owns the libp2p host, the private
// Kademlia DHT, the results store and (on hosts) the kernel and GPU device,
// and wires them into the way a task travels:
//
//	submit -> canonical Task -> TaskCID -> local store? -> find hosts on the DHT
//	       -> /gpunet/task/1.0.0 to each candidate in turn -> verify CIDs -> store
//
// Files by concern: config.go (Config and its defaults), node.go (lifecycle),
// advertise.go (capacity over the DHT), serve.go (the inbound task protocol),
// dispatch.go (outbound: Submit), status.go (what the local API reports).
// Sub-packages: store (content-addressed results) and localapi (the HTTP API
// and its client). Only cmd/ imports node.
package node
