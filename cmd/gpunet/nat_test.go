package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/node"
)

// The kernel-NAT test builds a small Internet out of network namespaces:
//
//	wan (11.47.0.2)  ── relay daemon, clients
//	  │ veth
//	rtr (11.47.0.1 | 10.47.0.1)  ── nftables masquerade, forwards only
//	  │ veth                         replies into the LAN (a home router)
//	lan (10.47.0.2)  ── the volunteer host
//
// The "Internet" side uses addresses of a public range, not 10/8: go-libp2p's
// AutoNAT and AutoRelay act on public addresses only (manet.IsPublicAddr),
// so a relay on 10.x would never be found public nor its address used. The
// namespaces have no link to any other network, so no packet can leave
// them, and the test touches no interface but the veths it creates inside
// them (deleted with the namespaces).
const (
	natWANRouter = "11.47.0.1"
	natWANPeer   = "11.47.0.2"
	natLANRouter = "10.47.0.1"
	natLANHost   = "10.47.0.2"
	natBigSide   = 1248 // 1248² RGBA, stored uncompressed: 6.2 MB
)

// natLab is the three namespaces of one test.
type natLab struct {
	wan, rtr, lan string
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNATLab builds the namespaces, or fails saying what is missing. They
// are removed when the test ends, after the processes in them are stopped
// (t.Cleanup runs last-registered first).
func newNATLab(t *testing.T) *natLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the NAT test builds network namespaces and needs root (CI runs as root): run it as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the NAT test needs iproute2's ip: apt-get install -y iproute2")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		if out, err := exec.Command("apt-get", "install", "-y", "-qq", "nftables").CombinedOutput(); err != nil {
			t.Fatalf("the NAT test needs nft and could not install it (apt-get install -y nftables): %v\n%s", err, out)
		}
	}
	id := fmt.Sprintf("gpn%d", os.Getpid()%100000)
	l := &natLab{wan: id + "-wan", rtr: id + "-rtr", lan: id + "-lan"}
	t.Cleanup(func() {
		for _, ns := range []string{l.wan, l.rtr, l.lan} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	for _, ns := range []string{l.wan, l.rtr, l.lan} {
		sh(t, "ip", "netns", "add", ns)
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// Each veth is created with both ends inside the namespaces.
	sh(t, "ip", "link", "add", "eth0", "netns", l.wan, "type", "veth", "peer", "name", "wan0", "netns", l.rtr)
	sh(t, "ip", "link", "add", "eth0", "netns", l.lan, "type", "veth", "peer", "name", "lan0", "netns", l.rtr)
	for _, c := range [][]string{
		{l.wan, "eth0", natWANPeer}, {l.rtr, "wan0", natWANRouter}, {l.rtr, "lan0", natLANRouter}, {l.lan, "eth0", natLANHost},
	} {
		sh(t, "ip", "-n", c[0], "addr", "add", c[2]+"/24", "dev", c[1])
		sh(t, "ip", "-n", c[0], "link", "set", c[1], "up")
	}
	sh(t, "ip", "-n", l.lan, "route", "add", "default", "via", natLANRouter)
	sh(t, "ip", "netns", "exec", l.rtr, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	rules := `table ip gpunet_nat {
	chain postrouting { type nat hook postrouting priority srcnat; oifname "wan0" masquerade; }
	chain forward { type filter hook forward priority filter; policy drop;
		iifname "lan0" oifname "wan0" accept
		iifname "wan0" oifname "lan0" ct state established,related accept
	}
}`
	cmd := exec.Command("ip", "netns", "exec", l.rtr, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nftables masquerade rule: %v\n%s", err, out)
	}
	return l
}

// start runs `gpunet ARGS` in namespace ns, stops it with SIGINT when the
// test ends, and returns what it printed at start (--json).
func (l *natLab) start(t *testing.T, ns string, args ...string) peerInfo {
	t.Helper()
	// ip netns exec execs gpunet in place: the signal reaches it.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, gpunetBin}, args...)...)
	var info peerInfo
	startJSON(t, cmd, "gpunet "+args[0], false, &info)
	return info
}

// run runs a gpunet command to completion in ns and decodes its JSON.
func (l *natLab) run(t *testing.T, ctx context.Context, ns string, v any, args ...string) error {
	t.Helper()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, gpunetBin}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("gpunet %s: %v: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("gpunet %s printed %q: %v", args[0], out, err)
	}
	return nil
}

// status is `gpunet status --json` of the node whose API is api, in ns.
func (l *natLab) status(t *testing.T, ctx context.Context, ns, api string) node.Status {
	t.Helper()
	var st node.Status
	if err := l.run(t, ctx, ns, &st, "status", "--json", "--api", api); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitStatus polls a node's status once a second until ok holds, at most
// tries times; it returns the last status and whether ok held.
func (l *natLab) waitStatus(t *testing.T, ctx context.Context, ns, api string, tries int, ok func(node.Status) bool) (node.Status, bool) {
	t.Helper()
	var st node.Status
	for range tries {
		if st = l.status(t, ctx, ns, api); ok(st) {
			return st, true
		}
		select {
		case <-ctx.Done():
			return st, false
		case <-time.After(time.Second):
		}
	}
	return st, false
}

// noiseGenerator is a generator (docs/kernels.md) whose PNG is seeded
// noise stored without compression: width × height × 4 bytes, so a
// 1248² task's result is 6.2 MB, far past a default relay's 128 KiB.
const noiseGenerator = `package main

import (
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"math/rand/v2"
	"os"
)

func main() {
	var t struct{ Seed uint64; Steps, Width, Height int }
	if err := json.NewDecoder(os.Stdin).Decode(&t); err != nil {
		fmt.Fprintln(os.Stderr, "bad task:", err)
		os.Exit(2)
	}
	r := rand.New(rand.NewPCG(t.Seed, 47))
	img := image.NewNRGBA(image.Rect(0, 0, t.Width, t.Height))
	for i := range img.Pix {
		img.Pix[i] = byte(r.Uint32())
	}
	for k := 1; k <= t.Steps; k++ {
		fmt.Fprintf(os.Stderr, "progress %d %d\n", k, t.Steps)
	}
	enc := png.Encoder{CompressionLevel: png.NoCompression}
	if err := enc.Encode(os.Stdout, img); err != nil {
		os.Exit(1)
	}
}
`

func buildNoiseGenerator(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(noiseGenerator), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "noise")
	if out, err := exec.Command("go", "build", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("building the noise generator: %v\n%s", err, out)
	}
	return bin
}

// TestVolunteerBehindNATServesThroughRelay: a host behind a kernel NAT
// (nftables masquerade, no port forwarding) joins with one command, finds
// out it is private, takes a relay slot on the public daemon, and serves a
// client on the public side through the relay: a 6.2 MB result arrives
// byte for byte. The daemon finds out it is public and runs the relay.
//
// It fails without the relay service (the host gets no relay address),
// without AutoRelay (likewise), and with go-libp2p's default relay limits
// (the result is cut off at 128 KiB).
func TestVolunteerBehindNATServesThroughRelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lab := newNATLab(t)
	gen := buildNoiseGenerator(t)

	// The relay's operator knows the machine is reachable and says so, as
	// docs/nat.md advises: with auto, AutoNAT v2 confirms it through the
	// host, but only after minutes (v1 probes only through peers that have
	// a public address, and the only other peer here is behind NAT).
	relay := lab.start(t, lab.wan, "daemon", "--data", t.TempDir(), "--listen", "/ip4/"+natWANPeer+"/tcp/4001",
		"--api", "127.0.0.1:7501", "--mdns=false", "--json", "--log-level", "info", "--reachability", "public")
	var boot string
	for _, a := range relay.Addrs {
		if strings.Contains(a, natWANPeer) {
			boot = a
		}
	}
	if boot == "" {
		t.Fatalf("relay daemon's addresses %v: none on %s", relay.Addrs, natWANPeer)
	}
	// The volunteer's one command: a host that knows only the daemon.
	start := time.Now()
	host := lab.start(t, lab.lan, "host", "--data", t.TempDir(), "--listen", "/ip4/0.0.0.0/tcp/4001",
		"--api", "127.0.0.1:7502", "--mdns=false", "--json", "--log-level", "info", "--bootstrap", boot,
		"--gpu", "none", "--kernel", "cmd", "--kernel-cmd", gen, "--kernel-models", "test/noise", "--rate-limit", "0")

	st, ok := lab.waitStatus(t, ctx, lab.lan, "127.0.0.1:7502", 90, func(s node.Status) bool {
		return s.Reach.Reachability == "private" && len(s.Reach.Relay) > 0
	})
	if !ok {
		t.Fatalf("host behind NAT: reachability %q, relay addresses %v after 90 s; want private with a relay address", st.Reach.Reachability, st.Reach.Relay)
	}
	t.Logf("host private with relay address %s after %v", st.Reach.Relay[0], time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(st.Reach.Relay[0], natWANPeer) || !strings.Contains(st.Reach.Relay[0], relay.PeerID) {
		t.Errorf("relay address %s is not through the daemon %s", st.Reach.Relay[0], relay.PeerID)
	}
	if rs := lab.status(t, ctx, lab.wan, "127.0.0.1:7501"); rs.Reach.Reachability != "public" || !rs.Reach.RelayService {
		t.Errorf("relay daemon on the public side: %q, relay service %v; want public and relaying", rs.Reach.Reachability, rs.Reach.RelayService)
	}

	// A client on the public side with no listen address of its own: the
	// relay is its only way to the host, so the whole result crosses it.
	out := filepath.Join(t.TempDir(), "noise.png")
	var res submitJSON
	if err := lab.run(t, ctx, lab.wan, &res, "submit", "static over the wire", "--p2p", "--mdns=false", "--json",
		"--bootstrap", boot, "--model", "test/noise", "--size", fmt.Sprintf("%dx%d", natBigSide, natBigSide),
		"--steps", "2", "--seed", "7", "-o", out); err != nil {
		t.Fatalf("task through the relay: %v", err)
	}
	if res.Host != host.PeerID {
		t.Fatalf("served by %s, want the host behind NAT %s", res.Host, host.PeerID)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// The same generator run here gives the bytes the host made.
	want := runGenerator(t, gen, fmt.Sprintf(`{"seed":7,"steps":2,"width":%d,"height":%d}`, natBigSide, natBigSide))
	if len(got) < 6_000_000 || sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("result: %d bytes, want the generator's %d bytes exactly", len(got), len(want))
	}
	t.Logf("6.2 MB result through the relay in %.0f ms (client's elapsed)", res.ElapsedMs)
}

func runGenerator(t *testing.T, bin, task string) []byte {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Stdin = strings.NewReader(task)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("generator: %v", err)
	}
	return out
}
