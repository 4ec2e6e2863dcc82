// Package procstatus reads a process's memory figures (VmHWM, VmRSS,
// RssAnon) from Linux's /proc/<pid>/status, in one unit: bytes. The file
// gives them in kB, which are KiB; the benchmarks that report them want
// KiB, MiB or MB, and each converts from bytes, so the name of its unit
// says which one it is.
package procstatus

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// Bytes is field, one of the kB figures of /proc/<pid>/status such as
// VmHWM, in bytes. It fails where there is no /proc (not Linux), no such
// process, or no such field.
func Bytes(pid int, field string) (int64, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/status"
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// "VmHWM:	   12345 kB"
		name, rest, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok || string(name) != field {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("%s: %s is %q, want a figure in kB", path, field, bytes.TrimSpace(rest))
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", path, field, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("%s: no %s", path, field)
}
