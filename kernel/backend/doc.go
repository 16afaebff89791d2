// Package backend owns the adapters that turn an image backend a volunteer
// already runs into a kernel.Kernel: AUTOMATIC1111 or Forge started with
// --api (A1111), ComfyUI (ComfyUI) and any OpenAI-compatible image server —
// stable-diffusion.cpp's sd-server, LocalAI, another gpunet node's local
// API or gateway (OpenAI). Each is one kernel over one backend URL; Multi
// puts several behind the one Kernel a host runs, routing by model.
//
// Every adapter is health-checked when it is made (New fails if the
// backend does not answer) and then every Config.HealthInterval: Models
// lists only what the backend can run now, and is empty while it is away.
// Changed tells a watcher when that list moves, so that a host withdraws
// the models of a backend that went away and advertises them again when it
// returns.
//
// Errors follow the task protocol's split: what is wrong with the task
// (a model or a param the backend does not serve, a request the backend
// rejects as invalid) wraps protocol.ErrBadTask; everything else (the
// backend unreachable, a 5xx, an answer that is not the PNG of the task's
// size) is a plain error, which a host reports as internal.
//
// Of this module, backend imports only protocol and kernel; cmd/gpunet
// wires it (--backend KIND=URL). Everything exported is safe for
// concurrent use.
package backend
