package localapi_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/openai"
	"github.com/gpunet/gpunet/protocol"
)

// The Go client of a node's local API, as a program on the node's machine
// uses it: list the models, submit a task with progress, read the result.
// Here the node is a lone host started in the example itself; a program
// would instead use localapi.NewClient(node.DefaultAPIAddr) against a
// running `gpunet daemon` or `gpunet host`.
func ExampleClient() {
	ctx := context.Background()
	cfg := node.DefaultConfig()
	cfg.DataDir = "" // a throwaway identity and store
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.MDNS = false
	cfg.Kernel = kernel.Sketch{}
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := node.New(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer n.Close()
	api, err := localapi.Listen(n, "127.0.0.1:0", cfg.Logger, openai.Routes(n)...)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer api.Close()

	c := localapi.NewClient(api.Addr())
	models, err := c.Models(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("models:", models)

	steps := 0
	res, err := c.Submit(ctx, localapi.SubmitRequest{
		Task:      protocol.Task{Prompt: "a quiet harbour at dusk", Width: 128, Height: 96, Steps: 4, Seed: 42},
		Submitter: "example",
	}, func(p node.Progress) {
		if p.Stage == "running" && p.Step > 0 {
			steps++
		}
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("task:", res.TaskCID)
	fmt.Println("cache:", res.Cache, "progress seen:", steps > 0)
	fmt.Println("output:", res.Outputs[0].MediaType)
	// Output:
	// models: [gpunet/sketch-v1]
	// task: bafyreiadmripcy3f735ev6f7l2f2tchi3d6qm4pp6l5g2jp7zszungemwe
	// cache: miss progress seen: true
	// output: image/png
}
