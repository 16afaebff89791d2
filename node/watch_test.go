package node_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/nodetest"
)

// changing is a kernel whose models change while it runs, as a backend's
// do when it goes away or comes back.
type changing struct {
	kernel.Noop
	mu      sync.Mutex
	models  []string
	changed chan struct{}
}

func (k *changing) Models() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.models)
}

func (k *changing) Changed() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.changed
}

func (k *changing) set(models ...string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.models = models
	close(k.changed)
	k.changed = make(chan struct{})
}

// A host whose kernel's models change says so at once, in its beacon and
// its capacity record, not at its next periodic beacon or advertisement
// (both set far beyond the test's bound here).
func TestHostReadvertisesWhenItsModelsChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := &changing{models: []string{kernel.NoopModel}, changed: make(chan struct{})}
	slow := func(c *node.Config) { c.BeaconInterval, c.AdvertiseInterval = time.Hour, time.Hour }
	host := nodetest.Start(t, func(c *node.Config) { c.Kernel = k; slow(c) })
	client := nodetest.Start(t, func(c *node.Config) { c.Bootstrap = host.Addrs() })
	models := func() []string {
		for _, p := range client.View() {
			if p.ID == host.ID().String() {
				return p.Models
			}
		}
		return nil
	}
	// The first beacon went out as the host started, before the client
	// was there: the DHT's capacity record says the host is up.
	if _, err := client.FindHosts(ctx, kernel.NoopModel, 5); err != nil {
		t.Fatal(err)
	}
	const added = "backend/new-checkpoint"
	k.set(kernel.NoopModel, added)
	for !slices.Contains(models(), added) {
		select {
		case <-ctx.Done():
			t.Fatalf("the client's view still lists %v: the change was not sent", models())
		case <-time.After(50 * time.Millisecond):
		}
	}
	hosts, err := client.FindHosts(ctx, added, 5)
	if err != nil || len(hosts) != 1 || hosts[0].Capacity == nil || !hosts[0].Capacity.Serves(added) {
		t.Fatalf("FindHosts(%s): %v, %v; want the host with a capacity record listing it", added, hosts, err)
	}
	k.set(kernel.NoopModel) // the backend lost it
	for slices.Contains(models(), added) {
		select {
		case <-ctx.Done():
			t.Fatal("the view still lists a model the host no longer serves")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if hosts, err := client.FindHosts(ctx, added, 5); err == nil && len(hosts) > 0 {
		t.Errorf("FindHosts(%s) still names %v after the host withdrew it", added, hosts)
	}
}
