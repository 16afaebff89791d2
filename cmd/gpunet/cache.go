package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/node/localapi"
	"github.com/gpunet/gpunet/node/store"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
	car "github.com/ipld/go-car/v2"
	"github.com/spf13/cobra"
)

// cacheBackend is where the cache commands act: the running daemon's store
// through its local API, or, when no daemon answers, the store in --data
// opened directly (pebble allows one process per store, so never both).
type cacheBackend interface {
	List(ctx context.Context) (*localapi.CacheListing, error)
	Item(ctx context.Context, c cid.Cid) (*localapi.CacheItem, error)
	ExportCAR(ctx context.Context, c cid.Cid, w io.Writer) error
	SetPinned(ctx context.Context, c cid.Cid, pinned bool) (*localapi.PinResult, error)
	GC(ctx context.Context) (*localapi.GCResult, error)
	Close() error
}

type apiCache struct{ c *localapi.Client }

func (a apiCache) List(ctx context.Context) (*localapi.CacheListing, error) {
	return a.c.CacheList(ctx)
}
func (a apiCache) Item(ctx context.Context, c cid.Cid) (*localapi.CacheItem, error) {
	return a.c.CacheGet(ctx, c)
}
func (a apiCache) ExportCAR(ctx context.Context, c cid.Cid, w io.Writer) error {
	return a.c.CacheExportCAR(ctx, c, w)
}
func (a apiCache) SetPinned(ctx context.Context, c cid.Cid, pinned bool) (*localapi.PinResult, error) {
	if pinned {
		return a.c.CachePin(ctx, c)
	}
	return a.c.CacheUnpin(ctx, c)
}
func (a apiCache) GC(ctx context.Context) (*localapi.GCResult, error) { return a.c.CacheGC(ctx) }
func (a apiCache) Close() error                                       { return nil }

type storeCache struct{ s *store.Store }

func (d storeCache) List(ctx context.Context) (*localapi.CacheListing, error) {
	l, err := localapi.ListCache(ctx, d.s)
	if err == nil {
		// The store may be open with no budget (see openCache); show the
		// one the daemon keeps it to.
		l.BudgetBytes = node.DefaultConfig().StoreBudget
	}
	return l, err
}
func (d storeCache) Item(ctx context.Context, c cid.Cid) (*localapi.CacheItem, error) {
	return localapi.GetCacheItem(ctx, d.s, c)
}
func (d storeCache) ExportCAR(ctx context.Context, c cid.Cid, w io.Writer) error {
	return d.s.ExportCAR(ctx, c, w)
}
func (d storeCache) SetPinned(ctx context.Context, c cid.Cid, pinned bool) (*localapi.PinResult, error) {
	return localapi.SetPinned(ctx, d.s, c, pinned)
}
func (d storeCache) GC(ctx context.Context) (*localapi.GCResult, error) {
	return localapi.GCCache(ctx, d.s)
}
func (d storeCache) Close() error { return d.s.Close() }

// openCache returns the daemon's cache if one answers at --api, else the
// store in --data. gc passes the budget the daemon would use; every other
// command opens with no budget at all, because Open evicts down to the
// budget it is given and reading a store must never shrink it.
func openCache(ctx context.Context, g *globals, budget int64) (cacheBackend, error) {
	c := localapi.NewClient(g.api)
	err := c.Ping(ctx, 500*time.Millisecond)
	if err == nil {
		return apiCache{c}, nil
	}
	if !errors.Is(err, localapi.ErrNoDaemon) {
		return nil, err
	}
	dir := filepath.Join(g.data, "store")
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no daemon answers at %s and there is no results store in %s: nothing cached yet, or pass --data or --api", g.api, g.data)
	}
	log, err := g.logger(slog.LevelWarn)
	if err != nil {
		return nil, err
	}
	s, err := store.Open(dir, store.WithBudget(budget), store.WithLogger(log.With("sub", "store")))
	if err != nil {
		return nil, err
	}
	return storeCache{s}, nil
}

func parseCID(arg string) (cid.Cid, error) {
	c, err := cid.Decode(arg)
	if err != nil {
		return cid.Undef, fmt.Errorf("%q is not a CID (%v): pass a TaskCID or ResultCID as `gpunet cache ls` prints them", arg, err)
	}
	return c, nil
}

// withCache runs fn on the cache, closing it after.
func withCache(cmd *cobra.Command, g *globals, budget int64, fn func(context.Context, cacheBackend) error) (err error) {
	ctx := cmd.Context()
	b, err := openCache(ctx, g, budget)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.Close()) }()
	return fn(ctx, b)
}

// noBudget opens a store without evicting anything.
const noBudget = math.MaxInt64

func newCacheCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "List, read, pin and export the results this node holds",
		Long: `The results store holds every result this node computed or fetched, and serves
them to other peers. These commands go through the local daemon when one answers
at --api, else they open the store in --data directly.`,
	}
	cmd.AddCommand(newCacheLsCmd(g), newCacheGetCmd(g), newCachePinCmd(g, true), newCachePinCmd(g, false),
		newCacheGCCmd(g), newCacheExportCmd(g), newCacheRepairCmd(g))
	return cmd
}

func newCacheLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List stored results, most recently used first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withCache(cmd, g, noBudget, func(ctx context.Context, b cacheBackend) error {
				l, err := b.List(ctx)
				if err != nil {
					return err
				}
				if g.json {
					return printJSON(l)
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(w, "TASK\tRESULT\tBYTES\tPINNED\tVERIFIED\tLAST USED\tPROMPT")
				for _, e := range l.Entries {
					pin, ver := "", ""
					if e.Pinned {
						pin = "pinned"
					}
					if e.Verified {
						ver = "verified"
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", e.TaskCID, shortID(e.ResultCID), e.Bytes, pin, ver,
						e.LastAccess.Local().Format(time.DateTime), truncate(e.Prompt, 40))
				}
				if err := w.Flush(); err != nil {
					return err
				}
				fmt.Printf("%d results, %.1f MiB of %.0f MiB\n", len(l.Entries), float64(l.Bytes)/(1<<20), float64(l.BudgetBytes)/(1<<20))
				return nil
			})
		},
	}
}

// cacheGetOutput is what `cache get --json` prints.
type cacheGetOutput struct {
	*localapi.CacheItem
	Files []outputFile `json:"files"`
}

func newCacheGetCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "get CID",
		Short: "Write a stored result's outputs to files (default TASKCID.png)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := parseCID(args[0])
			if err != nil {
				return err
			}
			return withCache(cmd, g, noBudget, func(ctx context.Context, b cacheBackend) error {
				it, err := b.Item(ctx, c)
				if err != nil {
					return err
				}
				// The outputs travel as a CAR, each block checked on arrival.
				var buf bytes.Buffer
				if err := b.ExportCAR(ctx, c, &buf); err != nil {
					return err
				}
				blocks, err := readResultCAR(&buf, it.ResultCID)
				if err != nil {
					return err
				}
				res := cacheGetOutput{CacheItem: it}
				for i, o := range it.Outputs {
					path := outputPath(out, it.TaskCID, i, len(it.Outputs), o.MediaType)
					data := blocks[o.CID]
					if err := os.WriteFile(path, data, 0o644); err != nil {
						return fmt.Errorf("writing output: %w", err)
					}
					res.Files = append(res.Files, outputFile{CID: o.CID, Path: path, Bytes: len(data), MediaType: o.MediaType})
				}
				if g.json {
					return printJSON(res)
				}
				for _, f := range res.Files {
					fmt.Printf("%s  %d bytes  %s\n", f.Path, f.Bytes, f.CID)
				}
				fmt.Printf("task %s  result %s  host %s  kernel %s\n", it.TaskCID, it.ResultCID, shortID(it.Host), it.Kernel)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "file to write (default: TASKCID.png in the current directory)")
	return cmd
}

// readResultCAR reads a result's CAR: its root must be resultCID, and every
// block is verified against its CID (go-car checks each block's hash, and
// the manifest is decoded and verified). It returns the blocks by CID text.
func readResultCAR(r io.Reader, resultCID string) (map[string][]byte, error) {
	br, err := car.NewBlockReader(r, car.MaxAllowedSectionSize(protocol.MaxBlockBytes+1024))
	if err != nil {
		return nil, fmt.Errorf("reading CAR: %w", err)
	}
	if len(br.Roots) != 1 || br.Roots[0].String() != resultCID {
		return nil, fmt.Errorf("CAR roots %v, want %s", br.Roots, resultCID)
	}
	blocks := map[string][]byte{}
	for {
		blk, err := br.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading CAR: %w", err)
		}
		if err := protocol.VerifyBlock(blk.Cid(), blk.RawData()); err != nil {
			return nil, err
		}
		blocks[blk.Cid().String()] = blk.RawData()
	}
	m, err := protocol.DecodeManifest(blocks[resultCID])
	if err != nil {
		return nil, err
	}
	for i, o := range m.Outputs {
		if _, ok := blocks[o.CID.String()]; !ok {
			return nil, fmt.Errorf("CAR lacks output %d (%s)", i, o.CID)
		}
	}
	return blocks, nil
}

func newCachePinCmd(g *globals, pin bool) *cobra.Command {
	use, short := "pin CID", "Keep a stored result from eviction"
	if !pin {
		use, short = "unpin CID", "Let a pinned result be evicted again (by least-recent use)"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := parseCID(args[0])
			if err != nil {
				return err
			}
			return withCache(cmd, g, noBudget, func(ctx context.Context, b cacheBackend) error {
				r, err := b.SetPinned(ctx, c, pin)
				if err != nil {
					return err
				}
				if g.json {
					return printJSON(r)
				}
				state := "pinned"
				if !r.Pinned {
					state = "unpinned"
				}
				fmt.Printf("%s %s (task %s)\n", state, r.ResultCID, r.TaskCID)
				return nil
			})
		},
	}
}

func newCacheGCCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Evict least-recently-used unpinned results down to the budget, and remove orphan data",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withCache(cmd, g, node.DefaultConfig().StoreBudget, func(ctx context.Context, b cacheBackend) error {
				r, err := b.GC(ctx)
				if err != nil {
					return err
				}
				if g.json {
					return printJSON(r)
				}
				fmt.Printf("removed %d, freed %.1f MiB; %d results, %.1f MiB held\n", r.Removed, float64(r.FreedBytes)/(1<<20),
					r.Entries, float64(r.Bytes)/(1<<20))
				return nil
			})
		},
	}
}

// cacheRepairOutput is what `cache repair --json` prints.
type cacheRepairOutput struct {
	Damaged  string   `json:"damaged"`
	Kept     int      `json:"kept"`
	Lost     []string `json:"lost"`
	Unlisted string   `json:"unlisted,omitempty"`
}

func newCacheRepairCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "repair",
		Short: "Move a damaged results store aside and start afresh with every result that still verifies",
		Long: `When the results store in --data is damaged (gpunet says so, and names this
command), repair moves it aside to DATA/store.damaged-<time>, untouched, and
starts a fresh store holding every result of the old one whose manifest and
blocks still verify against their CIDs: results are content-addressed, so
whatever verifies is exactly what was stored. The rest is computed or fetched
again when asked for. Run it with no daemon using --data: a daemon repairs
its store itself when it starts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := filepath.Join(g.data, "store")
			if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("there is no results store in %s: nothing to repair (pass --data)", g.data)
			}
			log, err := g.logger(slog.LevelError)
			if err != nil {
				return err
			}
			// No budget: a repair keeps everything that verifies; the daemon
			// evicts down to its budget when it opens the store.
			rep, err := store.Repair(dir, store.WithBudget(noBudget), store.WithLogger(log.With("sub", "store")))
			if rep.Damaged == "" {
				return err // nothing moved
			}
			out := cacheRepairOutput{Damaged: rep.Damaged, Kept: rep.Kept, Lost: []string{}, Unlisted: rep.Unlisted}
			for _, c := range rep.Lost {
				out.Lost = append(out.Lost, c.String())
			}
			if g.json {
				return errors.Join(printJSON(out), err)
			}
			fmt.Printf("moved the damaged store aside to %s: delete it once you no longer need it\n", rep.Damaged)
			fmt.Printf("kept %d results: their manifests and blocks verify\n", rep.Kept)
			fmt.Printf("lost %d results: unreadable or failing verification; they are computed or fetched again when asked for\n", len(rep.Lost))
			if rep.Unlisted != "" {
				fmt.Printf("could not list all of the damaged store (%s): results named only there are lost too\n", rep.Unlisted)
			}
			return err
		},
	}
}

// cacheExportOutput is what `cache export --json` prints.
type cacheExportOutput struct {
	Path  string `json:"path"`
	Root  string `json:"root"`
	Bytes int64  `json:"bytes"`
}

func newCacheExportCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export CID -o FILE.car",
		Short: "Write a stored result as a CAR file (manifest and blocks) that IPFS tools read",
		Long: `Writes a CARv1 whose single root is the ResultCID: the manifest (DAG-CBOR, linking
to its outputs) then each output block. "ipfs dag import FILE.car" or "car ls FILE.car"
read it. -o - writes to standard output.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := parseCID(args[0])
			if err != nil {
				return err
			}
			if out == "" {
				return errors.New("export needs -o FILE.car (or -o - for standard output)")
			}
			return withCache(cmd, g, noBudget, func(ctx context.Context, b cacheBackend) error {
				it, err := b.Item(ctx, c)
				if err != nil {
					return err
				}
				if out == "-" {
					return b.ExportCAR(ctx, c, os.Stdout)
				}
				n, err := exportToFile(ctx, b, c, out)
				if err != nil {
					return err
				}
				if g.json {
					return printJSON(cacheExportOutput{Path: out, Root: it.ResultCID, Bytes: n})
				}
				fmt.Printf("%s  %d bytes  root %s\n", out, n, it.ResultCID)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "CAR file to write, - for standard output")
	return cmd
}

// exportToFile writes the CAR next to path and renames it into place, so a
// failed export leaves no partial file under the name asked for.
func exportToFile(ctx context.Context, b cacheBackend, c cid.Cid, path string) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".gpunet-export-*.car")
	if err != nil {
		return 0, fmt.Errorf("creating %s: %w", path, err)
	}
	tmp := f.Name()
	cw := &countingWriter{w: f}
	err = b.ExportCAR(ctx, c, cw)
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return cw.n, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
