package gateway

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// KeyPrefix starts every key NewKey makes, so that a key pasted in the
// wrong place (a log, a chat) is recognisable as a gpunet secret.
const KeyPrefix = "gpk_"

// maxKeysFile bounds the keys file: a line is under 200 bytes, so this is
// thousands of keys, and a wrong path (a disk image) fails fast.
const maxKeysFile = 1 << 20

// Key is one line of the keys file.
type Key struct {
	// Hash is sha256 of the key's bytes.
	Hash [sha256.Size]byte
	// Name is the key's holder as written in the file ("" if none).
	Name string
	// Rate is the key's request budget (zero: unlimited).
	Rate Rate
}

// Submitter is the identity the key's requests submit under: the node and
// the hosts share their places fairly between submitters.
func (k Key) Submitter() string {
	if k.Name != "" {
		return "key:" + k.Name
	}
	return "key:" + hex.EncodeToString(k.Hash[:4])
}

// Rate is a token bucket: N requests per Per, at most N at once.
type Rate struct {
	N   float64
	Per time.Duration
}

func (r Rate) String() string {
	if r.N == 0 {
		return "unlimited"
	}
	u := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h"}[r.Per]
	return strconv.FormatFloat(r.N, 'f', -1, 64) + "/" + u
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,40}$`)

// ParseKeys reads a keys file: one key a line,
//
//	sha256:<64 hex digits> [name] [rate=N/s|N/m|N/h]
//
// with # starting a comment and blank lines ignored. The name (letters,
// digits and ._@-, at most 40) names the key's submitter; keys that share a
// name share a fair share (a rotation). It refuses anything else, plain
// keys above all: the file must never hold a secret.
func ParseKeys(r io.Reader) ([]Key, error) {
	var keys []Key
	seen := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(io.LimitReader(r, maxKeysFile+1))
	read, lineNo := 0, 0
	for sc.Scan() {
		lineNo++
		read += len(sc.Bytes()) + 1
		if read > maxKeysFile {
			return nil, fmt.Errorf("keys file over %d KiB", maxKeysFile>>10)
		}
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		k, err := parseLine(fields)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		if prev, ok := seen[k.Hash]; ok {
			return nil, fmt.Errorf("line %d: the same key as line %d", lineNo, prev)
		}
		seen[k.Hash] = lineNo
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading keys: %w", err)
	}
	return keys, nil
}

func parseLine(fields []string) (Key, error) {
	var k Key
	h, ok := strings.CutPrefix(fields[0], "sha256:")
	if !ok {
		if strings.HasPrefix(fields[0], KeyPrefix) {
			return k, errors.New("a plain key: the file holds only hashes (`gpunet gateway-key new` prints the line to add)")
		}
		return k, fmt.Errorf("%q: want sha256:<64 hex digits>", fields[0])
	}
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return k, fmt.Errorf("sha256:%s: want 64 hex digits", h)
	}
	copy(k.Hash[:], b)
	for _, f := range fields[1:] {
		if v, ok := strings.CutPrefix(f, "rate="); ok {
			if k.Rate.N != 0 {
				return k, errors.New("two rates")
			}
			if k.Rate, err = parseRate(v); err != nil {
				return k, err
			}
			continue
		}
		if k.Name != "" {
			return k, fmt.Errorf("%q: want at most a name and rate=N/s", f)
		}
		if !nameRE.MatchString(f) {
			return k, fmt.Errorf("name %q: want 1 to 40 letters, digits or ._@-", f)
		}
		k.Name = f
	}
	return k, nil
}

func parseRate(v string) (Rate, error) {
	n, unit, ok := strings.Cut(v, "/")
	per := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	f, err := strconv.ParseFloat(n, 64)
	if !ok || per == 0 || err != nil || !(f > 0) || f > 1e6 {
		return Rate{}, fmt.Errorf("rate=%s: want N/s, N/m or N/h with N > 0, e.g. rate=2/s", v)
	}
	return Rate{N: f, Per: per}, nil
}

// NewKey makes a random key and the keys-file line that admits it.
func NewKey(name string, rate string) (key, line string, err error) {
	if name != "" && !nameRE.MatchString(name) {
		return "", "", fmt.Errorf("name %q: want 1 to 40 letters, digits or ._@-", name)
	}
	if rate != "" {
		if _, err := parseRate(rate); err != nil {
			return "", "", err
		}
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	key = KeyPrefix + hex.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(key))
	line = "sha256:" + hex.EncodeToString(sum[:])
	if name != "" {
		line += " " + name
	}
	if rate != "" {
		line += " rate=" + rate
	}
	return key, line, nil
}

// match finds the key whose hash is sha256(presented). It compares with
// every key in constant time and without stopping early, so the time
// taken says nothing about how close a guess came nor which key matched.
func match(keys []Key, presented string) (Key, bool) {
	sum := sha256.Sum256([]byte(presented))
	found := -1
	for i := range keys {
		if subtle.ConstantTimeCompare(sum[:], keys[i].Hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Key{}, false
	}
	return keys[found], true
}

// bucket is one key's token bucket. Only called with the gateway's mutex
// held.
type bucket struct {
	rate   Rate
	tokens float64
	last   time.Time
}

// take spends a token if there is one; otherwise it says how long until
// there is.
func (b *bucket) take(now time.Time) (bool, time.Duration) {
	burst := max(1, b.rate.N)
	perToken := float64(b.rate.Per) / b.rate.N
	b.tokens = min(burst, b.tokens+float64(now.Sub(b.last))/perToken)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) * perToken)
}
