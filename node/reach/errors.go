package reach

import (
	"fmt"
	"strings"
)

// ExplainDialError adds the likely cause to a dial error that a swarm key
// explains; other errors come back as they are. private says whether this
// node has a key.
//
// A peer with another key (or none) fails the connection before any
// gpunet protocol runs: go-libp2p's pnet stream cipher turns the first
// bytes into noise, so the multistream negotiation of the security
// protocol fails (at once with another key, after the 5 s handshake
// timeout without one). go-libp2p says only "failed to negotiate security
// protocol", which sends no one to the swarm key. The error text is
// matched because go-libp2p flattens dial errors into strings.
func ExplainDialError(err error, private bool) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "failed to negotiate security protocol"):
		if private {
			return fmt.Errorf("the peer is not in this private swarm (it has no swarm key, or another one): give every node the same swarm.key: %w", err)
		}
		return fmt.Errorf("the peer is in a private swarm or uses another swarm key: copy the swarm's key into the data directory as swarm.key, or pass --swarm-key FILE: %w", err)
	case private && (strings.Contains(msg, "no good addresses") || strings.Contains(msg, "no transport")):
		return fmt.Errorf("no TCP address for the peer, and a private swarm cannot use QUIC: give its /tcp/ address: %w", err)
	}
	return err
}
