package main

import (
	"context"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/protocol"
)

// TestFrozenHostTaskCompletesElsewhere freezes (SIGSTOP) the host process
// running a task, as a laptop lid closing or a swapping machine would: its
// connections stay open and say nothing. The daemon that placed the task
// suspects the host after three missed keepalives, offers the task to the
// other host, moves it there once that host accepts, and the result comes
// from the other host: through suspicion, not through the idle timeout (no
// refusal or failure of the frozen host is reported before the result).
func TestFrozenHostTaskCompletesElsewhere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, aCmd := startPeerProcess(t, "host", t.TempDir(), "--gpu", "sim:rtx3060")
	b, bCmd := startPeerProcess(t, "host", t.TempDir(), "--gpu", "sim:rtx3060", "--bootstrap", a.Addrs[0])
	d, _ := startPeerProcess(t, "daemon", t.TempDir(), "--bootstrap", a.Addrs[0]+","+b.Addrs[0])
	procs := map[string]*exec.Cmd{a.PeerID: aCmd, b.PeerID: bCmd}

	api := localapi.NewClient(d.API)
	for {
		st, err := api.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.ViewPeers == 2 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the daemon's view never held both hosts: %d", st.ViewPeers)
		case <-time.After(50 * time.Millisecond):
		}
	}

	// About 5 s of work on a simulated RTX 3060: still running when frozen.
	task := protocol.Task{Prompt: "a frozen lake under the northern lights", Width: 512, Height: 512, Steps: 40}
	frozen, suspected := "", false
	var stages []string
	res, err := api.Submit(ctx, localapi.SubmitRequest{Task: task}, func(p node.Progress) {
		stages = append(stages, p.Stage+" "+p.Peer)
		switch {
		case frozen == "" && (p.Stage == "queued" || p.Stage == "running"):
			frozen = p.Peer
			if err := procs[frozen].Process.Signal(syscall.SIGSTOP); err != nil {
				t.Errorf("freezing %s: %v", frozen, err)
			}
		case p.Stage == "suspect":
			suspected = true
		case frozen != "" && p.Peer == frozen && p.Stage == "refused":
			t.Errorf("the frozen host's attempt ended in a refusal or failure, not a move: %s", p.Message)
		}
	})
	if err != nil {
		t.Fatalf("submit: %v (stages %v)", err, stages)
	}
	if frozen == "" {
		t.Fatalf("no host took the task (stages %v)", stages)
	}
	if res.Host == frozen || procs[res.Host] == nil {
		t.Errorf("result from %s; want it from the host that was not frozen (frozen: %s)", res.Host, frozen)
	}
	if !suspected {
		t.Errorf("the frozen host was never suspected (stages %v)", stages)
	}
}
