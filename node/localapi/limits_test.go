package localapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/nodetest"
)

// TestSetLimits: the owner changes the temperature limit of a running host
// through the API; the status shows it, 0 brings back the device's own
// rule, and a bad request is refused with 400 and changes nothing.
func TestSetLimits(t *testing.T) {
	dev := nodetest.SimGPU(t, "h100")
	s, n := startAPIWith(t, func(c *node.Config) { c.Kernel, c.Device = kernel.Sketch{}, dev })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := localapi.NewClient(s.Addr())
	deviceRule := n.Status(ctx).MaxTempC
	if deviceRule == 0 || deviceRule == 75 {
		t.Fatalf("a simulated H100's default limit is %v °C: the test needs one other than 0 and 75", deviceRule)
	}

	limit := func(v float64) localapi.LimitsRequest { return localapi.LimitsRequest{MaxTempC: &v} }
	st, err := c.SetLimits(ctx, limit(75))
	if err != nil {
		t.Fatal(err)
	}
	if st.MaxTempC != 75 || n.Status(ctx).MaxTempC != 75 || st.ResumeTempC != 70 {
		t.Errorf("after setting 75 °C: answered %v (resume %v), status %v; want 75 (resume 70)", st.MaxTempC, st.ResumeTempC, n.Status(ctx).MaxTempC)
	}

	bad := map[string]string{
		"too cold":     `{"max_temp_c": 20}`,
		"too hot":      `{"max_temp_c": 121}`,
		"negative":     `{"max_temp_c": -5}`,
		"not a number": `{"max_temp_c": "hot"}`,
		"unknown key":  `{"max_temp": 80}`,
		"not JSON":     `max_temp_c=80`,
		"truncated":    `{"max_temp_c": 80`,
	}
	for name, body := range bad {
		resp, err := http.Post("http://"+s.Addr()+"/v1/host/limits", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var e localapi.Error
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || err != nil || e.Message == "" || strings.Contains(e.Message, "\n") {
			t.Errorf("%s: status %d (%+v, %v), want 400 with a one-line message", name, resp.StatusCode, e, err)
		}
	}
	resp, err := http.Post("http://"+s.Addr()+"/v1/host/limits", "text/plain", strings.NewReader(`{"max_temp_c": 80}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("a text/plain body: status %d, want 415", resp.StatusCode)
	}
	if got := n.Status(ctx).MaxTempC; got != 75 {
		t.Errorf("after refused requests the limit is %v °C, want 75 unchanged", got)
	}
	if st, err := c.SetLimits(ctx, localapi.LimitsRequest{}); err != nil || st.MaxTempC != 75 {
		t.Errorf("no keys: %v °C, %v; want 75 unchanged", st.MaxTempC, err)
	}
	if st, err := c.SetLimits(ctx, limit(0)); err != nil || st.MaxTempC != deviceRule {
		t.Errorf("0: %v °C, %v; want the device's rule, %v °C", st.MaxTempC, err, deviceRule)
	}
}

func TestSetLimitsNotAHost(t *testing.T) {
	s, _ := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := localapi.NewClient(s.Addr())
	v := 80.0
	for _, req := range []localapi.LimitsRequest{{MaxTempC: &v}, {}} {
		if _, err := c.SetLimits(ctx, req); err == nil || !strings.Contains(err.Error(), "not a host") {
			t.Errorf("limits %+v on a daemon without a kernel: %v, want a clear refusal", req, err)
		}
	}
	resp, err := http.Post("http://"+s.Addr()+"/v1/host/limits", "application/json", strings.NewReader(`{"max_temp_c": 80}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("status %d, want 409", resp.StatusCode)
	}
}
