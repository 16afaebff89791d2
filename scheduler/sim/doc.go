// Package sim is a deterministic discrete-event simulator of a gpunet swarm:
// thousands of hosts with heterogeneous speeds and a first-order thermal
// model, hosts that publish stale load beacons, several independent clients
// that place tasks, churn, and a prompt-popularity model for the result
// cache. Policy "gpunet" runs the real scheduler.Place with the real
// scheduler.DefaultConfig; the other policies are the baselines it is judged
// against. With Config.LoadInfo = LoadProbe the gpunet policy learns load by
// peer sampling, probes and idle notices instead of gossip, through the
// functions of scheduler/probe.go (probe.go here models their messages,
// round trips and bytes). docs/scheduling.md states the model and the
// results.
//
// The simulator is single-threaded and uses only seeded random streams, so a
// Config always gives the same Result (except WallS). Every policy sees the
// same hosts, arrivals and task sizes for a given seed.
//
// Dependency rule: sim imports scheduler and protocol only; cmd/gpunet's sim
// command is its user.
package sim
