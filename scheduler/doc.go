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
// probe.go is load information whose cost per node does not grow with the
// swarm (issue 14), so far in the simulator only (gpunet sim --load-info
// probe): a Cyclon peer-sampling view, probes of a few hosts per task whose
// replies are ranked with Place's scoring (RankProbed), a memory of hosts
// recently heard idle, and idle notices from hosts to recent probers.
//
// Dependency rule: scheduler imports only protocol of this project (and the
// standard library). node and cmd may import it; kernel may not.
package scheduler
