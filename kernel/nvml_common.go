package kernel

import "errors"

// ErrNoNVIDIADriver means NVML could not be loaded: no NVIDIA driver is
// installed, or it is not running.
var ErrNoNVIDIADriver = errors.New("no NVIDIA driver (libnvidia-ml.so) found; use --gpu sim:PROFILE")

// ErrNVMLNotBuilt means the binary was built without cgo, which NVML needs.
var ErrNVMLNotBuilt = errors.New("this binary was built without cgo and cannot load NVML; use --gpu nvidia-smi or --gpu sim:PROFILE")
