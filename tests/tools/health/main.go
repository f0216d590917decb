// health: the verdicts GitOps tools reach on the operator's objects, for the test suite.
//
//	health -lua deploy/argocd/health.lua < objects.json
//
// reads a JSON array of objects (as the API server returns them) and prints a JSON array with,
// for each, Argo CD's verdict (the Lua health check run under gopher-lua, the interpreter Argo
// CD embeds, with the libraries Argo CD opens and `obj` set the way Argo CD sets it) and the
// kstatus verdict (sigs.k8s.io/cli-utils status.Compute, what Flux `wait: true`, kpt and
// `kubectl wait`-like tools use).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type result struct {
	Kind      string  `json:"kind"`
	Namespace string  `json:"namespace"`
	Name      string  `json:"name"`
	Argo      verdict `json:"argo"`
	Kstatus   verdict `json:"kstatus"`
}

// Argo CD's health statuses (gitops-engine health.HealthStatusCode).
var argoStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

// toLua converts decoded JSON the way Argo CD's lua VM does (maps and arrays to tables).
func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := l.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(l, e))
		}
		return t
	case []any:
		t := l.NewTable()
		for _, e := range v {
			t.Append(toLua(l, e))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case json.Number:
		f, _ := v.Float64()
		return lua.LNumber(f)
	case nil:
		return lua.LNil
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

func argo(script string, obj map[string]any) (verdict, error) {
	// Argo CD runs health scripts without the standard libraries, opening only these.
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return verdict{}, err
		}
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return verdict{}, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return verdict{}, fmt.Errorf("the health script returned %s, not a table", l.Get(-1).Type())
	}
	v := verdict{Status: lua.LVAsString(ret.RawGetString("status")), Message: lua.LVAsString(ret.RawGetString("message"))}
	if !argoStatuses[v.Status] {
		return verdict{}, fmt.Errorf("the health script returned status %q, which Argo CD does not know", v.Status)
	}
	return v, nil
}

func main() {
	luaFile := flag.String("lua", "", "the Argo CD Lua health check")
	flag.Parse()
	script, err := os.ReadFile(*luaFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "health:", err)
		os.Exit(2)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "health: reading the objects:", err)
		os.Exit(2)
	}
	// As the API machinery decodes objects: whole numbers become int64 (kstatus and Argo CD
	// both read generations that way).
	var objects []map[string]any
	if err := utiljson.Unmarshal(input, &objects); err != nil {
		fmt.Fprintln(os.Stderr, "health: reading the objects:", err)
		os.Exit(2)
	}
	out := []result{}
	for _, obj := range objects {
		u := &unstructured.Unstructured{Object: obj}
		r := result{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
		if r.Argo, err = argo(string(script), obj); err != nil {
			fmt.Fprintf(os.Stderr, "health: %s %s/%s: lua: %v\n", r.Kind, r.Namespace, r.Name, err)
			os.Exit(1)
		}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "health: %s %s/%s: kstatus: %v\n", r.Kind, r.Namespace, r.Name, err)
			os.Exit(1)
		}
		r.Kstatus = verdict{Status: res.Status.String(), Message: res.Message}
		out = append(out, r)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "health:", err)
		os.Exit(1)
	}
}
