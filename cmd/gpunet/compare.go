package main

import (
	"fmt"
	"os"

	"github.com/gpunet/gpunet/node/trust"
	"github.com/spf13/cobra"
)

// compareResult is what `gpunet compare --json` prints.
type compareResult struct {
	Distance  float64 `json:"distance"`
	Tolerance float64 `json:"tolerance"`
	Agree     bool    `json:"agree"`
}

// newCompareCmd compares two images as verification does for kernels
// whose outputs are not exact (docs/trust.md): an operator measures with it
// how far the same task's images lie apart on two cards or drivers.
func newCompareCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "compare A.png B.png",
		Short: "Print the perceptual distance verification uses between two images, and whether they agree",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var imgs [2][]byte
			for i, path := range args {
				b, err := readImage(path)
				if err != nil {
					return err
				}
				imgs[i] = b
			}
			d, err := trust.Distance(imgs[0], imgs[1])
			if err != nil {
				return fmt.Errorf("comparing %s and %s: %w", args[0], args[1], err)
			}
			r := compareResult{Distance: d, Tolerance: trust.DefaultTolerance, Agree: d <= trust.DefaultTolerance}
			if g.json {
				return printJSON(r)
			}
			word := "agree"
			if !r.Agree {
				word = "differ"
			}
			fmt.Printf("distance %.5f (tolerance %.2f): the images %s\n", d, r.Tolerance, word)
			return nil
		},
	}
}

// readImage reads an image file of at most 64 MiB.
func readImage(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > 64<<20 {
		return nil, fmt.Errorf("%s: %d bytes, more than an output image may be (64 MiB)", path, fi.Size())
	}
	return os.ReadFile(path)
}
