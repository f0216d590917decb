//go:build tools

// Package tools pins the Helm CLI (v3) the chart tests run. It is never
// compiled; ../gotools.sh builds helm.sh/helm/v3/cmd/helm directly.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
