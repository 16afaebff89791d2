// Package openai serves the OpenAI Images API on a node's local API, so
// that the official OpenAI clients drive gpunet with only their base URL
// changed (http://127.0.0.1:7447/v1). It owns the translation between an
// OpenAI request and gpunet tasks, and OpenAI's error shape; the node does
// the work.
//
// Served (docs/openai.md has the fields and how each maps to a task):
//
//	GET  /v1/models               the models the swarm serves
//	GET  /v1/models/{id...}       one of them (model names contain "/")
//	POST /v1/images/generations   n tasks, JSON or Server-Sent Events
//
// With stream and partial_images, the host's previews (the task protocol's
// preview events) become image_generation.partial_image events. Not yet:
// edits and input images (the task protocol must carry them). node/gateway serves these same routes
// beyond loopback to holders of API keys. A generation answered
// with response_format "url" points at GET /v1/blocks/{cid}, which the
// dashboard (node/web) serves beside these routes.
//
// It imports the node and the local API; the node imports neither it nor
// anything that imports it. cmd/gpunet wires it in as a surface.
package openai
