package kernel

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/gpunet/gpunet/protocol"
)

// Noop kernel identifiers.
const (
	NoopName  = "noop-v1"
	NoopModel = "gpunet/noop"
)

// Noop does no work: it returns the first 8 bytes of sha2-256 over the
// task's canonical encoding, at once. The bench command uses it to measure
// what the protocol costs around a task. Safe for concurrent use.
type Noop struct{}

var _ Kernel = Noop{}

// Name returns NoopName.
func (Noop) Name() string { return NoopName }

// Models returns NoopModel.
func (Noop) Models() []string { return []string{NoopModel} }

// Run reports one step and returns one application/octet-stream output.
func (Noop) Run(ctx context.Context, t protocol.Task, progress Progress) ([]Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if t.Model != NoopModel {
		return nil, fmt.Errorf("%w: %s serves %s, not %q", protocol.ErrBadTask, NoopName, NoopModel, t.Model)
	}
	b, err := t.Encode()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	if progress != nil {
		progress(1, 1)
	}
	return []Output{{MediaType: "application/octet-stream", Data: sum[:8]}}, nil
}
