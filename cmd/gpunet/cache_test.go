package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/node/store/storetest"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	car "github.com/ipld/go-car/v2"
	"github.com/libp2p/go-libp2p/core/crypto"
)

// noDaemon is an API address nothing listens on, so the cache commands
// open the store in --data.
const noDaemon = "127.0.0.1:1"

type cacheLsJSON struct {
	Entries []struct {
		TaskCID   string `json:"task_cid"`
		ResultCID string `json:"result_cid"`
		Bytes     int64  `json:"bytes"`
		Pinned    bool   `json:"pinned"`
		Prompt    string `json:"prompt"`
	} `json:"entries"`
	Bytes int64 `json:"bytes"`
}

// TestCacheCommandsOnDataDir runs ls, pin, unpin, get, export and gc
// against a data directory with no daemon running.
func TestCacheCommandsOnDataDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	data := t.TempDir()
	s, key := openDataStore(t, data)
	a := putResult(t, s, key, "a red kite over the moor", 2)
	b := putResult(t, s, key, "a blue door in a white wall", 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	gp := func(args ...string) []string {
		return append(args, "--data", data, "--api", noDaemon, "--json")
	}

	var ls cacheLsJSON
	runJSON(t, ctx, &ls, gp("cache", "ls")...)
	if len(ls.Entries) != 2 {
		t.Fatalf("ls: %d entries, want 2", len(ls.Entries))
	}
	prompts := map[string]string{}
	for _, e := range ls.Entries {
		prompts[e.TaskCID] = e.Prompt
		if e.Pinned {
			t.Errorf("%s pinned before any pin", e.TaskCID)
		}
	}
	if prompts[a.task.String()] != "a red kite over the moor" || prompts[b.task.String()] != "a blue door in a white wall" {
		t.Errorf("ls prompts by task: %v", prompts)
	}

	// Pin by TaskCID, unpin by ResultCID, pin again: the state is on disk.
	var pin struct {
		ResultCID string `json:"result_cid"`
		Pinned    bool   `json:"pinned"`
	}
	runJSON(t, ctx, &pin, gp("cache", "pin", a.task.String())...)
	if !pin.Pinned || pin.ResultCID != a.result.String() {
		t.Errorf("pin: %+v", pin)
	}
	runJSON(t, ctx, &pin, gp("cache", "unpin", a.result.String())...)
	if pin.Pinned {
		t.Errorf("unpin: %+v", pin)
	}
	runJSON(t, ctx, &pin, gp("cache", "pin", a.result.String())...)
	runJSON(t, ctx, &ls, gp("cache", "ls")...)
	for _, e := range ls.Entries {
		if e.Pinned != (e.TaskCID == a.task.String()) {
			t.Errorf("after pin: %s pinned=%v", e.TaskCID, e.Pinned)
		}
	}

	// get writes each output, the bytes that were stored.
	dir := t.TempDir()
	var got struct {
		Files []outputFile `json:"files"`
	}
	runJSON(t, ctx, &got, gp("cache", "get", a.task.String(), "-o", filepath.Join(dir, "kite.png"))...)
	if len(got.Files) != len(a.blocks) {
		t.Fatalf("get wrote %d files, want %d", len(got.Files), len(a.blocks))
	}
	for i, f := range got.Files {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, a.blocks[i]) {
			t.Errorf("output %d at %s: wrong bytes", i, f.Path)
		}
	}

	// export: a CAR that go-car reads, rooted at the ResultCID.
	carPath := filepath.Join(dir, "kite.car")
	var exp struct {
		Path string `json:"path"`
		Root string `json:"root"`
	}
	runJSON(t, ctx, &exp, gp("cache", "export", a.task.String(), "-o", carPath)...)
	if exp.Root != a.result.String() || exp.Path != carPath {
		t.Errorf("export said %+v", exp)
	}
	checkCAR(t, carPath, a)

	var gc struct {
		Removed int `json:"removed"`
		Entries int `json:"entries"`
	}
	runJSON(t, ctx, &gc, gp("cache", "gc")...)
	if gc.Removed != 0 || gc.Entries != 2 {
		t.Errorf("gc on a store within budget: %+v", gc)
	}

	// Errors a person can act on.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{gp("cache", "get", "not-a-cid"), "is not a CID"},
		{gp("cache", "pin", protocol.RawCID([]byte("nothing")).String()), "not in the results store"},
		{gp("cache", "export", a.task.String()), "needs -o"},
		{[]string{"cache", "ls", "--data", filepath.Join(dir, "nowhere"), "--api", noDaemon}, "no results store"},
	} {
		if out := runFail(t, ctx, tc.args...); !strings.Contains(out, tc.want) {
			t.Errorf("gpunet %v: stderr %q, want it to say %q", tc.args, out, tc.want)
		}
	}
}

// TestCacheCommandsThroughDaemon: with a host running on the data
// directory, the commands go through its local API (its store is locked
// by the daemon) and see what it computed.
func TestCacheCommandsThroughDaemon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := t.TempDir()
	host := startHostProcess(t, data)
	dir := t.TempDir()
	var sub submitJSON
	runJSON(t, ctx, &sub, "submit", "a tern on a post", "--p2p", "--mdns=false", "--json",
		"--bootstrap", host.Addrs[0], "--size", "64x64", "--steps", "2", "-o", filepath.Join(dir, "tern.png"))

	api := func(args ...string) []string { return append(args, "--api", host.API, "--data", data, "--json") }
	var ls cacheLsJSON
	runJSON(t, ctx, &ls, api("cache", "ls")...)
	if len(ls.Entries) != 1 || ls.Entries[0].TaskCID != sub.TaskCID || ls.Entries[0].ResultCID != sub.ResultCID {
		t.Fatalf("daemon's cache: %+v, want the one result %s", ls.Entries, sub.ResultCID)
	}
	var pin struct {
		Pinned bool `json:"pinned"`
	}
	runJSON(t, ctx, &pin, api("cache", "pin", sub.TaskCID)...)
	if !pin.Pinned {
		t.Error("pin through the daemon did not pin")
	}

	carPath := filepath.Join(dir, "tern.car")
	var exp struct {
		Root  string `json:"root"`
		Bytes int64  `json:"bytes"`
	}
	runJSON(t, ctx, &exp, api("cache", "export", sub.ResultCID, "-o", carPath)...)
	want, err := os.ReadFile(sub.Outputs[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	tc, _ := cid.Decode(sub.TaskCID)
	rc, _ := cid.Decode(sub.ResultCID)
	checkCAR(t, carPath, storedResult{task: tc, result: rc, blocks: [][]byte{want}})

	var got struct {
		Files []outputFile `json:"files"`
	}
	runJSON(t, ctx, &got, api("cache", "get", sub.TaskCID, "-o", filepath.Join(dir, "again.png"))...)
	if b, err := os.ReadFile(got.Files[0].Path); err != nil || !bytes.Equal(b, want) {
		t.Errorf("cache get through the daemon: %v, same bytes %v", err, bytes.Equal(b, want))
	}
}

// storedResult is a result put in a store by a test.
type storedResult struct {
	task, result cid.Cid
	blocks       [][]byte
}

func putResult(t *testing.T, s *store.Store, key crypto.PrivKey, prompt string, outputs int) storedResult {
	t.Helper()
	task, err := protocol.Task{Prompt: prompt, Width: 64, Height: 64, Steps: 1}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	var outs []protocol.Output
	var blocks [][]byte
	for range outputs {
		b := make([]byte, 2000)
		_, _ = crand.Read(b)
		blocks = append(blocks, b)
		outs = append(outs, protocol.Output{CID: protocol.Link{Cid: protocol.RawCID(b)}, MediaType: "image/png", Size: uint64(len(b))})
	}
	m, err := protocol.NewManifest(task, outs, "test", uint64(time.Now().UnixMilli()), key)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := s.Put(context.Background(), mb, blocks)
	if err != nil {
		t.Fatal(err)
	}
	return storedResult{task: m.TaskCID.Cid, result: rc, blocks: blocks}
}

// checkCAR reads path with go-car: one root, the ResultCID; the manifest
// block first, then every output; every block hashes to its CID.
func checkCAR(t *testing.T, path string, want storedResult) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	br, err := car.NewBlockReader(f)
	if err != nil {
		t.Fatalf("go-car cannot read the export: %v", err)
	}
	if len(br.Roots) != 1 || !br.Roots[0].Equals(want.result) {
		t.Fatalf("CAR roots %v, want [%s]", br.Roots, want.result)
	}
	var cids []cid.Cid
	data := map[cid.Cid][]byte{}
	for {
		blk, err := br.Next() // go-car re-hashes each block
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading CAR block %d: %v", len(cids), err)
		}
		if err := protocol.VerifyBlock(blk.Cid(), blk.RawData()); err != nil {
			t.Errorf("block %s: %v", blk.Cid(), err)
		}
		cids = append(cids, blk.Cid())
		data[blk.Cid()] = blk.RawData()
	}
	if len(cids) != 1+len(want.blocks) || !cids[0].Equals(want.result) {
		t.Fatalf("CAR holds %v; want the manifest %s then %d outputs", cids, want.result, len(want.blocks))
	}
	m, err := protocol.DecodeManifest(data[want.result])
	if err != nil {
		t.Fatalf("manifest in CAR: %v", err)
	}
	if !m.TaskCID.Equals(want.task) {
		t.Errorf("manifest task %s, want %s", m.TaskCID, want.task)
	}
	for i, o := range m.Outputs {
		if !bytes.Equal(data[o.CID.Cid], want.blocks[i]) {
			t.Errorf("output %d: wrong bytes in the CAR", i)
		}
	}
}

// runFail runs gpunet expecting it to fail and returns its stderr.
func runFail(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, gpunetBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if out, err := cmd.Output(); err == nil {
		t.Errorf("gpunet %v succeeded, printing %q", args, out)
	}
	return stderr.String()
}

// damagedDataDir returns a data directory whose store holds n results and
// has a damaged table.
func damagedDataDir(t *testing.T, n int) (string, []storedResult) {
	t.Helper()
	data := t.TempDir()
	s, key := openDataStore(t, data)
	var rs []storedResult
	for i := range n {
		rs = append(rs, putResult(t, s, key, fmt.Sprint("a gull over a damaged disk ", i), 1))
	}
	if err := s.Close(); err != nil { // Close flushes everything to a table
		t.Fatal(err)
	}
	storetest.DamageTable(t, filepath.Join(data, "store"))
	return data, rs
}

// runBounded runs gpunet and returns its output and exit code. A run that
// has not ended within a minute fails the test: it hung.
func runBounded(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gpunetBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("gpunet %v did not end within a minute; stderr:\n%s", args, errb.String())
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("gpunet %v: %v", args, err)
	}
	for _, crash := range []string{"panic:", "goroutine "} {
		if strings.Contains(errb.String(), crash) {
			t.Errorf("gpunet %v crashed:\n%s", args, errb.String())
		}
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// TestCacheCommandsOnDamagedStore: on a store with a damaged table (issue
// 8), reading commands end at once with one line that names the store and
// the fix, neither a panic nor a hang; `cache repair` keeps what verifies.
func TestCacheCommandsOnDamagedStore(t *testing.T) {
	const n = 8
	data, rs := damagedDataDir(t, n)
	dir := filepath.Join(data, "store")
	gp := func(args ...string) []string { return append(args, "--data", data, "--api", noDaemon) }

	for _, args := range [][]string{
		gp("cache", "get", rs[0].task.String(), "-o", filepath.Join(t.TempDir(), "out.png")),
		gp("cache", "ls"),
	} {
		_, stderr, code := runBounded(t, args...)
		t.Logf("gpunet %v: exit %d, stderr: %s", args[:2], code, stderr)
		if code != 1 {
			t.Errorf("gpunet %v: exit %d, want 1", args, code)
		}
		line := strings.TrimSuffix(stderr, "\n")
		if strings.Contains(line, "\n") {
			t.Errorf("gpunet %v: stderr is not one line:\n%s", args, stderr)
		}
		for _, want := range []string{"damaged", dir, "gpunet cache repair --data " + data} {
			if !strings.Contains(line, want) {
				t.Errorf("gpunet %v: %q does not say %q", args, line, want)
			}
		}
	}

	stdout, stderr, code := runBounded(t, gp("cache", "repair")...)
	t.Logf("gpunet cache repair: exit %d, stdout:\n%sstderr:\n%s", code, stdout, stderr)
	if code != 0 {
		t.Fatalf("cache repair: exit %d; stderr:\n%s", code, stderr)
	}
	var kept, lost int
	var moved string
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		switch {
		case strings.HasPrefix(l, "moved the damaged store aside to "):
			moved, _, _ = strings.Cut(strings.TrimPrefix(l, "moved the damaged store aside to "), ":")
		case strings.HasPrefix(l, "kept "):
			fmt.Sscanf(l, "kept %d", &kept)
		case strings.HasPrefix(l, "lost "):
			fmt.Sscanf(l, "lost %d", &lost)
		default:
			t.Errorf("cache repair printed %q", l)
		}
	}
	if !strings.HasPrefix(moved, dir+".damaged-") {
		t.Errorf("cache repair moved the store to %q; printed:\n%s", moved, stdout)
	} else if _, err := os.Stat(moved); err != nil {
		t.Errorf("the damaged store is not where repair says: %v", err)
	}
	if kept+lost != n || kept == 0 || lost == 0 {
		t.Errorf("cache repair kept %d and lost %d of %d; the damage should cost some and spare others:\n%s", kept, lost, n, stdout)
	}

	// The repaired store opens, and holds exactly what was kept.
	var ls cacheLsJSON
	runJSON(t, context.Background(), &ls, gp("cache", "ls", "--json")...)
	if len(ls.Entries) != kept {
		t.Errorf("after repair ls shows %d results, repair kept %d", len(ls.Entries), kept)
	}
}

// TestDaemonRepairsADamagedStore: a host started on a damaged store does
// not die: it moves the store aside, starts with what verifies and serves
// it.
func TestDaemonRepairsADamagedStore(t *testing.T) {
	const n = 8
	data, _ := damagedDataDir(t, n)
	host := startHostProcess(t, data)
	var ls cacheLsJSON
	runJSON(t, context.Background(), &ls, "cache", "ls", "--json", "--api", host.API, "--data", data)
	if len(ls.Entries) == 0 || len(ls.Entries) >= n {
		t.Errorf("the host serves %d results from its repaired store; want some of %d, not all", len(ls.Entries), n)
	}
	if moved, _ := filepath.Glob(filepath.Join(data, "store.damaged-*")); len(moved) != 1 {
		t.Errorf("damaged stores moved aside: %v, want one", moved)
	}
}

// openDataStore opens the results store of data directory data and makes
// a host key to sign the results a test puts there.
func openDataStore(t *testing.T, data string) (*store.Store, crypto.PrivKey) {
	t.Helper()
	s, err := store.Open(filepath.Join(data, "store"))
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := crypto.GenerateEd25519Key(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return s, key
}
