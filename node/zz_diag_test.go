package node_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
)

func TestZZDiagConcurrent(t *testing.T) {
	sw := startSwarm(t, "rtx4090", "a100", "rtx3060")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	clients := []*node.Node{addClient(t, sw), addClient(t, sw)}
	task := protocol.Task{Prompt: "eight lanterns over a river", Width: 256, Height: 256, Steps: 10}
	nt := mustNormalize(t, task)
	tc, _ := nt.CID()
	names := map[string]string{}
	for i, h := range sw.Hosts {
		names[h.ID().String()] = []string{"rtx4090", "a100", "rtx3060"}[i]
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if len(clients[0].View()) == 3 && len(clients[1].View()) == 3 {
			break
		}
	}
	for ci, c := range clients {
		v := c.View()
		for _, p := range v {
			t.Logf("client %d view: %s busy=%d q=%d svc=%v temp=%.1f rtt=%.2f upd=%s speed=%v", ci, names[p.ID], p.Busy, p.QueueLen, p.ServiceMs, p.TempC, p.RTTMs, time.Since(p.Updated), p.Speed)
		}
		cands := scheduler.Place(v, scheduler.Request{Model: nt.Model, Key: tc.Bytes()}, time.Now(), rand.New(rand.NewPCG(1, 2)), scheduler.DefaultConfig())
		for _, cd := range cands {
			t.Logf("client %d cand: %s score=%.2f pred=%.2f", ci, names[cd.ID], cd.Score, cd.PredictedMs)
		}
	}
	const n = 8
	results := make([]*node.Result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], _ = clients[i%2].Submit(ctx, task, node.SubmitOptions{})
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r != nil {
			t.Logf("submission %d (client %d): host %s cache %s", i, i%2, names[r.Host.String()], r.Cache)
		}
	}
	total, _ := kernelRuns(sw)
	if total != 1 {
		t.Errorf("runs %d", total)
	}
}
