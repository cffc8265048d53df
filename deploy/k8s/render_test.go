package k8s

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// obj is one Kubernetes object as decoded YAML.
type obj map[string]any

func (o obj) kind() string { s, _ := o["kind"].(string); return s }
func (o obj) name() string { s, _ := get(o, "metadata", "name").(string); return s }
func (o obj) namespace() string {
	s, _ := get(o, "metadata", "namespace").(string)
	return s
}
func (o obj) id() string { return o.kind() + "/" + o.name() }

// get walks nested maps; nil when a step is missing.
func get(v any, path ...string) any {
	if o, ok := v.(obj); ok {
		v = map[string]any(o)
	}
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func list(v any) []any { l, _ := v.([]any); return l }

func strMap(v any) map[string]string {
	m, _ := v.(map[string]any)
	out := map[string]string{}
	for k, x := range m {
		out[k] = fmt.Sprint(x)
	}
	return out
}

// kustomization holds the fields our kustomizations use. Decoding with
// KnownFields makes any other field an error, so a kustomization cannot use
// a feature this renderer would silently ignore.
type kustomization struct {
	APIVersion         string   `yaml:"apiVersion"`
	Kind               string   `yaml:"kind"`
	Namespace          string   `yaml:"namespace"`
	Resources          []string `yaml:"resources"`
	ConfigMapGenerator []struct {
		Name    string   `yaml:"name"`
		Files   []string `yaml:"files"`
		Options struct {
			DisableNameSuffixHash bool              `yaml:"disableNameSuffixHash"`
			Labels                map[string]string `yaml:"labels"`
		} `yaml:"options"`
	} `yaml:"configMapGenerator"`
	Replicas []struct {
		Name  string `yaml:"name"`
		Count int    `yaml:"count"`
	} `yaml:"replicas"`
	Images []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
		Digest  string `yaml:"digest"`
	} `yaml:"images"`
	Patches []struct {
		Path   string `yaml:"path"`
		Target struct {
			Kind string `yaml:"kind"`
			Name string `yaml:"name"`
		} `yaml:"target"`
	} `yaml:"patches"`
}

// decodeAll parses a multi-document YAML stream into objects.
func decodeAll(b []byte) ([]obj, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []obj
	for {
		// Into a plain map: yaml.v3 gives nested mappings the type of the
		// outer one, and the helpers expect map[string]any below the top.
		var o map[string]any
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(o) > 0 {
			out = append(out, obj(o))
		}
	}
}

// render builds a kustomization directory the way `kustomize build` does for
// the features kustomization declares: resources (files and directories),
// configMapGenerator without name hashes, namespace, replicas, images and
// strategic-merge patches targeted by kind and name. The CI image has no
// kubectl; `kubectl kustomize` renders the same output (checked by hand,
// see deploy/k8s/README.md).
func render(dir string) ([]obj, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k kustomization
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s/kustomization.yaml: apiVersion/kind %q/%q", dir, k.APIVersion, k.Kind)
	}
	var objs []obj
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s: resource %s: %w", dir, r, err)
		}
		if st.IsDir() {
			sub, err := render(p)
			if err != nil {
				return nil, err
			}
			objs = append(objs, sub...)
			continue
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			// kustomize's default load restrictor refuses this.
			return nil, fmt.Errorf("%s: resource file %s is outside the kustomization directory", dir, r)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		docs, err := decodeAll(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		objs = append(objs, docs...)
	}
	for _, g := range k.ConfigMapGenerator {
		if !g.Options.DisableNameSuffixHash {
			return nil, fmt.Errorf("%s: configMapGenerator %s: name hashes are not rendered here; set disableNameSuffixHash", dir, g.Name)
		}
		data := map[string]any{}
		for _, f := range g.Files {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return nil, fmt.Errorf("%s: configMapGenerator %s: %w", dir, g.Name, err)
			}
			data[filepath.Base(f)] = string(b)
		}
		labels := map[string]any{}
		for kk, v := range g.Options.Labels {
			labels[kk] = v
		}
		objs = append(objs, obj{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": g.Name, "labels": labels}, "data": data})
	}
	for _, p := range k.Patches {
		b, err := os.ReadFile(filepath.Join(dir, p.Path))
		if err != nil {
			return nil, err
		}
		var patch map[string]any
		if err := yaml.Unmarshal(b, &patch); err != nil {
			return nil, fmt.Errorf("%s: %w", p.Path, err)
		}
		hit := 0
		for _, o := range objs {
			if o.kind() == p.Target.Kind && o.name() == p.Target.Name {
				mergeMap(o, patch)
				hit++
			}
		}
		if hit == 0 {
			return nil, fmt.Errorf("%s: patch %s matches no %s/%s", dir, p.Path, p.Target.Kind, p.Target.Name)
		}
	}
	for _, r := range k.Replicas {
		hit := 0
		for _, o := range objs {
			if (o.kind() == "Deployment" || o.kind() == "StatefulSet") && o.name() == r.Name {
				get(o, "spec").(map[string]any)["replicas"] = r.Count
				hit++
			}
		}
		if hit == 0 {
			return nil, fmt.Errorf("%s: replicas for %s match no workload", dir, r.Name)
		}
	}
	for _, im := range k.Images {
		hit := 0
		for _, o := range objs {
			for _, c := range list(get(o, "spec", "template", "spec", "containers")) {
				cm, _ := c.(map[string]any)
				image, _ := cm["image"].(string)
				name, tag := splitImage(image)
				if name != im.Name {
					continue
				}
				if im.NewName != "" {
					name = im.NewName
				}
				switch {
				case im.Digest != "":
					cm["image"] = name + "@" + im.Digest
				case im.NewTag != "":
					cm["image"] = name + ":" + im.NewTag
				default:
					cm["image"] = name + tag
				}
				hit++
			}
		}
		if hit == 0 {
			return nil, fmt.Errorf("%s: image %s matches no container", dir, im.Name)
		}
	}
	if k.Namespace != "" {
		for _, o := range objs {
			if clusterScoped[o.kind()] {
				continue
			}
			md, ok := o["metadata"].(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%s: %s has no metadata", dir, o.id())
			}
			md["namespace"] = k.Namespace
		}
	}
	return objs, nil
}

var clusterScoped = map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true, "CustomResourceDefinition": true}

// splitImage splits "repo/name:tag" into "repo/name" and ":tag" (a port in
// the registry host is not a tag).
func splitImage(image string) (name, tag string) {
	if i := strings.LastIndexByte(image, ':'); i > strings.LastIndexByte(image, '/') {
		return image[:i], image[i:]
	}
	return image, ""
}

// mergeMap applies a strategic-merge patch the way it works for the fields
// we patch: maps merge key by key, lists of named maps (containers, env,
// ports, volumes) merge by name, other values are replaced.
func mergeMap(dst, patch map[string]any) {
	for k, pv := range patch {
		dv, exists := dst[k]
		switch p := pv.(type) {
		case map[string]any:
			if d, ok := dv.(map[string]any); ok && exists {
				mergeMap(d, p)
				continue
			}
			dst[k] = p
		case []any:
			if d, ok := dv.([]any); ok && exists && namedList(p) && namedList(d) {
				dst[k] = mergeNamed(d, p)
				continue
			}
			dst[k] = p
		default:
			dst[k] = pv
		}
	}
}

func namedList(l []any) bool {
	for _, x := range l {
		m, ok := x.(map[string]any)
		if !ok {
			return false
		}
		if _, ok := m["name"].(string); !ok {
			return false
		}
	}
	return len(l) > 0
}

func mergeNamed(dst, patch []any) []any {
	for _, p := range patch {
		pm := p.(map[string]any)
		found := false
		for _, d := range dst {
			dm := d.(map[string]any)
			if dm["name"] == pm["name"] {
				mergeMap(dm, pm)
				found = true
				break
			}
		}
		if !found {
			dst = append(dst, pm)
		}
	}
	return dst
}

// ids lists rendered objects as kind/namespace/name, sorted.
func ids(objs []obj) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.kind() + "/" + o.namespace() + "/" + o.name()
	}
	sort.Strings(out)
	return out
}
