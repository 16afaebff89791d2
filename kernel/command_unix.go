//go:build unix

package kernel

import (
	"os/exec"
	"syscall"
)

// setProcessGroup makes the generator lead a process group of its own and
// makes cancellation kill that whole group: a Python launcher's workers or a
// shell's children must not outlive the task.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		killProcessGroup(cmd)
		return nil
	}
}

// killProcessGroup sends SIGKILL to the group cmd leads. SIGKILL rather than
// SIGTERM: the task is abandoned either way, and the driver frees a killed
// process's GPU memory.
func killProcessGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
