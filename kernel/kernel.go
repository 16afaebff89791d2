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

// Digester is a Kernel that knows the digests of its models' weights
// (protocol 1.2, "Models named by content"): model name to "sha256:" and
// 64 hex digits (or the bare hex digits). A host advertises them, and
// serves a task naming a model by content only with those weights. Built-in
// kernels whose model names carry their version (sketch-v1) report none.
type Digester interface {
	ModelDigests() map[string]string
}

// PreviewFunc receives one partial image: a PNG of the task's state after
// step (1..total-1), at most protocol.MaxPreviewBytes. It must not block; a
// kernel calls it from the goroutine that runs the task, and the PNG is the
// callee's to keep.
type PreviewFunc func(step int, png []byte)

// Previewer is a Kernel that can show its intermediate state while it runs.
// The node asks for previews only from kernels that implement it; a kernel
// that does not simply sends none, which the protocol allows.
type Previewer interface {
	Kernel
	// RunWithPreviews is Run, and also calls preview once for each step in
	// at (ascending, 1..total-1; others are ignored) with the image as it
	// stands after that step. Its outputs are byte-identical to Run's for
	// the same task: previews show the run, they never change it.
	RunWithPreviews(ctx context.Context, t protocol.Task, progress Progress, at []int, preview PreviewFunc) ([]Output, error)
}

// PreviewSteps spreads n previews evenly over a run of total steps, at
// k·total/(n+1) for k = 1..n, so the first comes as early as the last comes
// before the end. It never picks the last step (that image is the output) and
// gives fewer than n when the run has fewer than n+1 steps.
func PreviewSteps(total, n int) []int {
	n = min(n, total-1)
	if n <= 0 {
		return nil
	}
	at := make([]int, n)
	for k := range at {
		// total/(n+1) >= 1, so the steps are distinct and ascending.
		at[k] = (k + 1) * total / (n + 1)
	}
	return at
}
