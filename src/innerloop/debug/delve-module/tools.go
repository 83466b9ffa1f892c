//go:build tools

// Package tools pins Delve's dlv command and, through go.sum, every module it is built from.
package tools

import _ "github.com/go-delve/delve/cmd/dlv"
