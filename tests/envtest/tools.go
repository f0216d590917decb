//go:build tools

// Package tools pins the envtest binaries in go.mod/go.sum. It is never
// compiled; envtest.sh builds the two main packages directly.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
