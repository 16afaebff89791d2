package node_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that every node the tests start stops every goroutine it
// started (house rule 7). The ignored functions belong to libraries that
// keep process-wide workers by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The bandwidth counter's process-wide sweeper, shared by every
		// counter in the process and never stopped by design.
		goleak.IgnoreTopFunction("github.com/libp2p/go-flow-metrics.(*sweeper).runActive"),
	)
}
