package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
)

// An edit's upload: up to protocol.MaxInputs images and a mask, each at
// most one block (protocol.MaxBlockBytes: 16 MiB; OpenAI's own cap is
// 50 MB for GPT image models), and the text fields.
const (
	maxEditFiles = protocol.MaxInputs + 1
	maxEditBody  = maxEditFiles*protocol.MaxBlockBytes + maxBody
	// maxEditParts bounds the parts read, so a body of many empty parts
	// costs a bounded amount of work.
	maxEditParts = 64
	// autoEditSide is the longest side "size": "auto" gives an edit: the
	// input's aspect ratio at a size every backend handles.
	autoEditSide = 1024
)

// editInputs are an edit's uploaded images, by CID, for parse.
type editInputs struct {
	inputs        []protocol.Link
	mask          *protocol.Link
	width, height int // the first image's
}

// numericFields are the edit form fields that the JSON body of a
// generation carries as numbers, booleans the ones it carries as booleans;
// a form sends every field as text.
var (
	numericFields = map[string]bool{"n": true, "partial_images": true, "seed": true, "steps": true, "output_compression": true}
	boolFields    = map[string]bool{"stream": true}
)

// edits serves POST /v1/images/edits: multipart/form-data with image (or
// image[], up to protocol.MaxInputs), an optional mask, and the fields of a
// generation. Each image is checked (a PNG, JPEG or WebP within the
// kernel's bounds) and stored as a raw block in the node's store, and its
// CID becomes one of the tasks' inputs: the host that runs a task fetches
// it from this node by CID.
func (a *api) edits(w http.ResponseWriter, r *http.Request) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		writeError(w, &apiError{status: http.StatusUnsupportedMediaType, Type: "invalid_request_error",
			Message: fmt.Sprintf("Content-Type %q: want multipart/form-data", r.Header.Get("Content-Type"))})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxEditBody)
	form, images, mask, aerr := readEditForm(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	ed := &editInputs{}
	for i, img := range images {
		cfg, err := kernel.DecodeInputConfig(img)
		if err != nil {
			writeError(w, badRequest("image", fmt.Sprintf("image %d: %v", i, err)))
			return
		}
		if i == 0 {
			ed.width, ed.height = cfg.Width, cfg.Height
		}
		ed.inputs = append(ed.inputs, protocol.Link{Cid: protocol.RawCID(img)})
	}
	if mask != nil {
		if _, err := kernel.DecodeInputConfig(mask); err != nil {
			writeError(w, badRequest("mask", "mask: "+err.Error()))
			return
		}
		ed.mask = &protocol.Link{Cid: protocol.RawCID(mask)}
	}
	body, err := json.Marshal(form)
	if err != nil {
		writeError(w, badRequest("", "encoding fields: "+err.Error()))
		return
	}
	p, aerr := parse(body, ed)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	// Stored only once the request is known good; the store keeps them
	// like results, so a repeat of the edit is a cache hit with its inputs
	// still at hand.
	for _, b := range append(images, mask) {
		if b == nil {
			continue
		}
		if _, err := a.s.PutInput(r.Context(), b); err != nil {
			a.log.Warn("storing an uploaded image", "err", err)
			writeError(w, &apiError{status: http.StatusInternalServerError, Type: "server_error", Message: "storing the uploaded image: " + oneLine(err)})
			return
		}
	}
	a.serve(w, r, p)
}

// readEditForm reads the multipart body: the images (image or image[]),
// the mask and the text fields, typed as a generation's JSON body would
// type them. Files over a block and bodies over maxEditBody are a 413.
func readEditForm(r *http.Request) (form map[string]any, images [][]byte, mask []byte, _ *apiError) {
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, nil, nil, badRequest("", "reading the form: "+err.Error())
	}
	form = map[string]any{}
	for range maxEditParts {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			if len(images) == 0 {
				return nil, nil, nil, badRequest("image", "image is required: the picture to edit, as a file field named image (or image[])")
			}
			return form, images, mask, nil
		}
		if err != nil {
			return nil, nil, nil, formError(err)
		}
		name := part.FormName()
		switch name {
		case "image", "image[]", "mask":
			b, aerr := readPart(part, protocol.MaxBlockBytes, name)
			if aerr != nil {
				return nil, nil, nil, aerr
			}
			if len(b) == 0 {
				return nil, nil, nil, badRequest(name, name+": empty file")
			}
			if name == "mask" {
				if mask != nil {
					return nil, nil, nil, badRequest("mask", "more than one mask")
				}
				mask = b
				continue
			}
			if len(images) == protocol.MaxInputs {
				return nil, nil, nil, badRequest("image", fmt.Sprintf("more than %d images", protocol.MaxInputs))
			}
			images = append(images, b)
			continue
		}
		if part.FileName() != "" {
			return nil, nil, nil, badRequest(name, fmt.Sprintf("field %q: a file where text was expected; files go in image, image[] and mask", name))
		}
		b, aerr := readPart(part, maxBody, name)
		if aerr != nil {
			return nil, nil, nil, aerr
		}
		if _, dup := form[name]; dup {
			return nil, nil, nil, badRequest(name, fmt.Sprintf("field %q given twice", name))
		}
		v := string(b)
		form[name] = v
		if numericFields[name] {
			if _, err := strconv.ParseInt(v, 10, 64); err == nil {
				form[name] = json.Number(v)
			}
		}
		if boolFields[name] {
			if bv, err := strconv.ParseBool(v); err == nil {
				form[name] = bv
			}
		}
	}
	return nil, nil, nil, badRequest("", fmt.Sprintf("more than %d form fields", maxEditParts))
}

// readPart reads one part of at most max bytes.
func readPart(part *multipart.Part, max int, name string) ([]byte, *apiError) {
	b, err := io.ReadAll(io.LimitReader(part, int64(max)+1))
	if err != nil {
		return nil, formError(err)
	}
	if len(b) > max {
		return nil, &apiError{status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Param: strp(name),
			Message: fmt.Sprintf("%s: over %d MiB", name, max>>20)}
	}
	return b, nil
}

// formError maps a failure to read the form: the body cap is a 413.
func formError(err error) *apiError {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &apiError{status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error",
			Message: fmt.Sprintf("request body over %d MiB", maxEditBody>>20)}
	}
	return badRequest("", "reading the form: "+oneLine(err))
}

// fitSize is "size": "auto" for an edit: the input's aspect ratio, the
// longer side at most autoEditSide (an input no larger keeps its size),
// each side a multiple of protocol.SideMultiple within the protocol's
// bounds.
func fitSize(w, h int) (uint32, uint32) {
	if w <= 0 || h <= 0 {
		return 0, 0 // the protocol's default
	}
	if m := max(w, h); m > autoEditSide {
		w, h = w*autoEditSide/m, h*autoEditSide/m
	}
	side := func(s int) uint32 {
		s = s / protocol.SideMultiple * protocol.SideMultiple
		return uint32(min(max(s, protocol.MinSide), protocol.MaxSide))
	}
	return side(w), side(h)
}
