package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// First contact (issue 8): every mistake a person can make on the command
// line ends in one stderr line, "gpunet: CAUSE: WHAT TO DO", exit status 1,
// no stack trace, and nothing left behind. These tests run the binary
// built by TestMain as a person would, on loopback only.

// fcPeerID is a valid peer ID that no process here has.
const fcPeerID = "12D3KooWAbq5kdq6xGR66qvbuVwvrTP6BA6UXeHdj4FddRU4Y4i2"

// fcWait bounds every wait on a child process. It only fails a test that
// hangs; nothing here is timed.
const fcWait = 2 * time.Minute

// fcNet keeps a node on loopback, without mDNS, on ports the OS picks.
// --log-level warn: a daemon's info lines are its normal progress, not
// part of what a failure prints.
// An empty data leaves --data out: a one-shot submit then uses an ephemeral
// store in TMPDIR, which it must remove.
func fcNet(data string) []string {
	args := []string{"--mdns=false", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--log-level", "warn"}
	if data != "" {
		args = append(args, "--data", data)
	}
	return args
}

// fcCommand is gpunet with args, its temporary files in tmp and its
// default data directory ($GPUNET_HOME) one of the test's.
func fcCommand(ctx context.Context, t *testing.T, tmp string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, gpunetBin, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "GPUNET_HOME="+filepath.Join(t.TempDir(), "home"))
	return cmd
}

// checkOneLine fails t unless stderr is one line, "gpunet: ...", matching
// cause, with no trace of a panic.
func checkOneLine(t *testing.T, stderr string, cause *regexp.Regexp) {
	t.Helper()
	if strings.Contains(stderr, "panic:") || strings.Contains(stderr, "goroutine ") {
		t.Fatalf("stderr has a stack trace:\n%s", stderr)
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "gpunet: ") {
		t.Fatalf("stderr is not one line starting \"gpunet: \":\n%s", stderr)
	}
	if !cause.MatchString(lines[0]) {
		t.Errorf("stderr %q does not name the cause (want /%s/)", lines[0], cause)
	}
}

// checkNothingLeft fails t if the process left anything in its TMPDIR
// (a one-shot node's gpunet-ephemeral-* store above all).
func checkNothingLeft(t *testing.T, tmp string) {
	t.Helper()
	ents, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
}

// exitCode is the status cmd.Run's error reports, 0 for none.
func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("running gpunet: %v", err)
	return -1
}

// daemonProc is a running `gpunet daemon`.
type daemonProc struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed when it has exited
	waitErr error         // set before exited is closed
}

// startDaemon runs `gpunet daemon` on data until the test ends (then
// SIGINT stops it), and returns once it printed its "running" line.
func startDaemon(t *testing.T, data, tmp string) *daemonProc {
	t.Helper()
	cmd := fcCommand(context.Background(), t, tmp, append([]string{"daemon"}, fcNet(data)...)...)
	var stderr bytes.Buffer // read only after exited
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, exited: make(chan struct{})}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		if !d.wait(fcWait) {
			_ = cmd.Process.Kill()
			t.Errorf("daemon did not stop within %v of SIGINT", fcWait)
		}
	})
	running := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for found := false; sc.Scan(); {
			if !found && strings.Contains(sc.Text(), "running") {
				found = true
				close(running)
			}
		}
		d.waitErr = cmd.Wait() // after stdout is read to its end, as Wait requires
		close(d.exited)
	}()
	select {
	case <-running:
		return d
	case <-d.exited:
		t.Fatalf("daemon exited before it was running (%v); stderr:\n%s", d.waitErr, stderr.String())
	case <-time.After(fcWait):
		_ = cmd.Process.Kill()
		<-d.exited
		t.Fatalf("daemon not running after %v; stderr:\n%s", fcWait, stderr.String())
	}
	return nil
}

// wait reports whether the daemon exited within max.
func (d *daemonProc) wait(max time.Duration) bool {
	select {
	case <-d.exited:
		return true
	case <-time.After(max):
		return false
	}
}

// TestFirstContactErrors runs each start-up mistake as a process.
func TestFirstContactErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	failing := filepath.Join(t.TempDir(), "failing-generator")
	if err := os.WriteFile(failing, []byte("#!/bin/sh\necho 'no GPU found: check the driver' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A one-shot p2p submit, with no --data: its store is ephemeral.
	p2p := func(_ string, extra ...string) []string {
		return append(append([]string{"submit", "a quiet harbour", "--p2p"}, fcNet("")...), extra...)
	}
	cases := []struct {
		name string
		// args builds the command line for a fresh data directory (which
		// does not exist yet) and may prepare it.
		args  func(t *testing.T, data, tmp string) []string
		cause string // regexp the line must match
		// unprivileged runs gpunet as nobody when the test runs as root,
		// who may write anywhere.
		unprivileged bool
	}{
		{"bootstrap not a multiaddr", func(t *testing.T, data, _ string) []string {
			return append(fcNet(data), "daemon", "--bootstrap", "garbage")
		}, `--bootstrap "garbage" is not a multiaddr`, false},
		{"bootstrap without /p2p/", func(t *testing.T, data, _ string) []string {
			return append(fcNet(data), "daemon", "--bootstrap", "/ip4/127.0.0.1/tcp/1")
		}, `does not end in /p2p/PEER_ID`, false},
		{"bootstrap trailing comma", func(t *testing.T, data, _ string) []string {
			return append(fcNet(data), "daemon", "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/"+fcPeerID+",")
		}, `--bootstrap has an empty address`, false},
		{"bootstrap unreachable (one-shot submit)", func(t *testing.T, data, _ string) []string {
			return p2p(data, "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/"+fcPeerID)
		}, `could not reach any bootstrap peer.*connection refused`, false},
		{"listen garbage", func(t *testing.T, data, _ string) []string {
			return append(fcNet(data), "daemon", "--listen", "garbage")
		}, `--listen "garbage" is not a multiaddr`, false},
		{"data is a regular file", func(t *testing.T, data, _ string) []string {
			if err := os.WriteFile(data, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			return append(fcNet(data), "daemon")
		}, `--data .* is a file, not a directory`, false},
		{"data directory read-only", func(t *testing.T, data, _ string) []string {
			if err := os.Mkdir(data, 0o555); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Chmod(data, 0o700) })
			return append(fcNet(data), "daemon")
		}, `permission denied|not writable`, true},
		{"data directory in use", func(t *testing.T, data, tmp string) []string {
			startDaemon(t, data, t.TempDir())
			return append(fcNet(data), "daemon")
		}, `data directory .* in use`, false},
		{"identity.key corrupt", func(t *testing.T, data, _ string) []string {
			if err := os.Mkdir(data, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(data, "identity.key"), []byte("not a key\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return append(fcNet(data), "daemon")
		}, `identity key .*identity\.key is corrupt.*move it aside`, false},
		{"log level", func(t *testing.T, data, _ string) []string {
			return append(fcNet(data), "daemon", "--log-level", "loud")
		}, `--log-level "loud"`, false},
		{"unknown flag", func(t *testing.T, data, _ string) []string {
			return append(fcNet(data), "daemon", "--bogus")
		}, `unknown flag: --bogus \(see .gpunet daemon --help.\)`, false},
		{"submit size 0x0", func(t *testing.T, data, _ string) []string {
			return p2p(data, "--size", "0x0")
		}, `--size 0x0: each side must be 64 to 2048`, false},
		{"submit steps 0", func(t *testing.T, data, _ string) []string {
			return p2p(data, "--steps", "0")
		}, `"--steps" flag: want a whole number from 1 to 150`, false},
		{"submit negative seed", func(t *testing.T, data, _ string) []string {
			return p2p(data, "--seed", "-1")
		}, `"--seed" flag: want a whole number from 1 to`, false},
		{"submit p2p with no way to find peers", func(t *testing.T, data, _ string) []string {
			return p2p(data)
		}, `--p2p with --mdns=false has no way to find peers`, false},
		{"host generator missing", func(t *testing.T, data, _ string) []string {
			return append(fcNet(data), "host", "--gpu", "none", "--kernel", "cmd", "--kernel-cmd", "/nonexistent/generator",
				"--kernel-models", protocol.DefaultModel)
		}, `generator "/nonexistent/generator" not found: give its full path`, false},
		{"host generator fails its check", func(t *testing.T, data, _ string) []string {
			return append(fcNet(data), "host", "--gpu", "none", "--kernel", "cmd", "--kernel-cmd", failing,
				"--kernel-models", protocol.DefaultModel)
		}, `failed its start-up check .*no GPU found`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			data := filepath.Join(t.TempDir(), "data")
			args := c.args(t, data, tmp)
			ctx, cancel := context.WithTimeout(context.Background(), fcWait)
			defer cancel()
			cmd := fcCommand(ctx, t, tmp, args...)
			if c.unprivileged && os.Geteuid() == 0 {
				asNobody(t, cmd, tmp, filepath.Dir(data))
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			code := exitCode(t, cmd.Run())
			if ctx.Err() != nil {
				t.Fatalf("gpunet %q still running after %v", args, fcWait)
			}
			if code != 1 {
				t.Errorf("gpunet %q exited %d, want 1; stderr:\n%s", args, code, stderr.String())
			}
			checkOneLine(t, stderr.String(), regexp.MustCompile(c.cause))
			checkNothingLeft(t, tmp)
		})
	}
}

// TestFirstContactInterrupt: Ctrl-C cuts a one-shot command short with exit
// status 130 and one line, and removes its ephemeral store; a daemon asked
// to stop by Ctrl-C shuts down cleanly and exits 0 (docs/usage.md, "Exit
// status").
func TestFirstContactInterrupt(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	t.Run("submit", func(t *testing.T) {
		// A bootstrap "peer" that accepts the connection and says nothing,
		// so the submit is certainly under way (dialling) when Ctrl-C comes.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				accepted <- c
			}
		}()
		port := ln.Addr().(*net.TCPAddr).Port
		tmp := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), fcWait)
		defer cancel()
		cmd := fcCommand(ctx, t, tmp, append([]string{"submit", "a quiet harbour", "--p2p",
			"--bootstrap", "/ip4/127.0.0.1/tcp/" + strconv.Itoa(port) + "/p2p/" + fcPeerID}, fcNet("")...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		select {
		case c := <-accepted:
			defer c.Close()
		case <-time.After(fcWait):
			_ = cmd.Process.Kill()
			t.Fatalf("submit did not dial its bootstrap peer within %v; stderr:\n%s", fcWait, stderr.String())
		}
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		code := exitCode(t, cmd.Wait())
		if ctx.Err() != nil {
			t.Fatalf("submit still running %v after SIGINT", fcWait)
		}
		if code != 130 {
			t.Errorf("submit exited %d after SIGINT, want 130; stderr:\n%s", code, stderr.String())
		}
		checkOneLine(t, stderr.String(), regexp.MustCompile(`^gpunet: interrupted`))
		checkNothingLeft(t, tmp)
	})
	t.Run("daemon", func(t *testing.T) {
		tmp := t.TempDir()
		d := startDaemon(t, filepath.Join(t.TempDir(), "data"), tmp)
		if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if !d.wait(fcWait) {
			t.Fatalf("daemon still running %v after SIGINT", fcWait)
		}
		if code := exitCode(t, d.waitErr); code != 0 {
			t.Errorf("daemon exited %d after SIGINT, want 0 (a clean shutdown)", code)
		}
		checkNothingLeft(t, tmp)
	})
}

// TestOutcome: the exit status and line main prints for each way a
// command can end.
func TestOutcome(t *testing.T) {
	joined := errors.Join(errors.New("invalid config: slots 0: want at least 1"), errors.New("queue length -1: want 0 or more"))
	for _, tc := range []struct {
		err      error
		sig      os.Signal
		code     int
		wantLine string
	}{
		{nil, nil, 0, ""},
		{nil, syscall.SIGINT, 0, ""}, // a daemon's clean stop
		{errors.New("--size 0x0: each side must be 64 to 2048"), nil, 1, "--size 0x0: each side must be 64 to 2048"},
		{joined, nil, 1, "invalid config: slots 0: want at least 1; queue length -1: want 0 or more"},
		{errors.New("all dials failed\n  * [/ip4/127.0.0.1/tcp/1] connection refused"), nil, 1, "all dials failed; * [/ip4/127.0.0.1/tcp/1] connection refused"},
		{errors.New("unknown command \"stauts\" for \"gpunet\"\n\nDid you mean this?\n\tstatus\n"), nil, 1, "unknown command \"stauts\" for \"gpunet\"; did you mean: status"},
		{context.Canceled, syscall.SIGINT, 130, "interrupted"},
		{errors.New("failed to dial: context canceled"), syscall.SIGINT, 130, "interrupted"},
		{context.Canceled, syscall.SIGTERM, 143, "terminated"},
		{errors.New("shutdown took longer than 15 s"), syscall.SIGINT, 130, "interrupted (shutdown took longer than 15 s)"},
	} {
		code, line := outcome(tc.err, tc.sig)
		if code != tc.code || line != tc.wantLine {
			t.Errorf("outcome(%q, %v) = %d, %q; want %d, %q", tc.err, tc.sig, code, line, tc.code, tc.wantLine)
		}
	}
}

// TestVersionCommand: `gpunet version` names the protocols, and
// `--version` still prints the version.
func TestVersionCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), fcWait)
	defer cancel()
	var v versionInfo
	runJSON(t, ctx, &v, "version", "--json")
	if v.Version == "" || v.Go == "" || v.Protocols["task"] != protocol.TaskProtocol || v.Protocols["fetch"] != protocol.FetchProtocol ||
		v.Protocols["beacon"] != protocol.BeaconTopic || v.Protocols["fraud"] != protocol.FraudTopic {
		t.Errorf("version --json printed %+v", v)
	}
	out, err := exec.CommandContext(ctx, gpunetBin, "version").Output()
	if err != nil || !strings.Contains(string(out), protocol.TaskProtocol) {
		t.Errorf("version printed %q, %v", out, err)
	}
	out, err = exec.CommandContext(ctx, gpunetBin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "gpunet version ") {
		t.Errorf("--version printed %q, %v", out, err)
	}
}

// asNobody makes cmd run as the unprivileged user nobody (uid and gid
// 65534), from a copy of the binary it may execute, with the directories
// it must reach opened to it: for the checks root's privileges would pass.
func asNobody(t *testing.T, cmd *exec.Cmd, dirs ...string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gpunet")
	b, err := os.ReadFile(gpunetBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range append(dirs, filepath.Dir(bin)) {
		// Each directory itself, and the way down to it from TMPDIR.
		for p := d; strings.HasPrefix(p, os.TempDir()+string(filepath.Separator)); p = filepath.Dir(p) {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			mode := fi.Mode().Perm() | 0o055
			if p == d && p != filepath.Dir(bin) {
				mode = 0o777
			}
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd.Path = bin
	cmd.Err = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
}
