package store

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
)

// killChildEnv makes the test binary the child of TestPutSurvivesKill9:
// it stores results in the directory killChildDirEnv names, prints their
// TaskCIDs and waits to be killed.
const (
	killChildEnv    = "GPUNET_STORE_CHILD"
	killChildDirEnv = "GPUNET_STORE_CHILD_DIR"
)

// killChildResults is how many results the child stores: small ones, as
// in issue 8, where a host killed 10 s after serving three lost all three.
const killChildResults = 3

// TestPutSurvivesKill9: a result Put has returned is on disk, so a host
// that announced it and is then killed with SIGKILL still has it; so is a
// result stored unsynced once Sync (PutReceived) or Unquiet (PutQuiet) has
// returned, as a node calls them before it announces such a result. The child stores results and
// says so; the parent kills it at once, reopens the store and reads every
// result back.
func TestPutSurvivesKill9(t *testing.T) {
	if mode := os.Getenv(killChildEnv); mode != "" {
		killChild(t, mode)
		return
	}
	for _, mode := range []string{"put", "received-then-sync", "quiet-then-unquiet"} {
		t.Run(mode, func(t *testing.T) { killAfterStoring(t, mode) })
	}
}

func killAfterStoring(t *testing.T, mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestPutSurvivesKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), killChildEnv+"="+mode, killChildDirEnv+"="+dir)
	cmd.Stderr = tWriter{t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, readErr := bufio.NewReader(out).ReadString('\n')
	// Killed as soon as it said "stored": no Close, no time for pebble.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, out)
	_ = cmd.Wait()
	fields := strings.Fields(line)
	if readErr != nil || len(fields) != 1+killChildResults || fields[0] != "stored" {
		t.Fatalf("child printed %q (%v), want stored and %d TaskCIDs", line, readErr, killChildResults)
	}

	s := openStore(t, dir)
	for _, f := range fields[1:] {
		tc, err := cid.Decode(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, tc); err != nil {
			t.Errorf("result for %s, stored before the kill: %v", tc, err)
		}
	}
	if got := s.Stats().Entries; got != killChildResults {
		t.Errorf("%d results after the kill, want %d", got, killChildResults)
	}
}

// killChild is the child's side of TestPutSurvivesKill9: it stores with
// Put, with PutReceived and then Sync, or with PutQuiet and then Unquiet
// (mode). It never returns: the
// parent kills it, or it gives up after a minute so that it cannot outlive
// a parent that failed.
func killChild(t *testing.T, mode string) {
	s, err := Open(os.Getenv(killChildDirEnv), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	tasks := []string{"stored"}
	for i := range killChildResults {
		f := makeResult(t, key, fmt.Sprint("a result a host announces ", i), "k", randBlock(uint64(i), 3000))
		switch mode {
		case "put":
			mustPut(t, s, f)
		case "received-then-sync":
			mustPutUnsynced(t, s, f, false)
		case "quiet-then-unquiet":
			mustPutUnsynced(t, s, f, true)
		}
		tasks = append(tasks, f.task.String())
	}
	switch mode {
	case "received-then-sync":
		if err := s.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	case "quiet-then-unquiet":
		// One is enough: its write syncs the log, the others' puts with it.
		if _, err := s.Unquiet(context.Background(), cid.MustParse(tasks[len(tasks)-1])); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println(strings.Join(tasks, " "))
	time.Sleep(time.Minute)
	os.Exit(3)
}

// Unsynced counts the results stored without a sync until Sync, in a store
// that syncs; Put, synced itself, adds none. A store opened WithoutSync
// counts none: Sync would protect nothing there.
func TestUnsyncedCount(t *testing.T) {
	key := newKey(t)
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		opts   []Option
		counts bool
	}{{"syncing", nil, true}, {"WithoutSync", []Option{WithoutSync()}, false}} {
		t.Run(c.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), c.opts...)
			mustPut(t, s, makeResult(t, key, "synced", "k", randBlock(1, 100)))
			mustPutUnsynced(t, s, makeResult(t, key, "received", "k", randBlock(2, 100)), false)
			mustPutUnsynced(t, s, makeResult(t, key, "quiet", "k", randBlock(3, 100)), true)
			want := int64(0)
			if c.counts {
				want = 2
			}
			if got := s.Unsynced(); got != want {
				t.Fatalf("%d unsynced after a Put, a PutReceived and a PutQuiet; want %d", got, want)
			}
			if err := s.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if got := s.Unsynced(); got != 0 {
				t.Fatalf("%d unsynced after Sync", got)
			}
		})
	}
}
