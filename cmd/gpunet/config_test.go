package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/gateway"
	"github.com/gpunet/gpunet/node/nodeconf"
	golog "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/gologshim"
)

// The configuration file (issue 12): `gpunet init` writes it, a daemon or
// host reads it before its flags, flags win, `gpunet config show` says
// where each value came from, and a mistake in it is one line, exit 1.
// These tests run the binary built by TestMain, on loopback, mDNS off.

// configShown is `gpunet config show --json`.
type configShown struct {
	File       string `json:"file"`
	FileExists bool   `json:"file_exists"`
	Settings   map[string]struct {
		Value  any             `json:"value"`
		Source nodeconf.Source `json:"source"`
	} `json:"settings"`
}

func showConfig(t *testing.T, env []string, args ...string) configShown {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fcWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, gpunetBin, append([]string{"config", "show", "--json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("config show %v: %v; stderr:\n%s", args, err, stderr.String())
	}
	var c configShown
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatalf("config show --json printed %q: %v", out, err)
	}
	return c
}

func TestInitWritesTheFile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	data := filepath.Join(t.TempDir(), "data") // init creates it
	path := filepath.Join(data, nodeconf.FileName)
	if _, stderr, code := runBounded(t, "init", "--data", data); code != 0 {
		t.Fatalf("init exited %d: %s", code, stderr)
	}
	got, _, err := nodeconf.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, nodeconf.Defaults()) {
		t.Errorf("init wrote %+v, want the defaults", got)
	}
	// A second init keeps the file, an edited one above all.
	if err := os.WriteFile(path, []byte("[host]\nslots = 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runBounded(t, "init", "--data", data)
	if code != 1 {
		t.Errorf("init over an existing file exited %d, want 1", code)
	}
	checkOneLine(t, stderr, regexp.MustCompile(regexp.QuoteMeta(path)+` exists: .*--force`))
	if b, _ := os.ReadFile(path); string(b) != "[host]\nslots = 2\n" {
		t.Errorf("init replaced the file without --force:\n%s", b)
	}
	if _, stderr, code := runBounded(t, "init", "--data", data, "--force"); code != 0 {
		t.Fatalf("init --force exited %d: %s", code, stderr)
	}
	if got, _, err := nodeconf.Load(path); err != nil || got.Host.Slots != 1 {
		t.Errorf("after init --force: slots %d, %v; want the default 1", got.Host.Slots, err)
	}
}

// TestConfigShowSources: a value in the file is used and shown as "file";
// the same key given as a flag wins and is shown as "flag"; a key neither
// sets is "default", and $GPUNET_HOME is "env".
func TestConfigShowSources(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	data := t.TempDir()
	file := "api = \"127.0.0.1:9911\"\nlog_format = \"json\"\n[store]\nbudget = \"256MiB\"\n[host]\nslots = 3\nbackends = [\"a1111=http://127.0.0.1:7860\"]\n"
	if err := os.WriteFile(filepath.Join(data, nodeconf.FileName), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	type want struct {
		value  any
		source nodeconf.Source
	}
	check := func(c configShown, wants map[string]want) {
		t.Helper()
		for k, w := range wants {
			got, ok := c.Settings[k]
			if !ok {
				t.Errorf("config show has no %s", k)
				continue
			}
			if !reflect.DeepEqual(got.Value, w.value) || got.Source != w.source {
				t.Errorf("%s = %v (%s), want %v (%s)", k, got.Value, got.Source, w.value, w.source)
			}
		}
	}
	c := showConfig(t, nil, "--data", data)
	if !c.FileExists || c.File != filepath.Join(data, nodeconf.FileName) {
		t.Errorf("file %q exists %v", c.File, c.FileExists)
	}
	check(c, map[string]want{
		"data":          {data, nodeconf.FromFlag},
		"api":           {"127.0.0.1:9911", nodeconf.FromFile},
		"log_format":    {"json", nodeconf.FromFile},
		"store.budget":  {"256MiB", nodeconf.FromFile},
		"host.slots":    {3.0, nodeconf.FromFile}, // JSON numbers decode as float64
		"host.queue":    {8.0, nodeconf.FromDefault},
		"mdns":          {true, nodeconf.FromDefault},
		"host.backends": {[]any{"a1111=http://127.0.0.1:7860"}, nodeconf.FromFile},
	})
	c = showConfig(t, nil, "--data", data, "--api", "127.0.0.1:9922", "--log-format", "text")
	check(c, map[string]want{
		"api":        {"127.0.0.1:9922", nodeconf.FromFlag},
		"log_format": {"text", nodeconf.FromFlag},
		"host.slots": {3.0, nodeconf.FromFile},
	})
	// No --data: $GPUNET_HOME, where there is no file yet.
	home := filepath.Join(t.TempDir(), "home")
	c = showConfig(t, []string{"GPUNET_HOME=" + home})
	check(c, map[string]want{"data": {home, nodeconf.FromEnv}, "api": {node.DefaultAPIAddr, nodeconf.FromDefault}})
	if c.FileExists {
		t.Error("config show reports a file in an empty GPUNET_HOME")
	}
	if _, err := os.Stat(home); err == nil {
		t.Error("config show created the data directory; only init and a start may")
	}
}

// TestConfigMistakesAreOneLine: an unknown key or a syntax error stops a
// daemon before it starts anything, with one line naming the file and
// where, exit 1.
func TestConfigMistakesAreOneLine(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	for _, c := range []struct {
		name, file, cause string
	}{
		{"unknown key", "[host]\nslot = 2\n", `unknown key host\.slot: the keys are .*host\.slots`},
		{"syntax error", "api = \"127.0.0.1:7447\"\nmdns = = false\n", `:2:\d+: `},
		{"bad value", "log_format = \"xml\"\n", `log_format = "xml": want text or json`},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := t.TempDir()
			path := filepath.Join(data, nodeconf.FileName)
			if err := os.WriteFile(path, []byte(c.file), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{
				append([]string{"daemon"}, fcNet(data)...),
				{"config", "show", "--data", data},
			} {
				_, stderr, code := runBounded(t, args...)
				if code != 1 {
					t.Errorf("gpunet %v exited %d, want 1", args, code)
				}
				checkOneLine(t, stderr, regexp.MustCompile(regexp.QuoteMeta(path)+".*"+c.cause))
			}
			if _, err := os.Stat(filepath.Join(data, "identity.key")); err == nil {
				t.Error("the daemon made an identity before it read its configuration")
			}
		})
	}
}

// TestDaemonReadsFileFlagsWinJSONLogs: a daemon uses a value of the file
// (the store budget, which only the file sets: its "results store
// opened" line reports it) and a flag beats the file (--log-format json
// over log_format = "text"): every stderr line while it runs is a JSON
// object.
func TestDaemonReadsFileFlagsWinJSONLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	data := t.TempDir()
	file := "log_format = \"text\"\n[store]\nbudget = \"256MiB\"\n"
	if err := os.WriteFile(filepath.Join(data, nodeconf.FileName), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gpunetBin, "daemon", "--data", data, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--api", "127.0.0.1:0", "--mdns=false", "--log-level", "info", "--log-format", "json")
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(os.Interrupt)
		for range lines { // drain, so that Wait can return
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("daemon exited with %v after SIGINT", err)
		}
	}
	defer stop()

	deadline := time.After(fcWait) // only against a hang; nothing is timed
	var budget float64
	for started := false; !started; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the daemon exited before it started")
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("stderr line is not JSON (%v): %s", err, l)
			}
			if rec["level"] == nil || rec["msg"] == nil || rec["time"] == nil {
				t.Errorf("JSON line without time, level and msg: %s", l)
			}
			switch rec["msg"] {
			case "results store opened":
				budget, _ = rec["budget"].(float64)
			case "node started":
				started = true
			}
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("the daemon did not start within %v", fcWait)
		}
	}
	if budget != 256<<20 {
		t.Errorf("store budget %v, want the file's 256MiB (%d)", budget, 256<<20)
	}
	stop()
}

// TestFlagDefaultsAreTheFileDefaults: nodeconf repeats the flags'
// defaults (it must not import node); they must not drift apart.
func TestFlagDefaultsAreTheFileDefaults(t *testing.T) {
	root := newRootCmd()
	host, _, err := root.Find([]string{"host"})
	if err != nil {
		t.Fatal(err)
	}
	def := nodeconf.Defaults()
	_, settings := nodeconf.Merge(def, func(string) bool { return false }, def, toml.MetaData{})
	for _, s := range settings {
		name := flagOf[s.Key]
		if name == "" {
			continue
		}
		fl := host.Flags()
		if fl.Lookup(name) == nil {
			fl = root.PersistentFlags()
		}
		var got any
		switch s.Value.(type) {
		case string:
			got, err = fl.GetString(name)
		case []string:
			if fl.Lookup(name).Value.Type() == "stringArray" { // --backend: a value may hold commas
				got, err = fl.GetStringArray(name)
			} else {
				got, err = fl.GetStringSlice(name)
			}
		case bool:
			got, err = fl.GetBool(name)
		case int:
			got, err = fl.GetInt(name)
		case float64:
			got, err = fl.GetFloat64(name)
		}
		if err != nil {
			t.Errorf("--%s: %v", name, err)
			continue
		}
		if s.Key == "log_level" && got == "" {
			got = "info" // "" is the per-command default: info for daemon and host
		}
		if ss, ok := got.([]string); ok && len(ss) == 0 {
			got = []string{} // no default: nil or empty, the same list
		}
		if !reflect.DeepEqual(got, s.Value) {
			t.Errorf("--%s defaults to %#v, the file's %s to %#v", name, got, s.Key, s.Value)
		}
	}
	if int64(def.Store.Budget) != node.DefaultConfig().StoreBudget {
		t.Errorf("store.budget defaults to %d, node.Config's StoreBudget to %d", def.Store.Budget, node.DefaultConfig().StoreBudget)
	}
}

// TestLibp2pLogsRouted: go-libp2p's slog loggers (gologshim) and the
// go-log (zap) loggers of the DHT and its kin write through the handler
// routeLibp2pLogs is given, at its level, with their subsystem as
// "logger".
func TestLibp2pLogsRouted(t *testing.T) {
	var buf bytes.Buffer
	routeLibp2pLogs(newLogHandler(&buf, "json", slog.LevelInfo), slog.LevelInfo)
	t.Cleanup(func() { // as go-log's own default: errors only, on stderr
		routeLibp2pLogs(newLogHandler(os.Stderr, "text", slog.LevelError), slog.LevelError)
	})
	zl := golog.Logger("gpunet-test-zap")
	zl.Infow("from go-log", "n", 7)
	zl.Debugw("below the level")
	gologshim.Logger("gpunet-test-slog").Info("from gologshim", "n", 8)
	gologshim.Logger("gpunet-test-slog").Debug("below the level")

	want := map[string]string{"from go-log": "gpunet-test-zap", "from gologshim": "gpunet-test-slog"}
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("line is not JSON (%v): %q", err, l)
		}
		msg, _ := rec["msg"].(string)
		if msg == "below the level" {
			t.Errorf("a debug line passed an info handler: %s", l)
			continue
		}
		if logger, ok := want[msg]; ok {
			if rec["logger"] != logger || rec["level"] != "INFO" || rec["n"] == nil {
				t.Errorf("line %s: want logger %s, level INFO and n", l, logger)
			}
			delete(want, msg)
		}
	}
	for msg := range want {
		t.Errorf("%q never reached the handler; got:\n%s", msg, buf.String())
	}
}

// gatewayDaemon is a `gpunet daemon --json` run from dir (its working
// directory), until the subtest ends; gateway is the address its gateway
// listens on, "" when it runs none.
func gatewayDaemon(t *testing.T, dir, data string, extra ...string) (gateway string) {
	t.Helper()
	gateway, _ = runningDaemon(t, dir, data, extra...)["gateway"].(string)
	return gateway
}

// runningDaemon starts a daemon in dir on data with --json and returns
// the object it prints once running; it is stopped when the test ends.
func runningDaemon(t *testing.T, dir, data string, extra ...string) (running map[string]any) {
	t.Helper()
	cmd := exec.Command(gpunetBin, append(append([]string{"daemon", "--json"}, fcNet(data)...), extra...)...)
	cmd.Dir = dir
	var stderr bytes.Buffer // read only after Wait
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error // set before exited is closed
	started := make(chan map[string]any, 1)
	go func() {
		var running map[string]any
		if json.NewDecoder(out).Decode(&running) == nil {
			started <- running
		}
		_, _ = io.Copy(io.Discard, out) // to its end, as Wait requires
		waitErr = cmd.Wait()
		close(exited)
	}()
	select {
	case running = <-started:
	case <-exited:
		t.Fatalf("daemon exited before it was running (%v); stderr:\n%s", waitErr, stderr.String())
	case <-time.After(fcWait):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("daemon not running after %v; stderr:\n%s", fcWait, stderr.String())
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
			if waitErr != nil {
				t.Errorf("daemon exited with %v after SIGINT; stderr:\n%s", waitErr, stderr.String())
			}
		case <-time.After(fcWait):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("daemon did not stop within %v of SIGINT", fcWait)
		}
	})
	return running
}

// gatewayStatus is the status of GET /v1/models on the gateway at addr
// with key ("": none).
func gatewayStatus(t *testing.T, addr, key string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/models", nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /v1/models on the gateway: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// writeKeysFile writes a keys file admitting one fresh key, and returns
// the key.
func writeKeysFile(t *testing.T, path, name string) string {
	t.Helper()
	key, line, err := gateway.NewKey(name, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return key
}

// TestGatewayFromConfigFile: a [gateway] table starts the gateway with no
// flag, its relative api_keys read beside the file (the daemon runs from
// another directory, where no such file is), and config show reports
// both keys as the file's with the path resolved.
func TestGatewayFromConfigFile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	data := t.TempDir()
	key := writeKeysFile(t, filepath.Join(data, "api-keys"), "alice")
	file := "[gateway]\nlisten = \"127.0.0.1:0\"\napi_keys = \"api-keys\"\n"
	if err := os.WriteFile(filepath.Join(data, nodeconf.FileName), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	c := showConfig(t, nil, "--data", data)
	for k, want := range map[string]string{"gateway.listen": "127.0.0.1:0", "gateway.api_keys": filepath.Join(data, "api-keys")} {
		if got := c.Settings[k]; got.Value != want || got.Source != nodeconf.FromFile {
			t.Errorf("config show: %s = %v (%s), want %s (file)", k, got.Value, got.Source, want)
		}
	}
	addr := gatewayDaemon(t, t.TempDir(), data)
	if addr == "" {
		t.Fatal("the daemon runs no gateway; the file sets one")
	}
	if code := gatewayStatus(t, addr, key); code != http.StatusOK {
		t.Errorf("with the file's key: %d, want 200", code)
	}
	if code := gatewayStatus(t, addr, ""); code != http.StatusUnauthorized {
		t.Errorf("without a key: %d, want 401", code)
	}
}

// TestGatewayFlagsOverFile: --gateway and --api-keys beat the file's
// listen (an address already taken: were it used, the daemon could not
// start) and api_keys (the file's key is refused, the flag's admitted);
// --gateway "" turns the file's gateway off, its keys file with it.
func TestGatewayFlagsOverFile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	data, other := t.TempDir(), t.TempDir()
	fileKey := writeKeysFile(t, filepath.Join(data, "api-keys"), "file")
	flagKeys := filepath.Join(other, "api-keys")
	flagKey := writeKeysFile(t, flagKeys, "flag")
	file := "[gateway]\nlisten = \"" + taken.Addr().String() + "\"\napi_keys = \"api-keys\"\n"
	if err := os.WriteFile(filepath.Join(data, nodeconf.FileName), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("flags win", func(t *testing.T) {
		addr := gatewayDaemon(t, data, data, "--gateway", "127.0.0.1:0", "--api-keys", flagKeys)
		if addr == "" || addr == taken.Addr().String() {
			t.Fatalf("gateway on %q, want the flag's 127.0.0.1:0", addr)
		}
		if code := gatewayStatus(t, addr, flagKey); code != http.StatusOK {
			t.Errorf("with the --api-keys key: %d, want 200", code)
		}
		if code := gatewayStatus(t, addr, fileKey); code != http.StatusUnauthorized {
			t.Errorf("with the file's key: %d, want 401 (--api-keys replaces the file's keys)", code)
		}
	})
	t.Run("flag turns it off", func(t *testing.T) {
		if addr := gatewayDaemon(t, data, data, "--gateway="); addr != "" {
			t.Errorf("gateway on %s after --gateway \"\"", addr)
		}
	})
}

// TestGatewayConfigMistakes: half a gateway (in the file, or a flag that
// undoes half of the file's) and an unknown key of [gateway] stop daemon
// and host before they start anything, with one line, exit 1; config show
// names the file's mistakes too.
func TestGatewayConfigMistakes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	for _, c := range []struct {
		name, file string
		flags      []string // given to daemon and host; none: config show runs too
		cause      string   // after the file's path when flags is nil
	}{
		{"listen without api_keys", "[gateway]\nlisten = \"127.0.0.1:0\"\n", nil,
			"gateway\\.listen without gateway\\.api_keys would be an open API: set api_keys to a keys file \\(`gpunet gateway-key new --name NAME` makes a key\\)$"},
		{"api_keys without listen", "[gateway]\napi_keys = \"api-keys\"\n", nil,
			`gateway\.api_keys without gateway\.listen serves nothing: set listen = "HOST:PORT", or remove api_keys$`},
		{"unknown key", "[gateway]\naddr = \"127.0.0.1:8080\"\n", nil,
			`unknown key gateway\.addr: the keys are .*gateway\.listen, gateway\.api_keys`},
		{"listen not HOST:PORT", "[gateway]\nlisten = \"8080\"\napi_keys = \"api-keys\"\n", nil,
			`gateway\.listen = "8080": want HOST:PORT`},
		{"--api-keys empty over the file", "[gateway]\nlisten = \"127.0.0.1:0\"\napi_keys = \"api-keys\"\n",
			[]string{"--api-keys="}, `--gateway needs --api-keys FILE \(or gateway\.api_keys in the configuration file\)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := t.TempDir()
			path := filepath.Join(data, nodeconf.FileName)
			if err := os.WriteFile(path, []byte(c.file), 0o600); err != nil {
				t.Fatal(err)
			}
			cause := regexp.MustCompile(c.cause)
			runs := [][]string{
				append(append([]string{"daemon"}, fcNet(data)...), c.flags...),
				append(append([]string{"host", "--gpu", "none"}, fcNet(data)...), c.flags...),
			}
			if c.flags == nil {
				cause = regexp.MustCompile(regexp.QuoteMeta(path) + ": " + c.cause)
				runs = append(runs, []string{"config", "show", "--data", data})
			}
			for _, args := range runs {
				_, stderr, code := runBounded(t, args...)
				if code != 1 {
					t.Errorf("gpunet %v exited %d, want 1", args, code)
				}
				checkOneLine(t, stderr, cause)
			}
		})
	}
}

// TestMetricsAddress: --metrics serves GET /metrics, and only that, on an
// address of its own.
func TestMetricsAddress(t *testing.T) {
	data := t.TempDir()
	running := runningDaemon(t, data, data, "--metrics", "127.0.0.1:0")
	addr, _ := running["metrics"].(string)
	if addr == "" {
		t.Fatalf("no metrics address in %v", running)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "gpunet_build_info") {
		t.Errorf("GET /metrics: %d, %.200s; want 200 with gpunet_build_info", code, body)
	}
	for _, p := range []string{"/", "/v1/status", "/v1/host/pause", "/v1/models"} {
		if code, _ := get(p); code != http.StatusNotFound {
			t.Errorf("GET %s on the metrics address: %d, want 404", p, code)
		}
	}
}
