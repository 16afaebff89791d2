package kernel

import (
	"context"

	"github.com/gpunet/gpunet/protocol"
)

// Output is one file a kernel produced.
type Output struct {
	MediaType string
	Data      []byte
}

// Progress is called by a kernel after each step (1..total). It must not
// block; kernels call it from the goroutine that runs the task.
type Progress func(step, total int)

// Kernel turns a normalised task into output files.
//
// Implementations must be safe for concurrent use: a host runs several tasks
// at once. Run must honour ctx cancellation promptly (at least once per step)
// and return ctx.Err() when cancelled.
type Kernel interface {
	// Name identifies the kernel and its version, e.g. "sketch-v1"; it is
	// recorded in manifests.
	Name() string
	// Models lists the model names the kernel serves.
	Models() []string
	// Run executes t. progress may be nil.
	Run(ctx context.Context, t protocol.Task, progress Progress) ([]Output, error)
}
