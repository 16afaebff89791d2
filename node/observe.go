package node

import (
	"time"

	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Observer hears what a node does as it happens: the Prometheus metrics
// (node/metrics) and the dashboard (node/web) are observers, set in
// Config.Observers before New. Its methods are called on the node's own
// goroutines, often with work in flight: they must be safe for concurrent
// use, must not block and must not call back into the node.
type Observer interface {
	// SubmitProgress is one step of a Submit's journey (every Progress the
	// caller's own callback sees), SubmitDone its end.
	SubmitProgress(e SubmitEvent)
	SubmitDone(e SubmitEvent)
	// Served is a task request this host answered with a result or
	// refused (Code set), from a peer or from the node itself.
	Served(e ServedEvent)
	// Beacon is a beacon this node's validator judged: BeaconAccepted,
	// BeaconRejected (malformed, forged, flooding) or BeaconIgnored (stale
	// or a replay).
	Beacon(outcome string)
	// Provided is a DHT provide of a result's TaskCID, done or failed.
	Provided(err error)
}

// SubmitEvent describes a Submit: its task, whom it is for, and, as it
// goes, its latest progress; at its end its result or error and how long
// it took.
type SubmitEvent struct {
	TaskCID   cid.Cid
	Task      protocol.Task
	Submitter string
	Started   time.Time
	Progress  Progress      // SubmitProgress only
	Result    *Result       // SubmitDone, on success
	Err       error         // SubmitDone, on failure
	Elapsed   time.Duration // SubmitDone
}

// ServedEvent describes one task request a host answered.
type ServedEvent struct {
	TaskCID cid.Cid
	Peer    peer.ID // the client; this node's own ID for its own submissions
	// Code is the refusal's error code, empty when a result was sent.
	Code string
	// Cached: the result came from the store, no kernel ran for it.
	Cached bool
	// Elapsed runs from the request to the result or refusal; QueueWait
	// from admission to the kernel's start and KernelTime over the run,
	// both zero when no computation was started for this request (a
	// cached answer, a refusal, or a join of a computation that had
	// started already counts its wait from the join).
	Elapsed, QueueWait, KernelTime time.Duration
}

// Beacon outcomes, as Observer.Beacon reports them.
const (
	BeaconAccepted = "accepted"
	BeaconRejected = "rejected"
	BeaconIgnored  = "ignored"
)

// observe calls f for every observer.
func (n *Node) observe(f func(Observer)) {
	for _, o := range n.cfg.Observers {
		f(o)
	}
}
