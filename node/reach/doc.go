// Package reach decides how a node's libp2p host is built for the network
// it is in, and says afterwards what that network turned out to be:
//
//   - private swarms: the swarm key file (Kubo's swarm.key format), its
//     generation and its strict decoding, and the TCP-only transport set a
//     pre-shared key allows (QUIC cannot carry one);
//   - reachability: AutoNAT (v1, and v2 on long-lived nodes) and gpunet's
//     own address-translation check, folded by a Tracker into one answer,
//     public, private or unknown, with the confirmed and relay addresses;
//   - relays: the circuit relay v2 service a publicly reachable node runs,
//     with limits raised so that a result fits through it, AutoRelay for
//     nodes behind NAT, and hole punching (DCUtR) to leave the relay.
//
// It knows nothing of tasks, the DHT or gossip. Only node imports it (and
// cmd/gpunet, for the swarm-key command and to find the key file).
package reach
