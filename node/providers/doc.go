// Package providers is where a node keeps its content-routing state on
// disk: the DHT's provider records (other peers', and its own) in an ordered
// store, and the set of results this node has chosen to announce.
//
// # Why an ordered store
//
// kad-dht's default datastore is an in-memory map behind one mutex. A
// provider lookup is a prefix query, which a map answers by scanning every
// record it holds, under that mutex: 79 µs at 1,000 records, 1.3 ms at
// 10,000 and 23 ms at 100,000 (issue 14), and records live 48 h, so every
// result a swarm ever computed slows every cache lookup of every peer. Pebble
// keeps keys sorted, so a prefix query is a seek: microseconds whatever the
// store holds (BenchmarkProviderLookupMissing measures both in one run).
//
// # Layout
//
// One pebble database (go-ds-pebble), DATA/dht, or the ephemeral node's
// temporary directory:
//
//	/providers/<key>/<peer>  kad-dht's provider records (written by its
//	                         ProviderManager, which also expires them)
//	/gpunet/announced/<cid>  a TaskCID this node announces though it did
//	                         not compute it: it served a fetch of it, re-served
//	                         it from its cache, or its owner pinned it
//	/gpunet/sweep/keys/...   the keys this node provides: kad-dht's sweeping
//	                         provider's keystore (node/sweep.go), synced with
//	                         the results store at start
//	/gpunet/sweep/state/...  that provider's reprovide history, cycle start,
//	                         network size estimate, and its provide queue
//	                         saved at close
//
// # Durability
//
// All of it is soft state: provider records come back with their providers'
// next reprovide, and a lost announcement only means a result this node holds
// is found through its maker instead; a lost keystore is rebuilt from the
// results store when the node starts, and a lost schedule only means every
// region is reprovided once at start. So writes are not synced, and a
// database that does not open (damaged, or from an incompatible version) is
// deleted and started afresh rather than repaired.
//
// Only package node imports this package.
package providers
