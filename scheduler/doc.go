// Package scheduler owns placement: given a snapshot of the peer view, one
// task, the time and a source of randomness, Place returns every peer that
// can take the task, best first.
//
// Placement is pure business logic in the style of Nomad's scheduler: no I/O,
// no goroutines, no clock and no global randomness inside. The node fills a
// View from gossip beacons and walks the candidates over the task stream; the
// discrete-event simulator in scheduler/sim runs exactly the same code against
// thousands of simulated hosts. docs/scheduling.md describes the algorithm and
// the simulator results.
//
// Dependency rule: scheduler imports only protocol of this project (and the
// standard library). node and cmd may import it; kernel may not.
package scheduler
