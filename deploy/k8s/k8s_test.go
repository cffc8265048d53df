// Package k8s holds the tests of the Kubernetes manifests in deploy/k8s:
// each kustomization (base and overlays) is rendered with a minimal
// kustomize and validated, and the HTTP paths the cluster will call (probes,
// scrape) are requested from the real runtime handler.
package k8s

import (
	"context"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/oaruntime/oaruntime/internal/app"
	"github.com/oaruntime/oaruntime/internal/config"
)

const rulePath = "../monitoring/prometheus/runtime-alert-rules.yaml"

func loadInputs(t *testing.T) inputs {
	t.Helper()
	b, err := os.ReadFile("base/secret.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var secret struct {
		Metadata   struct{ Name string } `yaml:"metadata"`
		StringData map[string]string     `yaml:"stringData"`
	}
	if err := yaml.Unmarshal(b, &secret); err != nil {
		t.Fatalf("secret.example.yaml: %v", err)
	}
	rb, err := os.ReadFile(rulePath)
	if err != nil {
		t.Fatalf("the PrometheusRule the base references: %v", err)
	}
	docs, err := decodeAll(rb)
	if err != nil || len(docs) != 1 || docs[0].kind() != "PrometheusRule" {
		t.Fatalf("%s: want one PrometheusRule, got %d docs (%v)", rulePath, len(docs), err)
	}
	return inputs{secretName: secret.Metadata.Name, secretKeys: secret.StringData, ruleSpec: docs[0]["spec"]}
}

var overlays = []struct {
	dir  string
	want expect
}{
	{"base", expect{namespace: "", replicas: 2, image: "ghcr.io/oaruntime/oaruntime:latest"}},
	{"overlays/staging", expect{namespace: "oaruntime-staging", replicas: 2, image: "ghcr.io/oaruntime/oaruntime:main"}},
	{"overlays/production", expect{namespace: "oaruntime", replicas: 3, image: "ghcr.io/oaruntime/oaruntime:0.1.0"}},
}

func TestKustomizationsRenderValidManifests(t *testing.T) {
	in := loadInputs(t)
	for _, ov := range overlays {
		t.Run(ov.dir, func(t *testing.T) {
			objs, err := render(ov.dir)
			if err != nil {
				t.Fatal(err)
			}
			problems, paths := validate(objs, ov.want, in)
			for _, p := range problems {
				t.Error(p)
			}
			if paths.metrics != "/metrics" {
				t.Errorf("ServiceMonitor scrapes %q, want /metrics", paths.metrics)
			}
			kinds := map[string]bool{}
			for _, o := range objs {
				kinds[o.kind()] = true
			}
			for _, k := range []string{"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule", "ServiceAccount", "ConfigMap"} {
				if !kinds[k] {
					t.Errorf("no %s rendered (got %v)", k, ids(objs))
				}
			}
			if ov.want.namespace != "" && !kinds["Namespace"] {
				t.Errorf("overlay %s does not create its namespace", ov.dir)
			}
		})
	}
}

func TestProductionPatchRaisesResources(t *testing.T) {
	objs, err := render("overlays/production")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.kind() != "Deployment" {
			continue
		}
		c := list(get(o, "spec", "template", "spec", "containers"))[0]
		if got := get(c, "resources", "limits", "memory"); got != "1Gi" {
			t.Fatalf("production memory limit %v, want 1Gi from resources.yaml", got)
		}
		// The patch merges by container name: the rest of the container stays.
		if get(c, "readinessProbe", "httpGet", "path") != "/readyz" || len(list(get(c, "env"))) < 4 {
			t.Fatalf("patch replaced the container instead of merging: %v", c)
		}
		return
	}
	t.Fatal("no Deployment")
}

// TestClusterPathsAreServedByTheRuntime starts a real node (SQLite, wired
// and served as `oaruntime serve` does) and requests every path the
// manifests make the cluster call: the three probes and the scrape path.
func TestClusterPathsAreServedByTheRuntime(t *testing.T) {
	objs, err := render("base")
	if err != nil {
		t.Fatal(err)
	}
	_, paths := validate(objs, overlays[0].want, loadInputs(t))
	dir := t.TempDir()
	var cfg config.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(fs)
	if err := fs.Parse([]string{"--data-dir", dir, "--database-url", "sqlite:" + filepath.Join(dir, "runtime.db")}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := app.NewServer(ctx, &cfg, io.Discard)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		srv.Close()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()
	hc := &http.Client{Timeout: 5 * time.Second}
	getPath := func(path string) (int, string) {
		resp, err := hc.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Background services (listener, projector) start with Serve; readiness
	// follows them as the readinessProbe would see it.
	deadline := time.Now().Add(20 * time.Second)
	for code, _ := getPath(paths.readiness); code != http.StatusOK && time.Now().Before(deadline); code, _ = getPath(paths.readiness) {
		time.Sleep(50 * time.Millisecond)
	}
	tests := []struct {
		what, path, bodyHas string
	}{
		{"readinessProbe", paths.readiness, `"status":"ready"`},
		{"livenessProbe", paths.liveness, `"status":"ok"`},
		{"startupProbe", paths.startup, `"status":"ok"`},
		{"ServiceMonitor", paths.metrics, "openagents_runtime_build_info"},
	}
	for _, tt := range tests {
		t.Run(tt.what, func(t *testing.T) {
			if tt.path == "" {
				t.Fatalf("the manifests give %s no path", tt.what)
			}
			code, body := getPath(tt.path)
			if code != http.StatusOK || !strings.Contains(body, tt.bodyHas) {
				t.Fatalf("GET %s: %d %.300s (want 200 with %q)", tt.path, code, body, tt.bodyHas)
			}
		})
	}
}

// TestValidatorCatchesBrokenManifests mutates the rendered base and checks
// that the validator names each defect, so a passing render means something.
func TestValidatorCatchesBrokenManifests(t *testing.T) {
	in := loadInputs(t)
	container := func(objs []obj) map[string]any {
		for _, o := range objs {
			if o.kind() == "Deployment" {
				return list(get(o, "spec", "template", "spec", "containers"))[0].(map[string]any)
			}
		}
		t.Fatal("no Deployment")
		return nil
	}
	find := func(objs []obj, kind string) obj {
		for _, o := range objs {
			if o.kind() == kind {
				return o
			}
		}
		t.Fatalf("no %s", kind)
		return nil
	}
	setEnv := func(objs []obj, name string, v any) {
		for _, e := range list(container(objs)["env"]) {
			if em := e.(map[string]any); em["name"] == name {
				em["value"] = v
			}
		}
	}
	drop := func(objs []obj, kind string) []obj {
		return slices.DeleteFunc(objs, func(o obj) bool { return o.kind() == kind })
	}
	tests := []struct {
		name   string
		mutate func([]obj) []obj
		want   string
	}{
		{"loopback address", func(o []obj) []obj { setEnv(o, "OA_RUNTIME_ADDR", "127.0.0.1:4100"); return o }, "must listen on 0.0.0.0"},
		{"address port", func(o []obj) []obj { setEnv(o, "OA_RUNTIME_ADDR", "0.0.0.0:8080"); return o }, "differs from containerPort"},
		{"readiness path", func(o []obj) []obj {
			get(container(o), "readinessProbe", "httpGet").(map[string]any)["path"] = "/ready"
			return o
		}, "readinessProbe path"},
		{"liveness on readyz", func(o []obj) []obj {
			get(container(o), "livenessProbe", "httpGet").(map[string]any)["path"] = "/readyz"
			return o
		}, "livenessProbe path"},
		{"probe port", func(o []obj) []obj {
			get(container(o), "readinessProbe", "httpGet").(map[string]any)["port"] = 9999
			return o
		}, "readinessProbe port"},
		{"service selector", func(o []obj) []obj {
			get(find(o, "Service"), "spec").(map[string]any)["selector"] = map[string]any{"app": "other"}
			return o
		}, "Service selector"},
		{"service target port", func(o []obj) []obj {
			list(get(find(o, "Service"), "spec", "ports"))[0].(map[string]any)["targetPort"] = 8080
			return o
		}, "targets 8080"},
		{"monitor port", func(o []obj) []obj {
			list(get(find(o, "ServiceMonitor"), "spec", "endpoints"))[0].(map[string]any)["port"] = "metrics"
			return o
		}, "not a Service port name"},
		{"pdb blocks drains", func(o []obj) []obj {
			get(find(o, "PodDisruptionBudget"), "spec").(map[string]any)["maxUnavailable"] = 0
			return o
		}, "drains blocked"},
		{"no limits", func(o []obj) []obj { delete(get(container(o), "resources").(map[string]any), "limits"); return o }, "resources.limits.cpu"},
		{"secret inline", func(o []obj) []obj {
			for _, e := range list(container(o)["env"]) {
				if em := e.(map[string]any); em["name"] == "OA_RUNTIME_SIGNATURE_SECRET" {
					delete(em, "valueFrom")
					em["value"] = "inline"
				}
			}
			return o
		}, "must come from a Secret"},
		{"unknown secret key", func(o []obj) []obj {
			for _, e := range list(container(o)["env"]) {
				if em := e.(map[string]any); em["name"] == "OA_RUNTIME_DATABASE_URL" {
					get(em, "valueFrom", "secretKeyRef").(map[string]any)["key"] = "db"
				}
			}
			return o
		}, "does not define"},
		{"no prometheus rule", func(o []obj) []obj { return drop(o, "PrometheusRule") }, "no PrometheusRule"},
		{"stale prometheus rule", func(o []obj) []obj {
			get(find(o, "PrometheusRule"), "spec").(map[string]any)["groups"] = []any{}
			return o
		}, "differs from deploy/monitoring"},
		{"no pdb", func(o []obj) []obj { return drop(o, "PodDisruptionBudget") }, "no PodDisruptionBudget"},
		{"replicas", func(o []obj) []obj { get(find(o, "Deployment"), "spec").(map[string]any)["replicas"] = 1; return o }, "replicas"},
		{"wrong namespace", func(o []obj) []obj {
			find(o, "Service")["metadata"].(map[string]any)["namespace"] = "default"
			return o
		}, `in namespace "default"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := render("base")
			if err != nil {
				t.Fatal(err)
			}
			problems, _ := validate(tt.mutate(objs), overlays[0].want, in)
			if !strings.Contains(strings.Join(problems, "\n"), tt.want) {
				t.Fatalf("problems %q lack %q", problems, tt.want)
			}
		})
	}
}

func TestRenderer(t *testing.T) {
	t.Run("strategic merge by name", func(t *testing.T) {
		dst := map[string]any{"spec": map[string]any{"containers": []any{
			map[string]any{"name": "a", "image": "x", "resources": map[string]any{"limits": map[string]any{"cpu": "1"}}},
			map[string]any{"name": "b", "image": "y"},
		}}}
		mergeMap(dst, map[string]any{"spec": map[string]any{"containers": []any{
			map[string]any{"name": "a", "resources": map[string]any{"limits": map[string]any{"memory": "1Gi"}}},
		}}})
		cs := list(get(dst, "spec", "containers"))
		if len(cs) != 2 || get(cs[0], "image") != "x" || get(cs[0], "resources", "limits", "cpu") != "1" || get(cs[0], "resources", "limits", "memory") != "1Gi" {
			t.Fatalf("merged %v", dst)
		}
	})
	t.Run("image names", func(t *testing.T) {
		for in, want := range map[string][2]string{
			"ghcr.io/o/r:1.0":      {"ghcr.io/o/r", ":1.0"},
			"ghcr.io/o/r":          {"ghcr.io/o/r", ""},
			"registry:5000/o/r":    {"registry:5000/o/r", ""},
			"registry:5000/o/r:v2": {"registry:5000/o/r", ":v2"},
		} {
			if n, tag := splitImage(in); n != want[0] || tag != want[1] {
				t.Errorf("splitImage(%q) = %q %q", in, n, tag)
			}
		}
	})
	t.Run("file outside the kustomization is refused like kustomize does", func(t *testing.T) {
		dir := t.TempDir()
		sub := filepath.Join(dir, "k")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(dir, "cm.yaml"), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"), 0o644)
		_ = os.WriteFile(filepath.Join(sub, "kustomization.yaml"), []byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../cm.yaml]\n"), 0o644)
		if _, err := render(sub); err == nil || !strings.Contains(err.Error(), "outside") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("unknown kustomization field is an error", func(t *testing.T) {
		dir := t.TempDir()
		_ = os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\ncommonLabels: {a: b}\n"), 0o644)
		if _, err := render(dir); err == nil || !strings.Contains(err.Error(), "commonLabels") {
			t.Fatalf("err %v", err)
		}
	})
}
