package localapi

import (
	"context"
	"net/http"
)

// Caller is who a request comes from when a front that authenticated it
// (the gateway, with its API keys) forwards it to routes registered with
// WithRoute. Requests made to the local API itself carry none: the
// loopback API is its owner's.
type Caller struct {
	// Submitter is the name the caller's tasks are submitted under, in
	// place of whatever the request body says: each key is one submitter
	// with one fair share.
	Submitter string
}

type callerKey struct{}

// WithCaller returns r marked as coming from c.
func WithCaller(r *http.Request, c Caller) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
}

// CallerOf returns the caller a front marked r with, if any.
func CallerOf(r *http.Request) (Caller, bool) {
	c, ok := r.Context().Value(callerKey{}).(Caller)
	return c, ok
}
