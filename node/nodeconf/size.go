package nodeconf

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes, written in the file as a string with a unit
// ("1GiB", "500MB") because a budget in bytes is a number of ten digits a
// person miscounts. A bare integer is taken as bytes.
type Size int64

// Units of Size.
const (
	KiB Size = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

var units = []struct {
	name string
	size float64
}{
	{"TiB", float64(TiB)}, {"GiB", float64(GiB)}, {"MiB", float64(MiB)}, {"KiB", float64(KiB)},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"kB", 1e3}, {"B", 1},
}

// MarshalText writes the largest binary unit that holds s exactly.
func (s Size) MarshalText() ([]byte, error) {
	for _, u := range units[:4] {
		if n := int64(u.size); s != 0 && int64(s)%n == 0 {
			return []byte(strconv.FormatInt(int64(s)/n, 10) + u.name), nil
		}
	}
	return []byte(strconv.FormatInt(int64(s), 10) + "B"), nil
}

// UnmarshalText reads a number and an optional unit: B, KB, MB, GB, TB
// (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024).
func (s *Size) UnmarshalText(b []byte) error {
	text := strings.TrimSpace(string(b))
	num, mult := text, 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(text, u.name); ok {
			num, mult = strings.TrimSpace(n), u.size
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsInf(f*mult, 0) || f*mult > math.MaxInt64 {
		return fmt.Errorf("size %q: want a number and a unit, e.g. 1GiB or 500MB", text)
	}
	*s = Size(f * mult)
	return nil
}

func (s Size) String() string {
	b, _ := s.MarshalText()
	return string(b)
}
