// Package trust decides which results a node checks, settles a check, and
// keeps each host's record: the defence of docs/trust.md against hosts that
// sign wrong results.
//
// A Book holds one record per host (by the ID that signed its manifests):
// how many of its results this node accepted, how many a re-run confirmed,
// and whether it was caught. Decide says, for one more result of a host,
// whether to hold it until a re-run agrees (probation: the host's first
// Policy.Probation results), to accept it and re-run it in the background
// (with a probability that falls as the host's clean record grows, and
// rises when the swarm has idle slots, where a re-run costs nobody a wait),
// or to accept it unchecked. Distrust turns the record into the score
// scheduler.Place takes per peer.
//
// Agree compares two results of one task: byte equality for kernels whose
// outputs are exact (protocol.ExactKernel), else a perceptual distance of
// the images (Distance) within Policy.Tolerance.
//
// A Checker runs the checks over a small interface to the node (Runner: run
// a task afresh on some host other than the ones named, fetch a block):
// Check re-runs a result on an independent host and, on disagreement, on a
// third; the host the others outvote is caught, excluded in the Book, and
// the evidence is a fraud proof (protocol.FraudProof) for the node to
// gossip. CheckProof settles a proof another node sent, by re-running the
// task itself, so a proof about an honest host is refused.
package trust
