// Package store is a gpunet node's content-addressed results store: the
// manifests and output blocks of finished tasks, kept on disk in a pebble
// database (go-ds-pebble) so that a node answers a repeated task from disk
// instead of a GPU, and serves blocks to peers that fetch them by CID.
//
// # Layout
//
// Keys in the datastore, CIDs in their default string form (base32 for the
// CIDv1 gpunet uses):
//
//	/blocks/<blockCID>     raw bytes of one output block (sha2-256, codec raw)
//	/manifests/<resultCID> the encoded manifest; it is a DAG-CBOR block too,
//	                       and its CID is the ResultCID
//	/tasks/<taskCID>       the ResultCID (binary CID) stored for that task
//	/meta/<resultCID>      a small DAG-CBOR record: TaskCID, the result's
//	                       blocks and their sizes, bytes, last access and
//	                       created (Unix ms), pinned
//
// A result is written in one pebble batch (blocks, manifest, meta, index), and
// removed in one, so a crash leaves either all of it or none. Open rebuilds
// the in-memory index, the block reference counts and the byte total from
// /meta and /tasks alone, without decoding a manifest.
//
// # Rules
//
//   - Put verifies before it stores: the manifest with protocol.DecodeManifest
//     (shape, TaskCID, signature), every block against its output CID and size.
//   - The first result stored for a TaskCID wins. A later Put of a different
//     result for the same task stores nothing and returns the ResultCID already
//     held: results of a deterministic kernel are interchangeable, and keeping
//     the first one means a CID handed out once keeps answering.
//   - Every read re-hashes what it returns (manifest and blocks). Data that
//     does not match its CID is never served: the read fails with an error
//     wrapping protocol.ErrBadCID (or ErrNotFound for data missing from
//     disk), and every result that references the bad data is dropped from
//     the index, so the node computes or fetches it again.
//   - Blocks are shared between results with the same output bytes and
//     reference counted in memory; a block is deleted when the last result
//     referencing it goes.
//   - Over budget, Put evicts least-recently-used results (Get, GetByResult,
//     GetManifest and ExportCAR count as uses); pinned results are never
//     evicted. The budget counts manifests and distinct blocks, not the small
//     meta and index records nor pebble's own overhead. GC also removes
//     orphan records: blocks no result references, manifests and index
//     entries without a result.
//   - Last-access times are kept in memory and written back to /meta by GC
//     and Close (and with a result's pin state), not on every read: a hit
//     costs no disk write, and a crash loses only some recency, a mere hint
//     for eviction.
//   - Writes are not fsynced (go-ds-pebble's default): pebble's write-ahead
//     log survives a crash of the process, and what a power loss takes back
//     is a whole recent batch, never part of one, so the store stays
//     consistent and the lost results are computed or fetched again.
//   - Hit and miss counters cover Get and GetByResult and restart at zero with
//     the process; entries and bytes survive restarts.
//
// # Concurrency
//
// A Store is safe for concurrent use. Reads run in parallel under a read
// lock; Put, Pin, Unpin, Remove, GC and the dropping of corrupt results take
// the write lock, so a result is never removed while a reader is hashing it.
// Put verifies hashes and the manifest signature before taking the lock. The
// store starts no goroutines: GC runs when the caller calls it.
//
// # Who imports it
//
// Package node, its local API (node/localapi, for the cache routes) and the
// gpunet cache command when no daemon runs. It imports protocol and nothing else of
// this project.
package store
