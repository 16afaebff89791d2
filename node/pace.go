package node

import (
	"context"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// simulatedDevice is what a pacer needs of a simulated GPU.
type simulatedDevice interface {
	Profile() kernel.Profile
	Speed() float64
}

// pacer makes a task's steps take as long as they would on the simulated
// GPU: each step lasts at least pixels / (throughput × clock factor), so a
// laptop GPU is slower than an H100 and a throttled GPU slower than a cool
// one. The CPU kernel's own time counts towards it; the pacer only sleeps
// the difference. Without a simulated device it does nothing.
type pacer struct {
	dev     simulatedDevice
	perStep time.Duration // at full clock
	last    time.Time
}

func newPacer(dev kernel.Device, t protocol.Task, on bool) *pacer {
	p := &pacer{last: time.Now()}
	sd, ok := dev.(simulatedDevice)
	if !on || !ok || sd.Profile().MPixStepsPerSec <= 0 {
		return p
	}
	mpix := float64(t.Width) * float64(t.Height) / 1e6
	p.dev = sd
	p.perStep = time.Duration(mpix / sd.Profile().MPixStepsPerSec * float64(time.Second))
	return p
}

// step sleeps until the current step has lasted as long as the GPU needs.
func (p *pacer) step(ctx context.Context) {
	if p.dev == nil {
		return
	}
	speed := p.dev.Speed()
	if speed <= 0 {
		speed = 1
	}
	target := time.Duration(float64(p.perStep) / speed)
	if wait := target - time.Since(p.last); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	p.mark()
}

// mark starts the next step's clock now.
func (p *pacer) mark() { p.last = time.Now() }
