package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// Watcher is a kernel whose models change while it runs (every adapter
// here, and Multi). Changed returns a channel closed at the next change;
// the watcher then reads Models again and calls Changed for the next one.
// A node that holds a Watcher should re-advertise (provide the new model
// keys, put a new capacity record, send a beacon) when it fires, rather
// than wait for its next periodic advertisement.
type Watcher interface {
	Changed() <-chan struct{}
}

// Multi is one kernel over several: each task goes to the first kernel
// whose Models list its model, so a host can serve an A1111's checkpoints
// and a ComfyUI's at once (or a backend beside --kernel cmd). Models is
// the union, and changes as the kernels' do.
type Multi struct {
	ks      []kernel.Kernel
	changed notifier
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

var (
	_ kernel.Editor    = (*Multi)(nil)
	_ kernel.Previewer = (*Multi)(nil)
	_ Watcher          = (*Multi)(nil)
)

// NewMulti returns a kernel over ks, which it owns: Close closes those
// that are io.Closers.
func NewMulti(ks ...kernel.Kernel) *Multi {
	ctx, cancel := context.WithCancel(context.Background())
	m := &Multi{ks: slices.Clone(ks), cancel: cancel}
	m.wg.Add(1)
	go m.forward(ctx)
	return m
}

// forward passes the kernels' changes on as Multi's own.
func (m *Multi) forward(ctx context.Context) {
	defer m.wg.Done()
	for {
		cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())}}
		for _, k := range m.ks {
			if w, ok := k.(Watcher); ok {
				cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w.Changed())})
			}
		}
		if i, _, _ := reflect.Select(cases); i == 0 {
			return
		}
		m.changed.notify()
	}
}

// Name joins the kernels' names with "+".
func (m *Multi) Name() string {
	names := make([]string, len(m.ks))
	for i, k := range m.ks {
		names[i] = k.Name()
	}
	return strings.Join(names, "+")
}

// Models returns the union of the kernels' models, sorted.
func (m *Multi) Models() []string {
	var all []string
	for _, k := range m.ks {
		all = append(all, k.Models()...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// ModelDigests merges the kernels' digests; for a model two kernels
// serve, the first's.
func (m *Multi) ModelDigests() map[string]string {
	out := map[string]string{}
	for i := len(m.ks) - 1; i >= 0; i-- {
		if d, ok := m.ks[i].(interface{ ModelDigests() map[string]string }); ok {
			maps.Copy(out, d.ModelDigests())
		}
	}
	return out
}

// Health joins the kernels' health errors.
func (m *Multi) Health() error {
	var errs []error
	for _, k := range m.ks {
		if h, ok := k.(interface{ Health() error }); ok {
			if err := h.Health(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", k.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// Changed is closed when any kernel's models change.
func (m *Multi) Changed() <-chan struct{} { return m.changed.wait() }

// Close stops forwarding changes and closes the kernels.
func (m *Multi) Close() error {
	m.cancel()
	m.wg.Wait()
	var errs []error
	for _, k := range m.ks {
		if c, ok := k.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// route returns the kernel serving t's model.
func (m *Multi) route(t protocol.Task) (kernel.Kernel, error) {
	for _, k := range m.ks {
		if slices.Contains(k.Models(), t.Model) {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: this host serves %s, not %q", protocol.ErrBadTask, strings.Join(m.Models(), ", "), t.Model)
}

// Run runs t on the kernel serving its model.
func (m *Multi) Run(ctx context.Context, t protocol.Task, progress kernel.Progress) ([]kernel.Output, error) {
	k, err := m.route(t)
	if err != nil {
		return nil, err
	}
	return k.Run(ctx, t, progress)
}

// RunWithPreviews is Run with previews from kernels that make them.
func (m *Multi) RunWithPreviews(ctx context.Context, t protocol.Task, progress kernel.Progress, at []int, preview kernel.PreviewFunc) ([]kernel.Output, error) {
	k, err := m.route(t)
	if err != nil {
		return nil, err
	}
	if p, ok := k.(kernel.Previewer); ok {
		return p.RunWithPreviews(ctx, t, progress, at, preview)
	}
	return k.Run(ctx, t, progress)
}

// Edit runs an edit on the kernel serving its model; a kernel that takes
// no input images refuses it as a bad task, as a host would.
func (m *Multi) Edit(ctx context.Context, t protocol.Task, in kernel.Inputs, progress kernel.Progress, at []int, preview kernel.PreviewFunc) ([]kernel.Output, error) {
	k, err := m.route(t)
	if err != nil {
		return nil, err
	}
	e, ok := k.(kernel.Editor)
	if !ok {
		return nil, fmt.Errorf("%w: model %s is served by %s, which takes no input images", protocol.ErrBadTask, t.Model, k.Name())
	}
	return e.Edit(ctx, t, in, progress, at, preview)
}
