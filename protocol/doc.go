// Package protocol is gpunet's contract: protocol IDs, wire messages, their size
// caps, the canonical task encoding that yields a TaskCID, result manifests and
// the signed capacity records hosts put in the DHT.
//
// It is a leaf: it imports nothing of this project, so a client in another
// program can depend on it alone. Every decoder here bounds its input before it
// allocates, and returns an error rather than panicking on anything a remote
// peer could send. docs/protocol.md is the prose version of this package.
package protocol
