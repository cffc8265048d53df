package k8s

import (
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"
)

// expect is what an overlay must render.
type expect struct {
	namespace string // "" for the base (no namespace set)
	replicas  int
	image     string
}

// inputs the validator compares the rendered objects with.
type inputs struct {
	secretName string
	secretKeys map[string]string // keys of secret.example.yaml
	ruleSpec   any               // spec of deploy/monitoring/prometheus/runtime-alert-rules.yaml
}

// httpPaths are the paths the cluster will request from the runtime:
// probe paths and the scrape path, checked against the real API elsewhere.
type httpPaths struct {
	readiness, liveness, startup, metrics string
}

const (
	appName      = "oaruntime"
	nameLabel    = "app.kubernetes.io/name"
	workloadName = "oaruntime"
)

// validate checks a rendered kustomization and returns every problem found.
func validate(objs []obj, want expect, in inputs) (problems []string, paths httpPaths) {
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	seen := map[string]bool{}
	byKind := map[string][]obj{}
	for _, o := range objs {
		if av, _ := o["apiVersion"].(string); av == "" || o.kind() == "" || o.name() == "" {
			bad("object without apiVersion/kind/metadata.name: %v", o)
			continue
		}
		key := o.kind() + "/" + o.namespace() + "/" + o.name()
		if seen[key] {
			bad("%s rendered twice", key)
		}
		seen[key] = true
		byKind[o.kind()] = append(byKind[o.kind()], o)
		if strMap(get(o, "metadata", "labels"))[nameLabel] != appName {
			bad("%s lacks label %s=%s", o.id(), nameLabel, appName)
		}
		if !clusterScoped[o.kind()] && o.namespace() != want.namespace {
			bad("%s in namespace %q, want %q", o.id(), o.namespace(), want.namespace)
		}
		if o.kind() == "Namespace" && o.name() != want.namespace {
			bad("Namespace %s, but objects go to %q", o.name(), want.namespace)
		}
	}
	one := func(kind, name string) obj {
		var found obj
		for _, o := range byKind[kind] {
			if o.name() == name {
				found = o
			}
		}
		if found == nil {
			bad("no %s/%s rendered", kind, name)
		}
		return found
	}

	dep := one("Deployment", workloadName)
	if dep == nil {
		return problems, paths
	}
	if got, _ := get(dep, "spec", "replicas").(int); got != want.replicas {
		bad("Deployment replicas %v, want %d", get(dep, "spec", "replicas"), want.replicas)
	}
	sel := strMap(get(dep, "spec", "selector", "matchLabels"))
	podLabels := strMap(get(dep, "spec", "template", "metadata", "labels"))
	if len(sel) == 0 || !subset(sel, podLabels) {
		bad("Deployment selector %v does not select its pod labels %v", sel, podLabels)
	}
	podSpec := get(dep, "spec", "template", "spec")
	if sa, _ := get(podSpec, "serviceAccountName").(string); sa != "" {
		one("ServiceAccount", sa)
	}
	var ctr map[string]any
	for _, c := range list(get(podSpec, "containers")) {
		if m, _ := c.(map[string]any); m["name"] == appName {
			ctr = m
		}
	}
	if ctr == nil {
		bad("Deployment has no container %q", appName)
		return problems, paths
	}
	if img, _ := ctr["image"].(string); img != want.image {
		bad("image %q, want %q", img, want.image)
	}
	args := fmt.Sprint(ctr["args"])
	if !strings.Contains(args, "serve") {
		bad("container args %s do not run `oaruntime serve`", args)
	}
	port := 0
	for _, p := range list(ctr["ports"]) {
		if pm, _ := p.(map[string]any); pm["name"] == "http" {
			port, _ = pm["containerPort"].(int)
		}
	}
	if port == 0 {
		bad("container has no port named http")
	}
	env := map[string]map[string]any{}
	for _, e := range list(ctr["env"]) {
		em, _ := e.(map[string]any)
		name, _ := em["name"].(string)
		env[name] = em
	}
	if e := env["OA_RUNTIME_ADDR"]; e == nil {
		bad("OA_RUNTIME_ADDR is not set: serve would listen on 127.0.0.1 only")
	} else {
		host, p, err := net.SplitHostPort(fmt.Sprint(e["value"]))
		switch {
		case err != nil:
			bad("OA_RUNTIME_ADDR %v: %v", e["value"], err)
		case host != "0.0.0.0" && host != "":
			bad("OA_RUNTIME_ADDR %v: the pod must listen on 0.0.0.0, not %q", e["value"], host)
		case p != strconv.Itoa(port):
			bad("OA_RUNTIME_ADDR port %s differs from containerPort %d", p, port)
		}
	}
	for _, name := range []string{"OA_RUNTIME_DATABASE_URL", "OA_RUNTIME_SIGNATURE_SECRET"} {
		ref, _ := get(env[name], "valueFrom", "secretKeyRef").(map[string]any)
		if ref == nil {
			bad("%s must come from a Secret (secretKeyRef)", name)
			continue
		}
		if opt, _ := ref["optional"].(bool); opt {
			bad("%s is required by serve on PostgreSQL; its secretKeyRef must not be optional", name)
		}
	}
	for name, e := range env {
		ref, _ := get(e, "valueFrom", "secretKeyRef").(map[string]any)
		if ref == nil {
			continue
		}
		if ref["name"] != in.secretName {
			bad("%s reads Secret %v, the example Secret is %q", name, ref["name"], in.secretName)
		}
		if _, ok := in.secretKeys[fmt.Sprint(ref["key"])]; !ok {
			bad("%s reads key %v that secret.example.yaml does not define", name, ref["key"])
		}
	}
	if u := in.secretKeys["database-url"]; !strings.HasPrefix(u, "postgres://") {
		bad("secret.example.yaml database-url %q: replicas must share one PostgreSQL", u)
	}
	probePath := func(probe string) string {
		pr := get(ctr, probe, "httpGet")
		if pr == nil {
			bad("container has no %s httpGet", probe)
			return ""
		}
		pp := get(pr, "port")
		if pp != "http" && pp != port {
			bad("%s port %v is not the http container port", probe, pp)
		}
		path, _ := get(pr, "path").(string)
		return path
	}
	paths.readiness, paths.liveness, paths.startup = probePath("readinessProbe"), probePath("livenessProbe"), probePath("startupProbe")
	if paths.readiness != "/readyz" {
		bad("readinessProbe path %q, want /readyz (database and listener checks)", paths.readiness)
	}
	if paths.liveness != "/healthz" {
		bad("livenessProbe path %q, want /healthz (a database outage must not restart pods)", paths.liveness)
	}
	for _, kind := range []string{"cpu", "memory"} {
		req, errR := quantity(kind, get(ctr, "resources", "requests", kind))
		lim, errL := quantity(kind, get(ctr, "resources", "limits", kind))
		switch {
		case errR != nil:
			bad("resources.requests.%s: %v", kind, errR)
		case errL != nil:
			bad("resources.limits.%s: %v", kind, errL)
		case req > lim:
			bad("resources.requests.%s above its limit", kind)
		}
	}

	if svc := one("Service", workloadName); svc != nil {
		ssel := strMap(get(svc, "spec", "selector"))
		if len(ssel) == 0 || !subset(ssel, podLabels) {
			bad("Service selector %v does not select the pods %v", ssel, podLabels)
		}
		names := map[string]bool{}
		for _, p := range list(get(svc, "spec", "ports")) {
			pm, _ := p.(map[string]any)
			names[fmt.Sprint(pm["name"])] = true
			if tp := pm["targetPort"]; tp != "http" && tp != port {
				bad("Service port %v targets %v, not the container port", pm["name"], tp)
			}
		}
		if sm := one("ServiceMonitor", workloadName); sm != nil {
			msel := strMap(get(sm, "spec", "selector", "matchLabels"))
			if len(msel) == 0 || !subset(msel, strMap(get(svc, "metadata", "labels"))) {
				bad("ServiceMonitor selector %v does not select the Service labels", msel)
			}
			eps := list(get(sm, "spec", "endpoints"))
			if len(eps) == 0 {
				bad("ServiceMonitor has no endpoints")
			}
			for _, e := range eps {
				if !names[fmt.Sprint(get(e, "port"))] {
					bad("ServiceMonitor endpoint port %v is not a Service port name", get(e, "port"))
				}
				paths.metrics, _ = get(e, "path").(string)
			}
		}
	}

	if pdb := one("PodDisruptionBudget", workloadName); pdb != nil {
		psel := strMap(get(pdb, "spec", "selector", "matchLabels"))
		if len(psel) == 0 || !subset(psel, podLabels) {
			bad("PodDisruptionBudget selector %v does not select the pods", psel)
		}
		maxU, hasMax := get(pdb, "spec", "maxUnavailable").(int)
		minA, hasMin := get(pdb, "spec", "minAvailable").(int)
		switch {
		case hasMax && (maxU < 1 || maxU >= want.replicas):
			bad("PodDisruptionBudget maxUnavailable %d with %d replicas: drains blocked or every pod evictable", maxU, want.replicas)
		case hasMin && (minA < 1 || minA >= want.replicas):
			bad("PodDisruptionBudget minAvailable %d with %d replicas: drains blocked or every pod evictable", minA, want.replicas)
		case !hasMax && !hasMin:
			bad("PodDisruptionBudget sets neither maxUnavailable nor minAvailable as a number")
		}
	}

	if rule := one("PrometheusRule", "oaruntime-alert-rules"); rule != nil {
		if !reflect.DeepEqual(rule["spec"], in.ruleSpec) {
			bad("PrometheusRule spec differs from deploy/monitoring/prometheus/runtime-alert-rules.yaml")
		}
		alerts := 0
		for _, g := range list(get(rule, "spec", "groups")) {
			alerts += len(list(get(g, "rules")))
		}
		if alerts == 0 {
			bad("PrometheusRule has no rules")
		}
	}
	if cm := one("ConfigMap", "oaruntime-grafana-dashboard"); cm != nil {
		if strMap(get(cm, "metadata", "labels"))["grafana_dashboard"] != "1" {
			bad("dashboard ConfigMap lacks the grafana_dashboard=1 sidecar label")
		}
		d, _ := get(cm, "data", "runtime-ops-dashboard.json").(string)
		if !json.Valid([]byte(d)) || d == "" {
			bad("dashboard ConfigMap does not hold the dashboard JSON")
		}
	}
	return problems, paths
}

func subset(a, b map[string]string) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// quantity parses the CPU (cores, "m") and memory ("Ki".."Gi", plain bytes)
// quantities our manifests use, into millicores or bytes.
func quantity(kind string, v any) (int64, error) {
	if v == nil {
		return 0, fmt.Errorf("missing")
	}
	s := fmt.Sprint(v)
	if kind == "cpu" {
		if m, ok := strings.CutSuffix(s, "m"); ok {
			return strconv.ParseInt(m, 10, 64)
		}
		f, err := strconv.ParseFloat(s, 64)
		return int64(f * 1000), err
	}
	for suffix, mult := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			x, err := strconv.ParseInt(n, 10, 64)
			return x * mult, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}
