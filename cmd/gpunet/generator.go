package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
	"github.com/spf13/cobra"
)

// generatorMaxTask bounds one task on stdin: a request's worth of task,
// and the base64 of the most input images and mask a task may carry.
var generatorMaxTask = protocol.MaxRequestBytes + base64.StdEncoding.EncodedLen((protocol.MaxInputs+1)*protocol.MaxBlockBytes)

func newGeneratorCmd() *cobra.Command {
	var serve bool
	cmd := &cobra.Command{
		Use:   "generator",
		Short: "Run the sketch kernel behind the external-generator contract of --kernel cmd (a reference implementation)",
		Long: `Reads a task as JSON on stdin and paints it with the built-in sketch kernel, following the
contract a --kernel cmd generator follows (docs/kernels.md): progress lines on stderr, one PNG on
stdout. With --serve it follows serve mode instead: one task per stdin line, each answered on stdout
with "png N" and N bytes, or "error MESSAGE", until stdin closes, after its progress lines and the
previews the task's preview_steps ask for ("preview K N" and N bytes). The bytes are the same as the
sketch kernel's, previews included, so a host running it through --kernel cmd serves the same images.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if serve {
				return serveGenerator(cmd.Context(), os.Stdin, os.Stdout, os.Stderr)
			}
			in, err := io.ReadAll(io.LimitReader(os.Stdin, int64(generatorMaxTask)+1))
			if err != nil {
				return err
			}
			if len(in) > generatorMaxTask {
				return fmt.Errorf("task over %d bytes", generatorMaxTask)
			}
			png, err := paint(cmd.Context(), in, os.Stderr)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(png)
			return err
		},
	}
	cmd.Flags().BoolVar(&serve, "serve", false, "serve mode: one task per stdin line, answers framed on stdout, until stdin closes")
	return cmd
}

// paint decodes one task and runs the sketch kernel on it, writing a
// progress line to progress after each step. A per-task generator has
// nowhere to send previews (stdout is the output), so it ignores
// preview_steps.
func paint(ctx context.Context, line []byte, progress io.Writer) ([]byte, error) {
	return paintPreviews(ctx, line, progress, nil)
}

// paintPreviews is paint that also calls preview (when set: serve mode)
// with the sketch kernel's preview at each of the task's preview_steps.
func paintPreviews(ctx context.Context, line []byte, progress io.Writer, preview kernel.PreviewFunc) ([]byte, error) {
	var job struct {
		protocol.Task
		// An edit's images, base64 in JSON (docs/kernels.md).
		InputImages [][]byte `json:"input_images"`
		MaskImage   []byte   `json:"mask_image"`
		// Serve mode: the steps to send a preview at.
		PreviewSteps []int `json:"preview_steps"`
	}
	if err := json.Unmarshal(line, &job); err != nil {
		return nil, fmt.Errorf("decoding the task: %w", err)
	}
	t, err := job.Task.Normalize()
	if err != nil {
		return nil, err
	}
	in := kernel.Inputs{Images: job.InputImages, Mask: job.MaskImage}
	var at []int
	if preview != nil {
		at = job.PreviewSteps
	}
	// Edit of a task without inputs is RunWithPreviews.
	outs, err := kernel.Sketch{}.Edit(ctx, t, in, func(k, n int) { fmt.Fprintf(progress, "progress %d %d\n", k, n) }, at, preview)
	if err != nil {
		return nil, err
	}
	return outs[0].Data, nil
}

// serveGenerator answers tasks in serve mode until stdin ends: progress
// lines, previews and the answer on stdout, each flushed as written.
func serveGenerator(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	in := bufio.NewScanner(stdin)
	in.Buffer(make([]byte, 0, 4096), generatorMaxTask+1)
	out := bufio.NewWriter(stdout)
	progress := flushingWriter{out}
	preview := func(k int, png []byte) {
		// A write error shows at the answer's flush.
		fmt.Fprintf(out, "preview %d %d\n", k, len(png))
		_, _ = progress.Write(png)
	}
	for in.Scan() {
		png, err := paintPreviews(ctx, in.Bytes(), progress, preview)
		if err != nil {
			// One line: the host reads the message up to the newline.
			msg := strings.Join(strings.Fields(err.Error()), " ")
			fmt.Fprintf(out, "error %.900s\n", msg)
			fmt.Fprintln(stderr, "generator: task failed:", msg)
		} else {
			fmt.Fprintf(out, "png %d\n", len(png))
			out.Write(png)
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
	if err := in.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("a task line over %d bytes", generatorMaxTask)
		}
		return err
	}
	return nil
}

// flushingWriter flushes after every write, so a progress line leaves at
// once.
type flushingWriter struct{ w *bufio.Writer }

func (f flushingWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.w.Flush()
	}
	return n, err
}
