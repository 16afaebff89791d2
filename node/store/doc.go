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
// A lone block (PutBlock: a task's input image) has a /blocks record and a
// /meta record under its own CID, with no TaskCID and no manifest. It is
// evicted, pinned and counted against the budget like a result; GetBlock
// serves it, and Get, GetByResult and List do not see it.
//
// A result is written in one pebble batch (blocks, manifest, meta, index), and
// removed in one, so a crash leaves either all of it or none. Open reads the
// whole store once, so that pebble checks every block's checksum (see
// Damage), then rebuilds the in-memory index, the block reference counts and
// the byte total from /meta and /tasks alone, without decoding a manifest.
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
//   - Hit and miss counters cover Get and GetByResult and restart at zero with
//     the process; entries and bytes survive restarts.
//
// # Durability
//
// Put returns once its batch is on disk (committed with pebble.Sync): its
// callers announce the result on the DHT next, and a node that announced a
// result must still hold it after a crash. Pebble keeps an unsynced write in
// its write-ahead log's current 32 KiB block, in the process's memory, until
// the block fills or a sync asks for it, so a process killed with SIGKILL
// loses the writes of that block: small results, stored last, every time.
// A sync costs a few milliseconds (docs/cache.md has the figure and its
// command); WithoutSync skips it for a store that does not outlive its
// process.
//
// A result nobody is told of is stored unsynced: a client's copy of what
// it submitted (PutReceived) and a host's quiet result (PutQuiet). A crash
// costs it a fetch or a computation, where a sync would cost every task
// its few milliseconds. Before such a result is announced, Sync (or
// Unquiet's synced write) puts it on disk.
//
// The other writes are not synced, because losing them to a crash costs no
// result: last-access times (an eviction hint), removals and evictions
// (batches are atomic, so a lost one brings back a whole result, still valid
// since it is content-addressed), GC's orphan sweeps and Open's index
// repairs (redone next time). A later synced write makes them durable too:
// the log is written in order. Pins are synced: a person asked for them.
//
// # Damage
//
// Pebble checksums every block it writes. Damage it finds (a checksum that
// does not match, a table it cannot read) comes back as an error wrapping
// ErrCorrupt whose text names the store and the fix: Repair, which moves
// the damaged store aside and keeps every result that still verifies in a
// fresh one (`gpunet cache repair`; a daemon does it when it starts).
//
//   - Open reads every record once and fails with ErrCorrupt on damage, so
//     damage is found at start, where it can be repaired, rather than by a
//     read or a compaction while the node serves.
//   - Damage met later fails the read that meets it with ErrCorrupt (a miss
//     for the caller) and is logged once with the fix. A compaction that
//     meets it fails and pebble leaves that key range alone for a while;
//     pebble's default for damage, which ends the process, is replaced by
//     the store's event listener.
//   - A panic inside pebble (pebbleLogger.Fatalf, on a broken invariant) is
//     recovered where the store called pebble and returned as ErrCorrupt;
//     no lock stays held. Pebble is not used after that: every later call
//     fails the same way and Close leaves the database open.
//
// Content damage that pebble's checksums miss is the hash check's business
// (Rules above): the result is dropped and fetched or computed again.
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
