//go:build tools

// Package tools pins the Pulumi CLI (engine) so that `go install` builds it
// from the exact module versions recorded in go.mod/go.sum.
package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
