// Package sampling is a node's load information by probing: the I/O around
// scheduler/probe.go's pure functions (issue 14; docs/scheduling.md, "Load
// information at scale"). With it a node hears of a few hosts per task
// instead of every host's beacon, so what it sends and receives does not
// grow with the swarm:
//
//   - a peer-sampling view of scheduler.ProbeConfig.ViewSize hosts, kept a
//     random sample by a Cyclon shuffle every ShuffleEvery
//     (protocol.SampleProtocol) and by the descriptors probe replies carry;
//   - probes (protocol.ProbeProtocol): a client asks D hosts drawn from its
//     view, weighted by capacity, for their beacon as it is now, remembers
//     those with a free slot (scheduler.ProbeMemory) and ranks them with
//     scheduler.RankProbed;
//   - idle notices (protocol.IdleProtocol): a host whose slot comes free
//     with nobody queued tells one of its last probers.
//
// The simulator (scheduler/sim/probe.go) calls the same pure functions, so
// its figures are this package's decisions at scale.
//
// It reaches the node only through the Node interface. It imports
// protocol, scheduler and go-libp2p; the node package imports it, never
// the reverse.
package sampling
