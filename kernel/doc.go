// Package kernel owns what turns a task into output bytes and what reports on
// the hardware doing it:
//
//   - Kernel, the executor contract, and its built-in implementations: Sketch
//     (sketch-v1, a deterministic CPU image renderer that needs no model
//     weights), Noop (noop-v1, which measures protocol overhead) and
//     Command, which runs an external generator program per task
//     (docs/kernels.md has its contract).
//   - Device, the GPU telemetry contract, and its sources: NVML (OpenNVML,
//     needs cgo and the NVIDIA driver), nvidia-smi (NewNvidiaSMI) and a
//     simulated GPU with a first-order heat model (SimGPU). OpenDevice picks
//     one from a --gpu spec.
//
// Of this project, kernel imports only protocol: the node and the commands
// import kernel, never the other way round. Everything exported here is safe
// for concurrent use unless its doc comment says otherwise.
package kernel
