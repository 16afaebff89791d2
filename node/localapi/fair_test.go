package localapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/protocol"
)

// TestHeavyCallerCannotStarveALightOne: one caller of a daemon's API
// submits a batch of tasks, more than its host can hold; another submits
// one task after them. Each names itself (submitter), so the daemon's
// waiting room and the host's queue take turns between them: once the
// light caller's task is in line, fewer than half of the heavy batch
// finish before it. Were the daemon one submitter to the host, as before,
// every heavy task in line would finish first.
//
// Turns are not exact: tasks the waiting room lets go together race for
// the host's free places, and a refused one goes back to its line, so a
// few heavy tasks can get ahead (2 to 5 in runs under -race on a loaded
// machine, whatever the batch's size); the bound is half the batch. The
// count runs from the moment the light task is in line, not from the
// start: on a loaded machine the heavy batch may get well ahead before the
// light caller's request is even read, and that is no unfairness.
func TestHeavyCallerCannotStarveALightOne(t *testing.T) {
	const heavy, slots, queueLen = 16, 1, 3
	s, _ := startAPIWith(t, func(c *node.Config) {
		c.Kernel = kernel.Sketch{}
		c.Device, c.Slots, c.QueueLen = nodetest.SimGPU(t, "h100"), slots, queueLen
		c.BeaconInterval = 200 * time.Millisecond
	})
	api := localapi.NewClient(s.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var mu sync.Mutex
	var order []string   // submitters, in the order their tasks finished
	doneWhenInLine := -1 // len(order) when the light task was first in line
	var wg sync.WaitGroup
	submit := func(who string, i int, placed chan<- struct{}) {
		defer wg.Done()
		once := sync.OnceFunc(func() {
			if who == "light" {
				mu.Lock()
				doneWhenInLine = len(order)
				mu.Unlock()
			}
			close(placed)
		})
		// About 0.1 s each on a simulated H100.
		task := protocol.Task{Prompt: fmt.Sprintf("%s's picture %d", who, i), Width: 256, Height: 256, Steps: 16}
		_, err := api.Submit(ctx, localapi.SubmitRequest{Task: task, Submitter: who}, func(p node.Progress) {
			if p.Stage == "queued" || p.Stage == "running" || p.Stage == "waiting" {
				once()
			}
		})
		once()
		if err != nil {
			t.Errorf("%s's task %d: %v", who, i, err)
			return
		}
		mu.Lock()
		order = append(order, who)
		mu.Unlock()
	}
	var placed []chan struct{}
	for i := range heavy {
		ch := make(chan struct{})
		placed = append(placed, ch)
		wg.Add(1)
		go submit("heavy", i, ch)
	}
	for _, ch := range placed {
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatal("the heavy batch was never queued")
		}
	}
	wg.Add(1)
	go submit("light", 0, make(chan struct{}))
	wg.Wait()

	t.Logf("completion order: %v; %d heavy tasks done when the light one was in line", order, doneWhenInLine)
	if len(order) != heavy+1 {
		t.Fatalf("%d of %d tasks completed", len(order), heavy+1)
	}
	light := slices.Index(order, "light")
	if ahead := light - doneWhenInLine; ahead >= heavy/2 {
		t.Errorf("%d heavy tasks finished between the light task's getting in line and its end; want fewer than half the batch of %d",
			ahead, heavy)
	}
}

// TestDeadlineEndsAWaitingTask: a task no host will take (its only host is
// paused) is not refused: it waits, showing its place in line, until the
// caller's timeout_ms passes, and then ends with deadline_exceeded.
func TestDeadlineEndsAWaitingTask(t *testing.T) {
	s, n := startHostAPI(t)
	if !n.Pause() {
		t.Fatal("the host could not be paused")
	}
	body := `{"prompt":"a harbour nobody will draw","width":64,"height":64,"steps":2,"timeout_ms":1500}`
	resp, err := http.Post("http://"+s.Addr()+"/v1/tasks", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stages []string
	var last localapi.Line
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if last.Progress != nil {
			stages = append(stages, last.Progress.Stage)
		}
	}
	if last.Error == nil || last.Error.Code != localapi.CodeDeadline {
		t.Fatalf("last line %+v, want an error with code %s (stages %v)", last, localapi.CodeDeadline, stages)
	}
	if !slices.Contains(stages, "waiting") {
		t.Errorf("the task never showed it was waiting: stages %v", stages)
	}
}
