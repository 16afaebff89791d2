package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
)

// gpunetBin is the binary built once for the tests that run it as a
// separate process.
var gpunetBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gpunet-e2e-")
	if err != nil {
		panic(err)
	}
	gpunetBin = filepath.Join(dir, "gpunet")
	out, err := exec.Command("go", "build", "-o", gpunetBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building gpunet: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// peerInfo is what `gpunet daemon|host --json` prints at start.
type peerInfo struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
	API    string   `json:"api"`
}

// startHostProcess runs `gpunet host` on loopback and returns what it
// printed at start.
func startHostProcess(t *testing.T, dataDir string, extra ...string) peerInfo {
	t.Helper()
	info, _ := startPeerProcess(t, "host", dataDir, append([]string{"--gpu", "sim:rtx3060"}, extra...)...)
	return info
}

// startPeerProcess runs `gpunet ROLE` (daemon or host) on loopback, stops
// it with SIGINT when the test ends (continuing it first, should the test
// have frozen it), and returns what it printed at start and its process.
func startPeerProcess(t *testing.T, role, dataDir string, extra ...string) (peerInfo, *exec.Cmd) {
	t.Helper()
	// Not CommandContext: the process must outlive the test's context until
	// the cleanup below stops it with SIGINT, as a person would.
	args := append([]string{role, "--data", dataDir, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--api", "127.0.0.1:0", "--mdns=false", "--json", "--log-level", "warn"}, extra...)
	cmd := exec.Command(gpunetBin, args...)
	var info peerInfo
	startJSON(t, cmd, role, true, &info)
	if info.PeerID == "" || len(info.Addrs) == 0 {
		t.Fatalf("%s printed %+v", role, info)
	}
	return info, cmd
}

// startJSON starts cmd, decodes the JSON object it prints once running
// into v, and stops it with SIGINT when the test ends (SIGCONT first, for
// a test that froze it). It fails the test if the process does not stop
// within 20 s, or, with checkExit, stops with an error.
func startJSON(t *testing.T, cmd *exec.Cmd, name string, checkExit bool, v any) {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil && checkExit {
				t.Errorf("%s exited with %v; stderr:\n%s", name, err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop within 20 s of SIGINT", name)
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, stderr.String())
		}
	})
	if err := json.NewDecoder(bufio.NewReader(stdout)).Decode(v); err != nil {
		t.Fatalf("reading %s's start line: %v; stderr:\n%s", name, err, stderr.String())
	}
}

type submitJSON struct {
	TaskCID   string `json:"task_cid"`
	ResultCID string `json:"result_cid"`
	Outputs   []struct {
		CID   string `json:"cid"`
		Path  string `json:"path"`
		Bytes int    `json:"bytes"`
	} `json:"outputs"`
	Host      string  `json:"host"`
	Cache     string  `json:"cache"`
	ElapsedMs float64 `json:"elapsed_ms"`
	Via       string  `json:"via"`
}

func runJSON(t *testing.T, ctx context.Context, v any, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, gpunetBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gpunet %v: %v\nstderr:\n%s", args, err, stderr.String())
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("gpunet %v printed %q: %v", args, out, err)
	}
}

// TestTwoProcessesEndToEnd runs a host and p2p submits as separate
// processes on loopback.
func TestTwoProcessesEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	host := startHostProcess(t, t.TempDir())
	dir := t.TempDir()
	submit := func(out string, extra ...string) submitJSON {
		var s submitJSON
		args := append([]string{"submit", "a lighthouse in a storm", "--p2p", "--mdns=false", "--json",
			"--bootstrap", host.Addrs[0], "--size", "128x96", "--steps", "3", "-o", filepath.Join(dir, out)}, extra...)
		runJSON(t, ctx, &s, args...)
		return s
	}
	first := submit("a.png")
	if first.Via != "p2p" || first.Cache != "miss" || first.Host != host.PeerID {
		t.Errorf("first submit: via %q cache %q host %q; want p2p, miss, %s", first.Via, first.Cache, first.Host, host.PeerID)
	}
	if len(first.Outputs) != 1 {
		t.Fatalf("outputs: %+v", first.Outputs)
	}
	data, err := os.ReadFile(first.Outputs[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cid.Decode(first.Outputs[0].CID)
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.VerifyBlock(c, data); err != nil || len(data) != first.Outputs[0].Bytes {
		t.Fatalf("written file does not match its CID: %v", err)
	}
	want, _ := (protocol.Task{Prompt: "a lighthouse in a storm", Width: 128, Height: 96, Steps: 3}).Normalize()
	if wc, _ := want.CID(); wc.String() != first.TaskCID {
		t.Errorf("task CID %s, want %s", first.TaskCID, wc)
	}

	second := submit("b.png")
	if second.Cache != "network" || second.ResultCID != first.ResultCID || second.TaskCID != first.TaskCID {
		t.Errorf("second submit: cache %q result %s; want network %s", second.Cache, second.ResultCID, first.ResultCID)
	}
	var st struct {
		PeerID     string `json:"peer_id"`
		KernelRuns uint64 `json:"kernel_runs"`
		Cache      struct {
			Entries int `json:"entries"`
			Hits    int `json:"hits"`
		} `json:"cache"`
	}
	runJSON(t, ctx, &st, "status", "--api", host.API, "--json")
	if st.PeerID != host.PeerID || st.KernelRuns != 1 || st.Cache.Entries != 1 {
		t.Errorf("host status: %+v; want its peer id, 1 kernel run, 1 cache entry", st)
	}
}

// TestSameTaskSameBytesAcrossRuns checks determinism across two fresh
// hosts in separate processes, and that seed and prompt change the result.
func TestSameTaskSameBytesAcrossRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	run := func(name, prompt string, extra ...string) (submitJSON, []byte) {
		host := startHostProcess(t, t.TempDir())
		var s submitJSON
		args := append([]string{"submit", prompt, "--p2p", "--mdns=false", "--json", "--bootstrap", host.Addrs[0],
			"--size", "96x96", "--steps", "2", "-o", filepath.Join(dir, name)}, extra...)
		runJSON(t, ctx, &s, args...)
		b, err := os.ReadFile(s.Outputs[0].Path)
		if err != nil {
			t.Fatal(err)
		}
		return s, b
	}
	a, ab := run("a.png", "sunflowers in a field")
	b, bb := run("b.png", "sunflowers   in a field ") // same task after normalisation
	if a.TaskCID != b.TaskCID || !bytes.Equal(ab, bb) || a.Outputs[0].CID != b.Outputs[0].CID {
		t.Errorf("two fresh runs of one task differ: %s/%s", a.Outputs[0].CID, b.Outputs[0].CID)
	}
	c, cb := run("c.png", "sunflowers in a field", "--seed", "7")
	d, db := run("d.png", "sunflowers in a meadow")
	for _, o := range []struct {
		name string
		s    submitJSON
		b    []byte
	}{{"other seed", c, cb}, {"other prompt", d, db}} {
		if o.s.TaskCID == a.TaskCID || bytes.Equal(o.b, ab) {
			t.Errorf("%s gave the same task or bytes", o.name)
		}
	}
}

// TestServeModeGeneratorProcess runs a host whose kernel is an external
// generator in serve mode (`gpunet generator --serve`, the sketch kernel
// behind the --kernel cmd contract): tasks reach it through the host, and
// its images are byte for byte the built-in kernel's.
func TestServeModeGeneratorProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	host := startHostProcess(t, t.TempDir(), "--kernel", "cmd", "--kernel-serve",
		"--kernel-cmd", gpunetBin+" generator --serve", "--kernel-models", protocol.DefaultModel, "--kernel-name", "cmd:sketch-v1")
	dir := t.TempDir()
	for i, prompt := range []string{"a red fox in fresh snow", "sunflowers in a summer field"} {
		var s submitJSON
		runJSON(t, ctx, &s, "submit", prompt, "--p2p", "--mdns=false", "--json", "--bootstrap", host.Addrs[0],
			"--size", "128x96", "--steps", "3", "-o", filepath.Join(dir, fmt.Sprintf("%d.png", i)))
		if s.Cache != "miss" || s.Host != host.PeerID || len(s.Outputs) != 1 {
			t.Fatalf("submit %q: %+v; want a miss computed by the host", prompt, s)
		}
		task, _ := protocol.Task{Prompt: prompt, Width: 128, Height: 96, Steps: 3}.Normalize()
		outs, err := kernel.Sketch{}.Run(ctx, task, nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := protocol.RawCID(outs[0].Data).String(); s.Outputs[0].CID != want {
			t.Errorf("submit %q: output %s, want the sketch kernel's %s", prompt, s.Outputs[0].CID, want)
		}
	}
	var st struct {
		Kernel     string `json:"kernel"`
		KernelRuns uint64 `json:"kernel_runs"`
	}
	runJSON(t, ctx, &st, "status", "--api", host.API, "--json")
	if st.Kernel != "cmd:sketch-v1" || st.KernelRuns != 2 {
		t.Errorf("host status: %+v; want kernel cmd:sketch-v1 with 2 runs", st)
	}
}
