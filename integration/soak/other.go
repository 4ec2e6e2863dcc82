//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "soak: Linux only (network namespaces, tc, tmpfs)")
	os.Exit(2)
}
