package node

import (
	"context"
	"errors"
	"fmt"
	"math"
)

// ErrNotHost is returned by a host setting asked of a node that runs no
// kernel: it has nothing to limit.
var ErrNotHost = errors.New("this daemon is not a host")

// ErrBadLimit is wrapped by a limit the owner gave out of its range; the
// message says the range.
var ErrBadLimit = errors.New("out of range")

// The range of the owner's temperature limit at runtime. Under 30 °C a GPU
// idles warmer than the limit and the host would never take work; above
// 120 °C no GPU is still running. 0 is the device default rule.
const (
	MinMaxTempC = 30
	MaxMaxTempC = 120
)

// SetMaxTemp changes the host's temperature limit while it runs, as
// --max-temp sets it at start: c in °C from MinMaxTempC to MaxMaxTempC,
// or 0 for 5 °C under the GPU's slowdown temperature (none without GPU
// telemetry). It returns the limit now in force. The governor judges the
// next reading by it, and the host's next beacon, sent early, tells the
// swarm. The change lasts until the host stops: the config file and flags
// still say what it starts with.
func (n *Node) SetMaxTemp(ctx context.Context, c float64) (float64, error) {
	if n.serve == nil {
		return 0, ErrNotHost
	}
	if math.IsNaN(c) || (c != 0 && (c < MinMaxTempC || c > MaxMaxTempC)) {
		return 0, fmt.Errorf("max_temp_c %v °C: %w: want %d to %d °C, or 0 for 5 °C under the GPU's slowdown temperature",
			c, ErrBadLimit, MinMaxTempC, MaxMaxTempC)
	}
	if c == 0 {
		c = deviceMaxTemp(ctx, n.cfg)
	}
	old := n.serve.setMaxTemp(c)
	n.serve.log.Info("owner set the temperature limit", "old_c", old, "new_c", c)
	return c, nil
}

// deviceMaxTemp is the default limit, 5 °C under the GPU's slowdown
// temperature, so gpunet never drives a GPU into hardware throttling; 0
// without telemetry. Node.start applies it to a zero Config.MaxTempC.
func deviceMaxTemp(ctx context.Context, cfg Config) float64 {
	if cfg.Device == nil {
		return 0
	}
	t, err := cfg.Device.Telemetry(ctx)
	if err != nil || t.SlowdownTempC <= 0 {
		return 0
	}
	return t.SlowdownTempC - 5
}
