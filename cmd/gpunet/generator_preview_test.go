package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// The reference generator in serve mode sends the sketch kernel's previews,
// byte for byte and at the same points of the run, at the task's
// preview_steps, and none for a task without them; through a serve-mode
// kernel.Command (what `--kernel cmd --kernel-serve` runs) they reach the
// host's PreviewFunc as the built-in kernel's would.
func TestGeneratorServePreviews(t *testing.T) {
	ctx := context.Background()
	task, err := protocol.Task{Prompt: "a lighthouse in a storm", Steps: 6, Width: 96, Height: 64}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	at := []int{2, 4}
	// What the built-in kernel shows, in the order it shows it.
	var want []string
	wantPNG := map[int][]byte{}
	outs, err := kernel.Sketch{}.RunWithPreviews(ctx, task,
		func(k, _ int) { want = append(want, fmt.Sprintf("progress %d", k)) }, at,
		func(k int, b []byte) {
			want = append(want, fmt.Sprintf("preview %d", k))
			wantPNG[k] = b
		})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, "png")

	withPreviews, err := json.Marshal(struct {
		protocol.Task
		PreviewSteps []int `json:"preview_steps"`
	}{task, at})
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := json.Marshal(task)
	var out, errs bytes.Buffer
	stdin := bytes.Join([][]byte{withPreviews, plain, nil}, []byte("\n"))
	if err := serveGenerator(ctx, bytes.NewReader(stdin), &out, &errs); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(&out)
	for i, wantEvents := range []string{fmt.Sprint(want), "[progress 1 progress 2 progress 3 progress 4 progress 5 progress 6 png]"} {
		events, previews, answer := readGeneratorAnswer(t, r)
		if fmt.Sprint(events) != wantEvents {
			t.Errorf("task %d: stdout %v, want %s (stderr %q)", i, events, wantEvents, errs.String())
		}
		for k, b := range previews {
			if !bytes.Equal(b, wantPNG[k]) {
				t.Errorf("task %d: preview of step %d is not the sketch kernel's", i, k)
			}
		}
		if !bytes.Equal(answer, outs[0].Data) {
			t.Errorf("task %d: the answer is not the sketch kernel's output", i)
		}
	}

	// The same through the host's side of the contract.
	c, err := kernel.NewCommand("cmd:sketch-v1", []string{protocol.DefaultModel}, []string{gpunetBin, "generator", "--serve"},
		kernel.WithCommandServe(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got []string
	gotPNG := map[int][]byte{}
	hostOuts, err := c.RunWithPreviews(ctx, task,
		func(k, _ int) { got = append(got, fmt.Sprintf("progress %d", k)) }, at,
		func(k int, b []byte) {
			got = append(got, fmt.Sprintf("preview %d", k))
			gotPNG[k] = b
		})
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, "png")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("through kernel.Command: %v, want %v", got, want)
	}
	for _, k := range at {
		if !bytes.Equal(gotPNG[k], wantPNG[k]) {
			t.Errorf("through kernel.Command: preview of step %d is not the sketch kernel's", k)
		}
	}
	if !bytes.Equal(hostOuts[0].Data, outs[0].Data) {
		t.Error("through kernel.Command: the output is not the sketch kernel's")
	}
}

// readGeneratorAnswer reads one serve-mode answer: its lines and frames in
// order, the previews by step, and the PNG.
func readGeneratorAnswer(t *testing.T, r *bufio.Reader) (events []string, previews map[int][]byte, answer []byte) {
	t.Helper()
	previews = map[int][]byte{}
	frame := func(n string) []byte {
		size, err := strconv.Atoi(n)
		if err != nil {
			t.Fatalf("frame size %q", n)
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stdout ended after %v: %v", events, err)
		}
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "progress":
			events = append(events, "progress "+f[1])
		case len(f) == 3 && f[0] == "preview":
			k, _ := strconv.Atoi(f[1])
			previews[k] = frame(f[2])
			events = append(events, "preview "+f[1])
		case len(f) == 2 && f[0] == "png":
			return append(events, "png"), previews, frame(f[1])
		default:
			t.Fatalf("stdout line %q after %v", line, events)
		}
	}
}
