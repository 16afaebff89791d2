package nodeconf

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestTemplateRoundTrip: the template Write produces, read back, is
// Defaults, and defines every key (so that a key added to File without a
// line in the template fails here).
func TestTemplateRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := Create(path, Defaults()); err != nil {
		t.Fatal(err)
	}
	got, md, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, Defaults()) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, Defaults())
	}
	for _, k := range Keys() {
		// The gateway's keys are written commented out: an example
		// value would start a gateway, and an empty one reads as a key
		// to fill in rather than as "off".
		if strings.HasPrefix(k, "gateway.") {
			continue
		}
		if !md.IsDefined(strings.Split(k, ".")...) {
			t.Errorf("the template does not write %s", k)
		}
	}
	if err := Create(path, Defaults()); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Create over an existing file: %v, want fs.ErrExist", err)
	}
	// Write replaces, and what it writes is read back.
	f := Defaults()
	f.Host.Slots, f.Bootstrap = 3, []string{"/ip4/10.0.0.1/tcp/4747/p2p/12D3KooWGzBvYhJm3fQmH5QbNAvxHyP3cmdFwVk8YRngvQ8bFx1B"}
	f.Gateway = Gateway{Listen: "127.0.0.1:8080", APIKeys: "/etc/gpunet/api-keys"}
	if err := Write(path, f); err != nil {
		t.Fatal(err)
	}
	if got, _, err := Load(path); err != nil || !reflect.DeepEqual(got, f) {
		t.Errorf("after Write: %+v, %v; want %+v", got, err, f)
	}
	if _, _, err := Load(filepath.Join(t.TempDir(), FileName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
}

// TestLoadValues: values parse into their fields, and keys the file
// leaves out keep their defaults.
func TestLoadValues(t *testing.T) {
	path := write(t, `
api = "127.0.0.1:9000"
listen = ["/ip4/127.0.0.1/tcp/0"]
mdns = false
log_format = "json"
[store]
budget = "512MiB"
[host]
slots = 4
max_temp = 78.5
kernel_models = ["a/b", "c/d"]
`)
	got, md, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.API, want.Listen, want.MDNS, want.LogFormat = "127.0.0.1:9000", []string{"/ip4/127.0.0.1/tcp/0"}, false, "json"
	want.Store.Budget = 512 * MiB
	want.Host.Slots, want.Host.MaxTemp, want.Host.KernelModels = 4, 78.5, []string{"a/b", "c/d"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
	if !md.IsDefined("host", "slots") || md.IsDefined("host", "queue") {
		t.Error("metadata: want host.slots defined and host.queue not")
	}
}

// TestLoadErrors: every error is one line naming the file, and says what
// is wrong where.
func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"unknown key", "[host]\nslot = 2\n", []string{"unknown key host.slot", "host.slots"}},
		{"unknown table", "[gateways]\nlisten = \"x\"\n", []string{"unknown key gateways"}},
		{"unknown gateway key", "[gateway]\naddr = \"x\"\n", []string{"unknown key gateway.addr", "gateway.listen, gateway.api_keys"}},
		{"gateway listen without keys", "[gateway]\nlisten = \"0.0.0.0:8080\"\n", []string{"gateway.listen without gateway.api_keys", "open API", "gateway-key new"}},
		{"gateway keys without listen", "[gateway]\napi_keys = \"keys\"\n", []string{"gateway.api_keys without gateway.listen", `set listen = "HOST:PORT"`, "remove api_keys"}},
		{"gateway listen not host:port", "[gateway]\nlisten = \"8080\"\napi_keys = \"keys\"\n", []string{`gateway.listen = "8080"`, "HOST:PORT"}},
		{"syntax", "api = \"127.0.0.1:7447\"\nslots = = 3\n", []string{":2:"}},
		{"unclosed string", "log_level = \"info\n", []string{":1:"}},
		{"wrong type", "[host]\nslots = \"four\"\n", []string{"line 2", "host.slots"}},
		{"bad size", "[store]\nbudget = \"lots\"\n", []string{"lots"}},
		{"bad level", "log_level = \"loud\"\n", []string{"log_level", "loud"}},
		{"bad format", "log_format = \"xml\"\n", []string{"log_format", "xml"}},
		{"bootstrap without peer id", "bootstrap = [\"/ip4/10.0.0.1/tcp/4747\"]\n", []string{"bootstrap", "/p2p/PEER_ID"}},
		{"zero slots", "[host]\nslots = 0\n", []string{"host.slots = 0"}},
		{"bad hours", "[host]\nhours = \"10pm-7am\"\n", []string{"host.hours", "10pm-7am", "HH:MM-HH:MM"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := write(t, tc.text)
			_, _, err := Load(path)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			t.Log(msg)
			if strings.Contains(msg, "\n") {
				t.Errorf("more than one line: %q", msg)
			}
			for _, w := range append([]string{path}, tc.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("%q does not say %q", msg, w)
				}
			}
		})
	}
}

// TestMerge: a given flag beats the file, the file beats the default, and
// every key is reported with its source.
func TestMerge(t *testing.T) {
	path := write(t, "api = \"127.0.0.1:9000\"\n[host]\nslots = 4\nqueue = 2\n")
	file, md, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	base := Defaults()
	base.Host.Queue = 16 // as if --queue 16
	given := func(k string) bool { return k == "host.queue" }
	got, settings := Merge(base, given, file, md)
	if got.API != "127.0.0.1:9000" || got.Host.Slots != 4 || got.Host.Queue != 16 || got.Host.GPU != "auto" {
		t.Errorf("merged %+v", got)
	}
	src := map[string]Source{}
	for _, s := range settings {
		src[s.Key] = s.Source
	}
	want := map[string]Source{"api": FromFile, "host.slots": FromFile, "host.queue": FromFlag, "host.gpu": FromDefault, "store.budget": FromDefault}
	for k, w := range want {
		if src[k] != w {
			t.Errorf("%s: source %q, want %q", k, src[k], w)
		}
	}
	if len(settings) != len(Keys()) {
		t.Errorf("%d settings for %d keys", len(settings), len(Keys()))
	}
}

// TestValidHours holds the cases of node's TestParseLendHours: the two
// parsers must agree (validHours repeats node.ParseLendHours).
func TestValidHours(t *testing.T) {
	for _, in := range []string{"22:00-07:00", "9:30-17:05", " 08:00 - 18:00 ", "18:00-24:00", "00:00-00:00"} {
		if !validHours(in) {
			t.Errorf("validHours(%q) = false", in)
		}
	}
	for _, in := range []string{"", "22:00", "22-07", "22:00-07", "25:00-07:00", "22:60-07:00", "24:30-07:00",
		"+1:00-07:00", "22:00-07:00-08:00", "10pm-7am", "220:00-07:00", "-1:00-07:00"} {
		if validHours(in) {
			t.Errorf("validHours(%q) = true", in)
		}
	}
	path := write(t, "[host]\nhours = \"22:00-07:00\"\n")
	if f, _, err := Load(path); err != nil || f.Host.Hours != "22:00-07:00" {
		t.Errorf("hours from the file: %q, %v", f.Host.Hours, err)
	}
}

// TestGatewayKeysPath: a relative api_keys is relative to the file's
// directory, whatever the working directory; an absolute one is kept.
func TestGatewayKeysPath(t *testing.T) {
	t.Chdir(t.TempDir()) // not the file's directory
	for _, tc := range []struct{ in, want string }{
		{"api-keys", "api-keys"},
		{"../keys/gw", "../keys/gw"},
		{"/etc/gpunet/api-keys", "/etc/gpunet/api-keys"},
	} {
		path := write(t, "[gateway]\nlisten = \"127.0.0.1:8080\"\napi_keys = \""+tc.in+"\"\n")
		want := tc.want
		if !filepath.IsAbs(want) {
			want = filepath.Join(filepath.Dir(path), want)
		}
		f, md, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if f.Gateway.APIKeys != want || f.Gateway.Listen != "127.0.0.1:8080" || !md.IsDefined("gateway", "api_keys") {
			t.Errorf("api_keys = %q: read %+v, want api_keys %q", tc.in, f.Gateway, want)
		}
	}
}

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		out  string
	}{
		{"1GiB", GiB, "1GiB"}, {"512 MiB", 512 * MiB, "512MiB"}, {"1.5GiB", 1536 * MiB, "1536MiB"},
		{"500MB", 500e6, "500000000B"}, {"1024", KiB, "1KiB"}, {"10KB", 10000, "10000B"},
	} {
		var s Size
		if err := s.UnmarshalText([]byte(tc.in)); err != nil || s != tc.want || s.String() != tc.out {
			t.Errorf("%q: %d %q %v; want %d %q", tc.in, s, s.String(), err, tc.want, tc.out)
		}
	}
	for _, bad := range []string{"", "GiB", "-1GiB", "1PiB", "1e30GiB"} {
		var s Size
		if err := s.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("%q: no error (got %d)", bad, s)
		}
	}
}

func write(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), FileName)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
