package reach

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/libp2p/go-libp2p/core/pnet"
)

// SwarmKeyFile is the swarm key's name in the data directory: a node that
// finds it there joins the private swarm without a flag, as Kubo does with
// IPFS_PATH/swarm.key.
const SwarmKeyFile = "swarm.key"

// The swarm key format, Kubo's: a header line, an encoding line, the key.
const (
	keyHeader  = "/key/swarm/psk/1.0.0/"
	encBase16  = "/base16/"
	encBase64  = "/base64/"
	keyLen     = 32
	maxKeyFile = 4 << 10 // a key file is ~90 bytes; anything large is not one
)

// GenerateSwarmKey returns a new random swarm key in Kubo's format,
// base16-encoded, ready to be written to a file.
func GenerateSwarmKey() ([]byte, error) {
	key := make([]byte, keyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating swarm key: %w", err)
	}
	return EncodeSwarmKey(key), nil
}

// EncodeSwarmKey writes a 32-byte key in Kubo's format, base16.
func EncodeSwarmKey(key pnet.PSK) []byte {
	return []byte(keyHeader + "\n" + encBase16 + "\n" + hex.EncodeToString(key) + "\n")
}

// WriteSwarmKey generates a key and writes it to path, readable by its
// owner only. It never replaces a file: a key overwritten by mistake cuts
// the node off from its swarm, so an existing file is an error that
// matches fs.ErrExist.
func WriteSwarmKey(path string) error {
	data, err := GenerateSwarmKey()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists: a new key would cut this node off from its swarm; remove the file first if you mean to replace it: %w", path, fs.ErrExist)
		}
		return fmt.Errorf("writing swarm key: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("writing swarm key %s: %w", path, err)
	}
	return nil
}

// DecodeSwarmKey reads a key in Kubo's format: the header line
// /key/swarm/psk/1.0.0/, an encoding line (/base16/, as Kubo and
// `gpunet swarm-key generate` write, or /base64/), then exactly 32 bytes
// in that encoding. It is stricter than pnet.DecodeV1PSK, which ignores
// what follows the key: a key truncated or pasted twice is refused rather
// than half-used. Errors are one line saying what is wrong.
func DecodeSwarmKey(data []byte) (pnet.PSK, error) {
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("%d bytes is not a swarm key (one is about 90 bytes)", len(data))
	}
	lines := strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n")
	// A trailing newline (or several) is what editors leave.
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 || lines[0] != keyHeader {
		return nil, fmt.Errorf("first line is not %s: not a swarm key file", keyHeader)
	}
	if len(lines) != 3 {
		return nil, fmt.Errorf("want 3 lines (%s, an encoding such as %s, the key), got %d", keyHeader, encBase16, len(lines))
	}
	body := strings.TrimSpace(lines[2])
	var key []byte
	switch enc := strings.TrimSpace(lines[1]); enc {
	case encBase16:
		if len(body) != 2*keyLen {
			return nil, fmt.Errorf("key is %d hex digits, want %d (32 bytes)", len(body), 2*keyLen)
		}
		k, err := hex.DecodeString(body)
		if err != nil {
			return nil, errors.New("key is not hexadecimal (0-9, a-f)")
		}
		key = k
	case encBase64:
		k, err := base64.StdEncoding.DecodeString(body)
		if err != nil {
			return nil, errors.New("key is not base64")
		}
		if len(k) != keyLen {
			return nil, fmt.Errorf("key is %d bytes, want %d", len(k), keyLen)
		}
		key = k
	default:
		return nil, fmt.Errorf("encoding %q: want %s (or %s)", enc, encBase16, encBase64)
	}
	if bytes.Count(key, []byte{0}) == keyLen {
		return nil, errors.New("key is all zeros: generate one with `gpunet swarm-key generate`")
	}
	return key, nil
}

// LoadSwarmKey reads and decodes the key file at path. The error names the
// file and says what to do.
func LoadSwarmKey(path string) (pnet.PSK, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("swarm key %s: no such file: copy the swarm's key there, or create a new swarm with `gpunet swarm-key generate %s`", path, path)
		}
		return nil, fmt.Errorf("swarm key %s: %w", path, err)
	}
	key, err := DecodeSwarmKey(data)
	if err != nil {
		return nil, fmt.Errorf("swarm key %s: %w: copy the key file from a node of the swarm again, or make one with `gpunet swarm-key generate`", path, err)
	}
	return key, nil
}

// SwarmKeyPath is the key file a node uses: flag when given, else
// DATA/swarm.key when that exists, else "" (no private swarm).
func SwarmKeyPath(flag, dataDir string) string {
	if flag != "" {
		return flag
	}
	if dataDir == "" {
		return ""
	}
	p := filepath.Join(dataDir, SwarmKeyFile)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return ""
}
