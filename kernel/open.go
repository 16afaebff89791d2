package kernel

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// DeviceSpecs describes the values OpenDevice accepts, for flag help.
const DeviceSpecs = "auto, none, nvml[:INDEX], nvidia-smi[:INDEX] or sim:PROFILE"

// OpenDevice opens the GPU a --gpu spec names and says, for a person, what it
// picked:
//
//	auto              NVML GPU 0, else nvidia-smi GPU 0, else no device
//	nvml[:INDEX]      NVML (needs cgo and the driver)
//	nvidia-smi[:INDEX] the nvidia-smi command
//	sim:PROFILE       a simulated GPU (ProfileNames lists the profiles)
//	none              no device
//
// When no device is wanted or found it returns (nil, "none: <reason>", nil):
// a host without a GPU still serves the CPU kernels. An explicit spec that
// cannot be opened is an error. opts configure the simulated and nvidia-smi
// devices.
func OpenDevice(spec string, opts ...DeviceOption) (Device, string, error) {
	kind, arg, hasArg := strings.Cut(strings.TrimSpace(spec), ":")
	kind = strings.ToLower(kind)
	index := 0
	if hasArg && (kind == "nvml" || kind == "nvidia-smi") {
		i, err := strconv.Atoi(arg)
		if err != nil || i < 0 {
			return nil, "", fmt.Errorf("--gpu %s: GPU index %q is not a number >= 0", spec, arg)
		}
		index = i
	}
	switch {
	case kind == "none" && !hasArg:
		return nil, "none: --gpu none", nil
	case (kind == "auto" || kind == "") && !hasArg:
		return openAuto(opts)
	case kind == "nvml":
		d, err := OpenNVML(index)
		if err != nil {
			return nil, "", err
		}
		return d, "nvml: " + d.Name(), nil
	case kind == "nvidia-smi":
		d, err := NewNvidiaSMI(context.Background(), index, opts...)
		if err != nil {
			return nil, "", err
		}
		return d, "nvidia-smi: " + d.Name(), nil
	case kind == "sim" && hasArg:
		p, err := ProfileByName(arg)
		if err != nil {
			return nil, "", fmt.Errorf("--gpu %s: %w", spec, err)
		}
		d, err := NewSimGPU(p, opts...)
		if err != nil {
			return nil, "", err
		}
		return d, "simulated: " + d.Name(), nil
	}
	return nil, "", fmt.Errorf("unknown --gpu %q: want %s (profiles: %s)", spec, DeviceSpecs, strings.Join(ProfileNames(), ", "))
}

// openAuto tries NVML, then nvidia-smi, and settles for no device; the
// reasons each failed go into the description so a person can see why.
func openAuto(opts []DeviceOption) (Device, string, error) {
	d, errNVML := OpenNVML(0)
	if errNVML == nil {
		return d, "nvml: " + d.Name(), nil
	}
	s, errSMI := NewNvidiaSMI(context.Background(), 0, opts...)
	if errSMI == nil {
		return s, "nvidia-smi: " + s.Name() + " (nvml: " + errNVML.Error() + ")", nil
	}
	return nil, fmt.Sprintf("none: no GPU found (nvml: %v; nvidia-smi: %v)", errNVML, errSMI), nil
}
