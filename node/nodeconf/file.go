package nodeconf

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/BurntSushi/toml"
)

// Load reads the file at path over Defaults: keys it leaves out keep
// their defaults. md says which keys it defines (for Merge). A relative
// gateway.api_keys comes back absolute, joined to path's directory. Every error
// is one line that names the file: a syntax error with its line and
// column, an unknown key (a typo would otherwise be ignored in silence),
// a value of the wrong type or out of range. A missing file is an error
// that matches fs.ErrNotExist.
func Load(path string) (File, toml.MetaData, error) {
	f := Defaults()
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := pe.Message
			if pe.LastKey != "" {
				msg = pe.LastKey + ": " + msg
			}
			return File{}, md, fmt.Errorf("%s:%d:%d: %s", path, pe.Position.Line, pe.Position.Col, oneLine(msg))
		}
		if errors.Is(err, fs.ErrNotExist) {
			return File{}, md, fmt.Errorf("reading configuration: %w", err)
		}
		// A value of the wrong type: toml's message names the line.
		return File{}, md, fmt.Errorf("%s: %s", path, oneLine(strings.TrimPrefix(err.Error(), "toml: ")))
	}
	if un := md.Undecoded(); len(un) > 0 {
		keys := make([]string, len(un))
		for i, k := range un {
			keys[i] = k.String()
		}
		return File{}, md, fmt.Errorf("%s: unknown key %s: the keys are %s (docs/usage.md, \"Configuration file\")",
			path, strings.Join(keys, ", "), strings.Join(Keys(), ", "))
	}
	if err := f.Validate(); err != nil {
		return File{}, md, fmt.Errorf("%s: %s", path, oneLine(err.Error()))
	}
	if k := f.Gateway.APIKeys; k != "" && !filepath.IsAbs(k) {
		// Relative to the file, not to the directory the daemon was
		// started in: a service manager starts it in /, a person anywhere.
		abs, err := filepath.Abs(filepath.Join(filepath.Dir(path), k))
		if err != nil {
			return File{}, md, fmt.Errorf("%s: gateway.api_keys = %q: %w", path, k, err)
		}
		f.Gateway.APIKeys = abs
	}
	return f, md, nil
}

// oneLine joins the lines of a message with "; ", so that every error of
// this package is one line a person can read and a script can grep.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// Write writes f to path as the commented template, replacing any file
// there (atomically: a crash leaves the old file or the new, not half).
func Write(path string, f File) error {
	tmp, err := render(path, f)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing configuration: %w", err)
	}
	return nil
}

// Create is Write that never replaces a file: when path exists it returns
// an error that matches fs.ErrExist, also when another process created
// the file a moment earlier.
func Create(path string, f File) error {
	tmp, err := render(path, f)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("writing configuration: %w", err)
	}
	return nil
}

// render writes the template for f to a temporary file beside path.
func render(path string, f File) (string, error) {
	if err := f.Validate(); err != nil {
		return "", fmt.Errorf("configuration to write: %s", oneLine(err.Error()))
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, f); err != nil {
		return "", fmt.Errorf("rendering configuration: %w", err)
	}
	t, err := os.CreateTemp(filepath.Dir(path), "."+FileName+".*")
	if err != nil {
		return "", fmt.Errorf("writing configuration: %w", err)
	}
	_, err = t.Write(buf.Bytes())
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(t.Name(), 0o600)
	}
	if err != nil {
		os.Remove(t.Name())
		return "", fmt.Errorf("writing configuration: %w", err)
	}
	return t.Name(), nil
}

// value writes v as a TOML value: through the toml encoder, so that
// strings are quoted and escaped as TOML wants, not as Go does.
func value(v any) (string, error) {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(map[string]any{"v": v}); err != nil {
		return "", err
	}
	return strings.TrimSpace(strings.TrimPrefix(buf.String(), "v = ")), nil
}

var tmpl = template.Must(template.New(FileName).Funcs(template.FuncMap{"v": value}).Parse(`# gpunet configuration, read by gpunet daemon and gpunet host at start.
#
# A flag given on the command line wins over this file, and this file over
# the defaults. "gpunet config show" prints the effective configuration and
# where each value came from; docs/usage.md ("Configuration file") lists
# the keys. A key this file does not know is an error, not ignored.
# The data directory itself is --data or $GPUNET_HOME, never set here.
#
# Not here yet: compute backends (gpunet has none so far); a key that
# does nothing would mislead.

# Peers to join through: multiaddrs ending in /p2p/PEER_ID, as a running
# daemon prints after "join with:". Remembered peers (peers.json) are
# redialled without them.
bootstrap = {{v .Bootstrap}}

# Where to accept peers: libp2p multiaddrs.
listen = {{v .Listen}}

# The local HTTP API: for this machine's user, keep it on loopback.
api = {{v .API}}

# Find peers on the local network with mDNS.
mdns = {{v .MDNS}}

# Logs go to stderr. log_level: debug, info, warn or error. log_format:
# text (key=value) or json (one object a line). go-libp2p's own logs join
# the same stream, in the same format, at the same level.
log_level = {{v .LogLevel}}
log_format = {{v .LogFormat}}

[store]
# Results kept in DATA/store at most, least recently used evicted first.
# Units: B, KB, MB, GB, TB or KiB, MiB, GiB, TiB.
budget = {{v .Store.Budget}}

# Read by gpunet host only.
[host]
# The kernel that runs tasks: sketch, noop or cmd. With cmd, kernel_cmd is
# the generator to run (split on spaces, no shell) and kernel_models the
# models it serves; see docs/kernels.md.
kernel = {{v .Host.Kernel}}
kernel_cmd = {{v .Host.KernelCmd}}
kernel_models = {{v .Host.KernelModels}}

# GPU telemetry: auto, nvml[:N], nvidia-smi[:N], sim:PROFILE or none.
gpu = {{v .Host.GPU}}

# Tasks run at once, and tasks that may wait for a slot before the host
# refuses with busy (the client then tries another host).
slots = {{v .Host.Slots}}
queue = {{v .Host.Queue}}

# °C the GPU must never pass because of gpunet; 0: 5 °C under the GPU's
# own slowdown temperature.
max_temp = {{v .Host.MaxTemp}}

# Tasks per second one submitter may start here; 0: unlimited.
rate_limit = {{v .Host.RateLimit}}

# Lending hours: when, in this machine's local time, the host takes work,
# as HH:MM-HH:MM; "22:00-07:00" lends the GPU overnight (a window may wrap
# past midnight). Outside them the host pauses itself, apart from
# "gpunet host pause", which only the owner undoes. "": every hour.
hours = {{v .Host.Hours}}

# Image backends this host also serves (or serves alone, when kernel is not
# set here or by --kernel), each "KIND=URL[,OPTION=VALUE...]" as --backend
# takes it: a1111, comfyui or openai; e.g. ["a1111=http://127.0.0.1:7860"].
backends = {{v .Host.Backends}}

# The gateway (docs/openai.md, "Gateway"): the OpenAI routes served beyond
# loopback, to the holders of the API keys in api_keys, one
# "sha256:HASH [name] [rate=N/s]" a line ("gpunet gateway-key new" makes a
# key). Off unless both keys are set, as --gateway and --api-keys; one
# without the other is an error. A relative api_keys is relative to this
# file's directory. Speaks plain HTTP: keep listen on loopback or a
# private address and put a TLS proxy in front.
[gateway]
{{if .Gateway.Listen}}listen = {{v .Gateway.Listen}}{{else}}# listen = "127.0.0.1:8080"{{end}}
{{if .Gateway.APIKeys}}api_keys = {{v .Gateway.APIKeys}}{{else}}# api_keys = "/etc/gpunet/api-keys"{{end}}
`))
