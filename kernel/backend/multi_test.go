package backend

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

func TestMulti(t *testing.T) {
	f := newFakeA1111(t)
	a, err := NewA1111(ctxT(t), f.srv.URL, testOpts(t, WithHealthInterval(10*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMulti(kernel.Noop{}, a)
	defer m.Close()
	if got := m.Models(); !slices.Contains(got, "a1111/dreamshaper_8") || !slices.Contains(got, kernel.Noop{}.Models()[0]) {
		t.Fatalf("Models() = %v", got)
	}
	if _, err := m.Run(ctxT(t), task(t, protocol.Task{Model: "a1111/dreamshaper_8", Prompt: "x", Width: 64, Height: 64}), nil); err != nil {
		t.Fatal(err)
	}
	if len(f.bodies) != 1 {
		t.Error("the A1111 model's task did not reach A1111")
	}
	in := kernel.Inputs{Images: [][]byte{pngOf(t, 64, 64)}}
	et := editTask(t, protocol.Task{Model: kernel.Noop{}.Models()[0], Prompt: "x"}, in)
	if _, err := m.Edit(ctxT(t), et, in, nil, nil, nil); !errors.Is(err, protocol.ErrBadTask) {
		t.Errorf("an edit for a kernel that takes no inputs: %v", err)
	}
	ch := m.Changed()
	f.mu.Lock()
	f.down = true
	f.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("a backend's change was not passed on")
	}
	if got := m.Models(); slices.Contains(got, "a1111/dreamshaper_8") || m.Health() == nil {
		t.Errorf("after A1111 went down: models %v, health %v", got, m.Health())
	}
}
