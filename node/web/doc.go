// Package web is the live dashboard a daemon or host serves on its local
// API: one embedded page (no build step, no CDN, nothing fetched from the
// internet), a Server-Sent Events stream of the node's and the swarm's
// state, and the raw output blocks of stored results for the page's
// images.
//
// A Dashboard observes the node (node.Observer, set in node.Config before
// node.New) to follow its submissions, then reads the rest through a small
// read-only Source when a client asks. It adds routes to the local API
// (localapi.WithRoute), so it sits behind the API's loopback and
// same-origin checks; the page calls the API's own routes (POST /v1/tasks,
// POST /v1/host/pause|resume) from that same origin.
//
// It imports node, node/localapi, node/store and scheduler; only the
// command (cmd/gpunet) imports it.
package web
