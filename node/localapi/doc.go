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
//
// It imports node; node does not import it.
package localapi
