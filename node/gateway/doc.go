// Package gateway serves a node's OpenAI Images API beyond loopback, to
// the holders of API keys. The local API (node/localapi) has no keys and
// listens on loopback only; an operator who wants to let other people use
// their node runs the gateway beside it (`gpunet daemon --gateway HOST:PORT
// --api-keys FILE`, docs/openai.md "Gateway").
//
// It owns the keys file (hashes only, reloaded when it changes), the
// Bearer check, each key's identity as a submitter (its own fair share in
// the node's waiting room and the hosts' queues) and its optional rate
// limit. It serves the routes it is given (node/openai's) on a mux of its
// own, so the node's admin routes (pause, limits, cache, tasks, status) are
// not there to reach; and it forwards only the requests it knows how to
// attribute to a key: GET, and POST /v1/images/generations with the
// body's user replaced by the key's submitter.
//
// TLS is left to a reverse proxy in front of it (docs/openai.md has nginx
// and Caddy examples).
//
// It imports the local API's Option type and the protocol's limits; the
// node imports neither it nor anything that imports it, and it imports
// neither the metrics, the dashboard nor the node's internals. cmd/gpunet
// wires it in.
package gateway
