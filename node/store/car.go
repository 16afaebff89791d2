package store

import (
	"context"
	"fmt"
	"io"

	"github.com/ipfs/go-cid"
	car "github.com/ipld/go-car/v2"
	"github.com/ipld/go-car/v2/storage"
)

// ExportCAR writes the result c names (a TaskCID or a ResultCID) to w as a
// CARv1 whose single root is the ResultCID: the manifest block first, then
// the output blocks in manifest order, each once. The manifest's outputs are
// DAG-CBOR links, so IPFS tools (ipfs dag import, car ls) can walk the whole
// result from the root. Data is verified as in Get, and the export counts as
// a use of the result for LRU, not as a hit.
func (s *Store) ExportCAR(ctx context.Context, c cid.Cid, w io.Writer) error {
	r, err := s.result(ctx, c, byEither, false)
	if err != nil {
		return fmt.Errorf("exporting %s: %w", c, err)
	}
	// Hide any io.WriterAt w has (an *os.File does): given one, go-car writes
	// at absolute offsets from 0 instead of appending where w stands.
	cw, err := storage.NewWritable(struct{ io.Writer }{w}, []cid.Cid{r.CID}, car.WriteAsCarV1(true))
	if err != nil {
		return fmt.Errorf("exporting %s: %w", r.CID, err)
	}
	// go-car skips a CID it has already written, so a block two outputs
	// share appears once.
	if err := cw.Put(ctx, r.CID.KeyString(), r.ManifestBytes); err != nil {
		return fmt.Errorf("exporting %s: writing manifest: %w", r.CID, err)
	}
	for i, o := range r.Manifest.Outputs {
		if err := cw.Put(ctx, o.CID.KeyString(), r.Blocks[i]); err != nil {
			return fmt.Errorf("exporting %s: writing output %d: %w", r.CID, i, err)
		}
	}
	return cw.Finalize()
}
