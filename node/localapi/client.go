package localapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
)

// maxLine bounds one NDJSON line from the API: a result carries its outputs
// inline, base64.
const maxLine = 4 * (protocol.MaxOutputs*protocol.MaxBlockBytes/3 + 64<<10)

// Client talks to a node's local API.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient returns a client for the API at addr (HOST:PORT).
func NewClient(addr string) *Client {
	return &Client{base: "http://" + addr, hc: &http.Client{}}
}

// ErrNoDaemon means nothing answered at the API address.
var ErrNoDaemon = errors.New("no gpunet daemon answers at the local API address")

// Ping reports whether a daemon answers, within timeout.
func (c *Client) Ping(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var st node.Status
	if err := c.get(ctx, "/v1/status", &st); err != nil {
		return err
	}
	return nil
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (node.Status, error) {
	var st node.Status
	err := c.get(ctx, "/v1/status", &st)
	return st, err
}

// Peers returns the daemon's connected peers.
func (c *Client) Peers(ctx context.Context) ([]node.PeerInfo, error) {
	var ps []node.PeerInfo
	err := c.get(ctx, "/v1/peers", &ps)
	return ps, err
}

// Models lists the models the daemon's swarm serves, from the OpenAI
// Images API's GET /v1/models (a daemon started by gpunet serves it).
func (c *Client) Models(ctx context.Context) ([]string, error) {
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := c.get(ctx, "/v1/models", &list); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(list.Data))
	for _, m := range list.Data {
		ids = append(ids, m.ID)
	}
	return ids, nil
}

// SetPaused pauses or resumes the daemon's host and returns its status.
func (c *Client) SetPaused(ctx context.Context, paused bool) (node.Status, error) {
	path := "/v1/host/resume"
	if paused {
		path = "/v1/host/pause"
	}
	return c.postStatus(ctx, path, nil)
}

// SetLimits changes the daemon's host limits (the fields of req that are
// set) and returns its status.
func (c *Client) SetLimits(ctx context.Context, req LimitsRequest) (node.Status, error) {
	return c.postStatus(ctx, "/v1/host/limits", req)
}

// postStatus POSTs body to path and decodes the node status it answers.
func (c *Client) postStatus(ctx context.Context, path string, body any) (node.Status, error) {
	var st node.Status
	resp, err := c.post(ctx, path, body)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
}

// post sends body (none when nil) as JSON to path and returns a 200
// response for the caller to read and close; any other status becomes the
// API's error.
func (c *Client) post(ctx context.Context, path string, body any) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoDaemon, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// Submit sends a task and calls progress for each progress line.
func (c *Client) Submit(ctx context.Context, req SubmitRequest, progress func(node.Progress)) (*TaskResult, error) {
	resp, err := c.post(ctx, "/v1/tasks", req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		var l Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("decoding API line: %w", err)
		}
		switch {
		case l.Error != nil:
			return nil, fmt.Errorf("daemon: %s", l.Error.Message)
		case l.Result != nil:
			return l.Result, nil
		case l.Progress != nil && progress != nil:
			progress(*l.Progress)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading API stream: %w", err)
	}
	return nil, errors.New("daemon closed the stream before a result")
}

func (c *Client) get(ctx context.Context, path string, v any) error {
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(hr)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoDaemon, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v)
}

func decodeError(resp *http.Response) error {
	var e Error
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e); err != nil || e.Message == "" {
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	return fmt.Errorf("daemon: %s", e.Message)
}
