package openai

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/ipfs/go-cid"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/protocol"
	"github.com/gpunet/gpunet/scheduler"
)

// Swarm is what the API needs of a node. Its methods must be safe for
// concurrent use: requests call them side by side, and one generation
// submits its n tasks at once. *node.Node is one.
type Swarm interface {
	// Submit runs a task and returns its verified result.
	Submit(ctx context.Context, t protocol.Task, opts node.SubmitOptions) (*node.Result, error)
	// View is the hosts this node hears, with the models each serves.
	View() scheduler.View
	// Models are the models this node serves itself (none unless a host).
	Models() []string
	// FindHosts asks the DHT for hosts of model: the view holds only the
	// hosts whose beacon shards this node hears, so a model missing from it
	// may still be served.
	FindHosts(ctx context.Context, model string, max int) ([]node.HostInfo, error)
	// PutInput stores an uploaded image as a raw block and returns its
	// CID, for a task's inputs: the host that runs the task fetches it
	// from this node.
	PutInput(ctx context.Context, data []byte) (cid.Cid, error)
}

var _ Swarm = (*node.Node)(nil)

// Option configures the API.
type Option func(*api)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(a *api) { a.log = l } }

type api struct {
	s   Swarm
	log *slog.Logger
}

// Routes returns the API's routes for the local API (localapi.Listen).
func Routes(s Swarm, opts ...Option) []localapi.Option {
	a := &api{s: s, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(a)
	}
	notServed := func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{status: http.StatusNotFound, Type: "invalid_request_error",
			Message: r.Method + " " + r.URL.Path + ": not served; this node serves GET /v1/models, POST /v1/images/generations and POST /v1/images/edits"})
	}
	return []localapi.Option{
		localapi.WithRoute("GET /v1/models", http.HandlerFunc(a.listModels)),
		localapi.WithRoute("GET /v1/models/{id...}", http.HandlerFunc(a.getModel)),
		localapi.WithRoute("POST /v1/images/generations", http.HandlerFunc(a.generations)),
		localapi.WithRoute("POST /v1/images/edits", http.HandlerFunc(a.edits)),
		// The rest of OpenAI's image routes answer in its error shape, so a
		// client says "not found" rather than failing to parse a page.
		localapi.WithRoute("/v1/images/", http.HandlerFunc(notServed)),
	}
}

// model is OpenAI's model object.
type model struct {
	ID     string `json:"id"`
	Object string `json:"object"`
	// Created is 0: gpunet does not know when a model was made.
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func newModel(id string) model { return model{ID: id, Object: "model", OwnedBy: "gpunet"} }

// served lists the models of the hosts in the view and of this node,
// sorted and without repeats.
func (a *api) served() []string {
	ms := slices.Clone(a.s.Models())
	for _, p := range a.s.View() {
		ms = append(ms, p.Models...)
	}
	slices.Sort(ms)
	return slices.Compact(ms)
}

// serves reports whether some host serves m: the view first, then the DHT.
func (a *api) serves(ctx context.Context, m string) bool {
	if slices.Contains(a.served(), m) {
		return true
	}
	hosts, err := a.s.FindHosts(ctx, m, 1)
	if err != nil {
		a.log.Debug("finding hosts", "model", m, "err", err)
	}
	return len(hosts) > 0
}

func (a *api) listModels(w http.ResponseWriter, r *http.Request) {
	data := []model{}
	for _, m := range a.served() {
		data = append(data, newModel(m))
	}
	writeJSON(w, http.StatusOK, struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{"list", data})
}

func (a *api) getModel(w http.ResponseWriter, r *http.Request) {
	id := strings.ToLower(r.PathValue("id"))
	if !a.serves(r.Context(), id) {
		writeError(w, modelNotFound(id))
		return
	}
	writeJSON(w, http.StatusOK, newModel(id))
}
