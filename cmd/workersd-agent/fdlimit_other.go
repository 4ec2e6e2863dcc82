//go:build !unix

package main

import "github.com/hashicorp/go-hclog"

// warnIfFewDescriptors: the agent runs on Linux; nothing to check here.
func warnIfFewDescriptors(hclog.Logger, int) {}
