//go:build !unix

package kernel

import "os/exec"

// setProcessGroup keeps exec.CommandContext's default, killing the
// generator itself: this OS has no process groups to kill at once.
func setProcessGroup(*exec.Cmd) {}

func killProcessGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = cmd.Process.Kill()
	}
}
