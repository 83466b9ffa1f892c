//go:build tools

// Package tools pins h2spec and its dependencies (h2spec v2.2.1 has no go.mod of its own).
package tools

import _ "github.com/summerwind/h2spec/cmd/h2spec"
