// Package localapi is a node's local HTTP API and its Go client: the small
// surface by which the gpunet CLI (and any program on the same machine) uses
// a running daemon. It listens on loopback only and speaks JSON; submitting a
// task streams newline-delimited JSON progress lines, then one result line.
//
// Endpoints (all JSON):
//
//	GET  /v1/status          node.Status
//	GET  /v1/peers           []node.PeerInfo
//	POST /v1/tasks           SubmitRequest -> NDJSON stream of Line
//	POST /v1/host/pause      pause a host (hosts only)
//	POST /v1/host/resume     resume a host
//	GET  /v1/cache           results in the store
//	GET  /v1/cache/{cid}     one result (TaskCID or ResultCID): manifest and outputs
//	GET  /v1/cache/{cid}/car the result as a CARv1 archive
//	POST /v1/cache/{cid}/pin, /unpin   keep a result from eviction, or not
//	POST /v1/cache/gc        evict down to the budget, drop orphan blocks
//
// Browsers: a request with an Origin other than the API's own, or marked
// cross-site by Sec-Fetch-Site, is refused (403), and POST /v1/tasks takes
// only application/json (415), so no web page can drive the API; a page the
// API itself serves may.
//
// It imports node; node does not import it.
package localapi
