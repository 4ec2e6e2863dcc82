package sdfile

import (
	"bufio"
	"bytes"
	"io"
	"sync"
)

// output is one rendered output (a shard's, or the whole): the Targets'
// bytes in source order, written to the file and served by copying their bytes in
// turn. It is never joined into one buffer unless someone asks for one
// (Bytes): at 250,000 targets that buffer was 46 MB, and two of them (the
// output served and the next being rendered) a third of sdwriter's memory.
// An output is never modified once made.
type output struct {
	data []string // each source's Target.Data, in order
	size int      // bytes of the whole output

	once   sync.Once
	joined []byte
}

func newOutput(data []string, dataSize int) *output {
	o := &output{data: data, size: len("[]\n")}
	if len(data) > 0 {
		o.size = len("[\n") + dataSize + len(",\n")*(len(data)-1) + len("\n]\n")
	}
	return o
}

// writeBuffer is the size of the copy's buffer: large enough that a write
// of a large output is a few hundred system calls, not one per target.
const writeBuffer = 256 << 10

// buffers are the copy buffers of WriteTo, shared by the file writes and
// the http_sd responses.
var buffers = sync.Pool{New: func() any { return new([]byte) }}

// WriteTo writes the output as Render does.
func (o *output) WriteTo(w io.Writer) (int64, error) {
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	b := (*bp)[:0]
	if cap(b) < writeBuffer {
		b = make([]byte, 0, writeBuffer)
		*bp = b
	}
	var n int64
	flush := func() error {
		m, err := w.Write(b)
		n += int64(m)
		b = b[:0]
		return err
	}
	if len(o.data) == 0 {
		b = append(b, "[]\n"...)
	} else {
		b = append(b, "[\n"...)
		for i, d := range o.data {
			if len(b)+len(d)+2 > cap(b) {
				if err := flush(); err != nil {
					return n, err
				}
			}
			if i > 0 {
				b = append(b, ",\n"...)
			}
			b = append(b, d...) // within cap unless d alone is larger
		}
		if len(b)+4 > cap(b) {
			if err := flush(); err != nil {
				return n, err
			}
		}
		b = append(b, "\n]\n"...)
	}
	err := flush()
	return n, err
}

// Bytes is the output joined, made once and kept: for the callers that
// need it whole (Syncer.Output, the checks of promcheck).
func (o *output) Bytes() []byte {
	o.once.Do(func() {
		var b bytes.Buffer
		b.Grow(o.size)
		o.WriteTo(&b)
		o.joined = b.Bytes()
	})
	return o.joined
}

// bytes is Bytes, nil for no output.
func (o *output) bytes() []byte {
	if o == nil {
		return nil
	}
	return o.Bytes()
}

// sameAs says whether o holds what p holds, in the cheap cases: the same
// Targets, or Targets of the same bytes, in the same order. False may be
// wrong (the same bytes cut otherwise), which costs a needless write.
func (o *output) sameAs(p *output) bool {
	if p == nil || o.size != p.size || len(o.data) != len(p.data) {
		return false
	}
	for i, d := range o.data {
		if d != p.data[i] { // the same bytes at the same address: no compare
			return false
		}
	}
	return true
}

// equalTo says whether r holds exactly o's bytes, reading it as it goes.
func (o *output) equalTo(r io.Reader) bool {
	c := &comparer{r: bufio.NewReaderSize(r, writeBuffer), equal: true}
	if _, err := o.WriteTo(c); err != nil || !c.equal {
		return false
	}
	_, err := c.r.ReadByte()
	return err == io.EOF
}

// comparer is a Writer that compares what is written with what r holds.
type comparer struct {
	r     *bufio.Reader
	buf   []byte
	equal bool
}

func (c *comparer) Write(p []byte) (int, error) {
	if !c.equal {
		return len(p), nil
	}
	if cap(c.buf) < len(p) {
		c.buf = make([]byte, len(p))
	}
	b := c.buf[:len(p)]
	if _, err := io.ReadFull(c.r, b); err != nil || !bytes.Equal(b, p) {
		c.equal = false
	}
	return len(p), nil
}
