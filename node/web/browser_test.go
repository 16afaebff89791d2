package web_test

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/nodetest"
	"github.com/gpunet/gpunet/node/web"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "also write the browser test's screenshot to docs/dashboard.png")

// chromiumPath is Debian's chromium, which .ci/run installs. The test
// never downloads a browser.
const chromiumPath = "/usr/bin/chromium"

// startHost starts a lone host on loopback with a simulated GPU, the
// dashboard observing it and its routes on the local API.
func startHost(t *testing.T) (*node.Node, *localapi.Server) {
	t.Helper()
	d := web.New()
	n := nodetest.Host(t, func(c *node.Config) {
		c.Device = nodetest.SimGPU(t, "h100")
		c.BeaconInterval = 200 * time.Millisecond
		c.Observers = []node.Observer{d}
	})
	s, err := localapi.Listen(n, "127.0.0.1:0", slog.New(slog.DiscardHandler), d.Routes(web.NodeSource{Node: n})...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return n, s
}

// TestDashboardInBrowser drives the page in headless Chromium: it loads
// with no console error, shows the host, runs a task from its prompt box
// to its image, and sets the temperature limit and pauses the host from
// the owner's controls.
func TestDashboardInBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("no browser at %s (%v): install chromium: apt-get install -y chromium", chromiumPath, err)
	}
	n, api := startHost(t)
	url := "http://" + api.Addr() + "/"

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.Headless,
		chromedp.WindowSize(1280, 1000), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelTab()
	// Every wait below is bounded by this one deadline.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	var mu sync.Mutex
	var pageErrs []string
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				pageErrs = append(pageErrs, "console.error: "+strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			pageErrs = append(pageErrs, fmt.Sprintf("uncaught exception at %s:%d: %s", d.URL, d.LineNumber+1, msg))
		}
	}); err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, err)
	}
	checkErrs := func(when string) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		for _, e := range pageErrs {
			t.Errorf("%s: %s", when, e)
		}
		pageErrs = nil
	}
	// poll waits, within ctx, for a JavaScript predicate.
	poll := func(js string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(time.Minute))
	}

	id := n.ID().String()
	// The host is not in its own gossip view; the page shows it from its
	// own status, first in the swarm table. The row needs the live stream.
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("loading the page: %v", err)
	}
	rowCtx, cancelRow := context.WithTimeout(ctx, 30*time.Second)
	defer cancelRow()
	if err := chromedp.Do(rowCtx, chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#swarm tbody tr.self[data-peer=%q]`, id)))); err != nil {
		t.Fatalf("waiting for the host's row, which the /v1/events stream brings: %v", err)
	}
	facts, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#node-facts")))
	if err != nil {
		t.Fatal(err)
	}
	checkErrs("loading the page")
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"undefined", "NaN", "null"} {
		if strings.Contains(body, bad) {
			t.Errorf("the page shows %q somewhere: a field the status leaves out when zero?\n%s", bad, body)
		}
	}
	if !strings.Contains(facts, id) || !strings.Contains(facts, "H100") {
		t.Errorf("node card %q: want the peer id %s and the simulated H100", facts, id)
	}

	// A task from the prompt box: its progress in the log, partial images
	// of the run, then its image from /v1/blocks/<cid>, loaded.
	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#prompt"), "a lighthouse on a cliff at dawn"),
		chromedp.SetValue(chromedp.CSS("#steps"), "12"),
		chromedp.SetValue(chromedp.CSS("#size"), "256"),
		chromedp.Click(chromedp.CSS("#go")),
		poll(`(() => { const i = document.querySelector("#sub-img"); return !i.closest("[hidden]") && (i.getAttribute("src") || "").startsWith("/v1/blocks/") && i.complete && i.naturalWidth > 0; })()`),
	); err != nil {
		t.Fatalf("submitting from the prompt box: %v", err)
	}
	src, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#sub-img"), "src"))
	if err != nil {
		t.Fatal(err)
	}
	width, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelector("#sub-img").naturalWidth`))
	if err != nil {
		t.Fatal(err)
	}
	log, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#sub-log")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(src.Value, "/v1/blocks/bafk") || width != 256 {
		t.Errorf("result image src %q, %d px wide: want a raw block from /v1/blocks/, 256 px", src.Value, width)
	}
	if !strings.Contains(log, "running on") || !strings.Contains(log, "step 12 of 12") {
		t.Errorf("progress log %q: want the host running it, step by step to 12 of 12", log)
	}
	if !strings.Contains(log, "partial image at step") {
		t.Errorf("progress log %q: want the host's partial images of the run", log)
	}

	// The result reaches the recent results through the stream; its
	// thumbnail opens the full image with its CIDs.
	if err := chromedp.Do(ctx,
		poll(`(() => { const i = document.querySelector("#recent .thumb img"); return !!i && i.complete && i.naturalWidth > 0; })()`),
		chromedp.Click(chromedp.CSS("#recent .thumb")),
		chromedp.WaitVisible(chromedp.CSS("#viewer-img")),
	); err != nil {
		t.Fatalf("waiting for the recent result: %v", err)
	}
	cids, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#viewer-cids")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cids, strings.TrimPrefix(src.Value, "/v1/blocks/")) || !strings.Contains(cids, "ResultCID") {
		t.Errorf("viewer shows %q: want the output's CID and the ResultCID", cids)
	}

	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#viewer .close")),
		chromedp.WaitNotVisible(chromedp.CSS("#viewer")),
	); err != nil {
		t.Fatalf("closing the viewer: %v", err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	saveScreenshot(t, shot)

	// Set the temperature limit from the owner's controls: the host's
	// governor takes it, and the page shows it back from the stream.
	if before := n.Status(ctx).MaxTempC; before == 71 {
		t.Fatalf("the simulated H100 starts with a limit of 71 °C: pick another value to set")
	}
	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#max-temp"), "71"),
		chromedp.Click(chromedp.CSS("#set-limit")),
		poll(`document.querySelector("#owner-msg").textContent === "limit set to 71 °C"`),
		poll(`document.querySelector("#max-temp").placeholder === "71"`),
	); err != nil {
		t.Fatalf("setting the limit from the page: %v", err)
	}
	if got := n.Status(ctx).MaxTempC; got != 71 {
		t.Errorf("the page set the limit to 71 °C, but the status says %v °C", got)
	}

	// Pause from the owner's controls: the host pauses, and the page says so.
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#pause")),
		poll(`document.querySelector("#host-state").textContent === "paused"`),
	); err != nil {
		t.Fatalf("pausing from the page: %v", err)
	}
	if !n.Status(ctx).Paused {
		t.Error("the page shows the host paused, but its status is not")
	}
	checkErrs("after the task and the pause")
}

func saveScreenshot(t *testing.T, png []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "dashboard.png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d KB)", p, len(png)/1000)
	if *updateScreenshot {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "dashboard.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
