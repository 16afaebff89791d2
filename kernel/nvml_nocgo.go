//go:build !cgo

package kernel

// nvmlBuiltIn reports whether OpenNVML can work in this build.
const nvmlBuiltIn = false

// OpenNVML always fails in a build without cgo, with an error wrapping
// ErrNVMLNotBuilt.
func OpenNVML(index int) (Device, error) {
	return nil, ErrNVMLNotBuilt
}
