package reach

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/pnet"
)

// TestSwarmKeyIsKubosFormat: a generated key reads back the same through
// go-libp2p's own decoder (what Kubo uses), and through ours.
func TestSwarmKeyIsKubosFormat(t *testing.T) {
	data, err := GenerateSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) != 4 || lines[0] != "/key/swarm/psk/1.0.0/" || lines[1] != "/base16/" || len(lines[2]) != 64 || lines[3] != "" {
		t.Fatalf("not Kubo's format:\n%s", data)
	}
	theirs, err := pnet.DecodeV1PSK(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	ours, err := DecodeSwarmKey(data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ours, theirs) || len(ours) != 32 {
		t.Fatalf("decoders disagree: %x vs %x", ours, theirs)
	}
	again, _ := GenerateSwarmKey()
	if bytes.Equal(again, data) {
		t.Fatal("two generated keys are equal")
	}
}

func TestSwarmKeyDecodeRefusesGarbage(t *testing.T) {
	const hdr = "/key/swarm/psk/1.0.0/\n"
	hex64 := strings.Repeat("ab", 32)
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", "first line"},
		{"bad header", "/key/swarm/psk/2.0.0/\n/base16/\n" + hex64 + "\n", "first line"},
		{"no key line", hdr + "/base16/\n", "3 lines"},
		{"extra line", hdr + "/base16/\n" + hex64 + "\n" + hex64 + "\n", "3 lines"},
		{"short key", hdr + "/base16/\n" + hex64[:40] + "\n", "40 hex digits"},
		{"long key", hdr + "/base16/\n" + hex64 + "00\n", "66 hex digits"},
		{"not hex", hdr + "/base16/\n" + strings.Repeat("zz", 32) + "\n", "not hexadecimal"},
		{"unknown encoding", hdr + "/base58/\n" + hex64 + "\n", "encoding"},
		{"bin encoding", hdr + "/bin/\n" + strings.Repeat("x", 32) + "\n", "encoding"},
		{"base64 short", hdr + "/base64/\nYWJj\n", "3 bytes"},
		{"base64 garbage", hdr + "/base64/\n!!!!\n", "not base64"},
		{"all zeros", hdr + "/base16/\n" + strings.Repeat("00", 32) + "\n", "all zeros"},
		{"huge", hdr + strings.Repeat("a", 5000), "not a swarm key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeSwarmKey([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
	// What editors do to a good key still reads.
	for _, in := range []string{hdr + "/base16/\n" + hex64, hdr + "/base16/\n" + hex64 + "\n\n", strings.ReplaceAll(hdr+"/base16/\n"+hex64+"\n", "\n", "\r\n")} {
		if _, err := DecodeSwarmKey([]byte(in)); err != nil {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// FuzzDecodeSwarmKey: any input gives a 32-byte key or a one-line error,
// never a panic, and a key it accepts encodes back to one it accepts.
func FuzzDecodeSwarmKey(f *testing.F) {
	good, _ := GenerateSwarmKey()
	f.Add(good)
	f.Add([]byte("/key/swarm/psk/1.0.0/\n/base64/\nq83vq83vq83vq83vq83vq83vq83vq83vq83vq83vq80=\n"))
	f.Add([]byte("/key/swarm/psk/1.0.0/\n/base16/\nzz\n"))
	f.Add([]byte("/key/swarm/psk/1.0.0/\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		key, err := DecodeSwarmKey(in)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if len(key) != 32 {
			t.Fatalf("accepted a %d-byte key", len(key))
		}
		back, err := DecodeSwarmKey(EncodeSwarmKey(key))
		if err != nil || !bytes.Equal(back, key) {
			t.Fatalf("re-encoded key: %v", err)
		}
	})
}

func TestWriteSwarmKeyNeverReplaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), SwarmKeyFile)
	if err := WriteSwarmKey(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600: the key is the swarm's only secret", fi.Mode().Perm())
	}
	first, _ := os.ReadFile(path)
	err = WriteSwarmKey(path)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second write: %v, want fs.ErrExist", err)
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, first) {
		t.Fatal("the key was replaced")
	}
	if _, err := LoadSwarmKey(path); err != nil {
		t.Fatal(err)
	}
}

func TestLoadSwarmKeyErrorsSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadSwarmKey(filepath.Join(dir, "nope.key"))
	if err == nil || !strings.Contains(err.Error(), "gpunet swarm-key generate") {
		t.Errorf("missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad.key")
	os.WriteFile(bad, []byte("/key/swarm/psk/1.0.0/\n/base16/\nabc\n"), 0o600)
	_, err = LoadSwarmKey(bad)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "3 hex digits") || strings.Contains(err.Error(), "\n") {
		t.Errorf("bad file: %v", err)
	}
}

func TestSwarmKeyPath(t *testing.T) {
	dir := t.TempDir()
	if got := SwarmKeyPath("", dir); got != "" {
		t.Errorf("no key anywhere: %q", got)
	}
	if got := SwarmKeyPath("/x/y.key", dir); got != "/x/y.key" {
		t.Errorf("flag: %q", got)
	}
	p := filepath.Join(dir, SwarmKeyFile)
	if err := WriteSwarmKey(p); err != nil {
		t.Fatal(err)
	}
	if got := SwarmKeyPath("", dir); got != p {
		t.Errorf("data directory's key: %q, want %q", got, p)
	}
	if got := SwarmKeyPath("", ""); got != "" {
		t.Errorf("no data directory: %q", got)
	}
}
