package tools

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/tools/egress"
)

func TestParseManifestValid(t *testing.T) {
	tl, err := ParseManifest([]byte(`{
		"name": "weather.lookup", "description": "d",
		"input_schema": {"type":"object","properties":{"city":{"type":"string"}},"required":["city"]},
		"endpoint": "https://weather.example.com:8443/v1", "timeout_ms": 2500, "cost_sats": 7}`))
	if err != nil {
		t.Fatal(err)
	}
	if tl.Name() != "weather.lookup" || tl.Timeout() != 2500*time.Millisecond || tl.Cost() != 7 {
		t.Errorf("name %q timeout %s cost %d", tl.Name(), tl.Timeout(), tl.Cost())
	}
	if tl.Provider() != "weather.example.com" {
		t.Errorf("provider %q, want the endpoint host", tl.Provider())
	}
	if tl.method != http.MethodPost {
		t.Errorf("method %q", tl.method)
	}
	if tl.Description() != "d" || !strings.Contains(string(tl.InputSchema()), `"city"`) {
		t.Errorf("describer %q %s", tl.Description(), tl.InputSchema())
	}

	tl, err = ParseManifest([]byte(`{"name":"a","input_schema":{},"endpoint":"http://x.example/","method":"patch","provider":"shared-pool"}`))
	if err != nil {
		t.Fatal(err)
	}
	if tl.Timeout() != DefaultManifestTimeout || tl.Cost() != 0 || tl.Provider() != "shared-pool" || tl.method != http.MethodPatch {
		t.Errorf("defaults: timeout %s cost %d provider %q method %q", tl.Timeout(), tl.Cost(), tl.Provider(), tl.method)
	}
	var _ Tool = tl
	var _ Describer = tl
}

func TestParseManifestInvalid(t *testing.T) {
	const schema = `"input_schema":{"type":"object"}`
	const ep = `"endpoint":"https://x.example.com/"`
	cases := []struct {
		name   string
		doc    string
		reason string
		field  string
	}{
		{"not json", `{"name":`, ManifestInvalid, "(file)"},
		{"array", `[]`, ManifestInvalid, "(file)"},
		{"trailing data", `{"name":"a",` + schema + `,` + ep + `} {}`, ManifestInvalid, "(file)"},
		{"unknown field", `{"name":"a",` + schema + `,` + ep + `,"timeout":5}`, ManifestInvalid, "timeout"},
		{"wrong type", `{"name":"a",` + schema + `,` + ep + `,"cost_sats":"3"}`, ManifestInvalid, "cost_sats"},
		{"name missing", `{` + schema + `,` + ep + `}`, ManifestInvalidName, "name"},
		{"name upper case", `{"name":"Weather",` + schema + `,` + ep + `}`, ManifestInvalidName, "name"},
		{"name with space", `{"name":"a b",` + schema + `,` + ep + `}`, ManifestInvalidName, "name"},
		{"name starts with digit", `{"name":"1a",` + schema + `,` + ep + `}`, ManifestInvalidName, "name"},
		{"name empty part", `{"name":"a..b",` + schema + `,` + ep + `}`, ManifestInvalidName, "name"},
		{"name trailing dot", `{"name":"a.",` + schema + `,` + ep + `}`, ManifestInvalidName, "name"},
		{"name too long", `{"name":"` + strings.Repeat("a", 65) + `",` + schema + `,` + ep + `}`, ManifestInvalidName, "name"},
		{"builtin name", `{"name":"http.fetch",` + schema + `,` + ep + `}`, ManifestDuplicate, "name"},
		{"schema missing", `{"name":"a",` + ep + `}`, ManifestInvalidSchema, "input_schema"},
		{"schema null", `{"name":"a","input_schema":null,` + ep + `}`, ManifestInvalidSchema, "input_schema"},
		{"schema not object", `{"name":"a","input_schema":"object",` + ep + `}`, ManifestInvalidSchema, "input_schema"},
		{"schema for a string", `{"name":"a","input_schema":{"type":"string"},` + ep + `}`, ManifestInvalidSchema, "input_schema.type"},
		{"schema bad type", `{"name":"a","input_schema":{"type":"object","properties":{"n":{"type":"integr"}}},` + ep + `}`, ManifestInvalidSchema, "input_schema"},
		{"schema bad regex", `{"name":"a","input_schema":{"type":"object","properties":{"n":{"pattern":"("}}},` + ep + `}`, ManifestInvalidSchema, "input_schema"},
		{"schema external ref", `{"name":"a","input_schema":{"type":"object","properties":{"n":{"$ref":"file:///etc/passwd"}}},` + ep + `}`, ManifestInvalidSchema, "input_schema"},
		{"schema remote ref", `{"name":"a","input_schema":{"$ref":"https://evil.example/s.json"},` + ep + `}`, ManifestInvalidSchema, "input_schema"},
		{"endpoint missing", `{"name":"a",` + schema + `}`, ManifestInvalidEndpoint, "endpoint"},
		{"endpoint file", `{"name":"a",` + schema + `,"endpoint":"file:///etc/passwd"}`, ManifestInvalidEndpoint, "endpoint"},
		{"endpoint ftp", `{"name":"a",` + schema + `,"endpoint":"ftp://x.example/"}`, ManifestInvalidEndpoint, "endpoint"},
		{"endpoint relative", `{"name":"a",` + schema + `,"endpoint":"/run"}`, ManifestInvalidEndpoint, "endpoint"},
		{"endpoint no host", `{"name":"a",` + schema + `,"endpoint":"https:///run"}`, ManifestInvalidEndpoint, "endpoint"},
		{"endpoint userinfo", `{"name":"a",` + schema + `,"endpoint":"https://u:p@x.example/"}`, ManifestInvalidEndpoint, "endpoint"},
		{"endpoint unparsable", `{"name":"a",` + schema + `,"endpoint":"https://x.example/%zz"}`, ManifestInvalidEndpoint, "endpoint"},
		{"method get", `{"name":"a",` + schema + `,` + ep + `,"method":"GET"}`, ManifestInvalid, "method"},
		{"timeout zero", `{"name":"a",` + schema + `,` + ep + `,"timeout_ms":0}`, ManifestInvalid, "timeout_ms"},
		{"timeout too long", `{"name":"a",` + schema + `,` + ep + `,"timeout_ms":60001}`, ManifestInvalid, "timeout_ms"},
		{"negative cost", `{"name":"a",` + schema + `,` + ep + `,"cost_sats":-1}`, ManifestInvalid, "cost_sats"},
		{"fractional cost", `{"name":"a",` + schema + `,` + ep + `,"cost_sats":1.5}`, ManifestInvalid, "cost_sats"},
		{"bad provider", `{"name":"a",` + schema + `,` + ep + `,"provider":"Has Space"}`, ManifestInvalid, "provider"},
	}
	// schemaDetail is what the message must say beyond the field name.
	schemaDetail := map[string]string{
		"schema bad type":     "at '/properties/n/type'",
		"schema bad regex":    "not valid regex",
		"schema external ref": "not allowed",
		"unknown field":       `unknown field "timeout"`,
		"builtin name":        "built-in",
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tl, err := ParseManifest([]byte(tc.doc))
			if err == nil {
				t.Fatalf("accepted: %+v", tl.Manifest())
			}
			var me *ManifestError
			if !errors.As(err, &me) {
				t.Fatalf("error %T %v is not a *ManifestError", err, err)
			}
			if me.ReasonClass() != tc.reason || me.Field != tc.field {
				t.Fatalf("reason %q field %q, want %q %q: %v", me.ReasonClass(), me.Field, tc.reason, tc.field, err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("message does not name the field: %v", err)
			}
			if strings.Contains(err.Error(), "mem:///") {
				t.Errorf("message leaks the internal schema location: %v", err)
			}
			if detail, ok := schemaDetail[tc.name]; ok && !strings.Contains(err.Error(), detail) {
				t.Errorf("message %q does not say %q", err, detail)
			}
		})
	}
}

func TestLoadManifests(t *testing.T) {
	tls, errs := LoadManifests([]string{"testdata/manifests/good"})
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	if len(tls) != 2 || tls[0].Name() != "translate" || tls[1].Name() != "weather.lookup" {
		t.Fatalf("tools %v", toolNames(tls))
	}
	if tls[0].method != http.MethodPut || tls[0].Provider() != "translate-svc" {
		t.Errorf("translate: %q %q", tls[0].method, tls[0].Provider())
	}

	tls, errs = LoadManifests([]string{"testdata/manifests/mixed", "testdata/manifests/missing.json"})
	if got := toolNames(tls); strings.Join(got, ",") != "weather.lookup,ok_tool" {
		t.Fatalf("accepted %v", got)
	}
	want := map[string]string{ // file -> reason
		"b_weather_again.json": ManifestDuplicate,
		"c_bad_schema.json":    ManifestInvalidSchema,
		"d_file_scheme.json":   ManifestInvalidEndpoint,
		"e_echo.json":          ManifestDuplicate,
		"f_not_json.json":      ManifestInvalid,
		"missing.json":         ManifestInvalid,
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d: %v", len(errs), len(want), errs)
	}
	for _, err := range errs {
		var me *ManifestError
		if !errors.As(err, &me) {
			t.Fatalf("%T %v", err, err)
		}
		base := filepath.Base(me.Source)
		if want[base] != me.Reason {
			t.Errorf("%s: reason %q, want %q (%v)", base, me.Reason, want[base], err)
		}
		if !strings.Contains(err.Error(), base) {
			t.Errorf("message does not name the file: %v", err)
		}
	}

	// Single files and extra reserved names.
	tls, errs = LoadManifests([]string{"testdata/manifests/good/weather.json"}, WithReservedNames("weather.lookup"))
	if len(tls) != 0 || len(errs) != 1 || errs[0].(*ManifestError).Reason != ManifestDuplicate {
		t.Fatalf("reserved: %v %v", toolNames(tls), errs)
	}
}

func toolNames(ts []*ManifestTool) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Name())
	}
	return out
}

// endpoint returns a manifest tool calling h through a guard that allows
// loopback (the httptest server).
func endpoint(t *testing.T, h http.HandlerFunc, extra string) *ManifestTool {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	doc := `{"name":"calc.add","input_schema":{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"],"additionalProperties":false},"endpoint":"` + srv.URL + `/add"` + extra + `}`
	tl, err := ParseManifest([]byte(doc), WithEgress(egress.New(egress.Config{AllowLoopbackForTests: true, Timeout: time.Minute})))
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

func TestManifestToolCall(t *testing.T) {
	var gotMethod, gotType, gotBody atomic.Value
	tl := endpoint(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotMethod.Store(r.Method)
		gotType.Store(r.Header.Get("Content-Type"))
		gotBody.Store(string(b))
		var in struct{ A, B int }
		_ = json.Unmarshal(b, &in)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int{"sum": in.A + in.B})
	}, "")
	reg := NewRegistry(tl)
	res := reg.Run(context.Background(), "calc.add", json.RawMessage(`{"a":2,"b":3}`))
	if res.Status != Succeeded {
		t.Fatalf("result %+v", res)
	}
	var out struct{ Sum int }
	if err := json.Unmarshal(res.Output, &out); err != nil || out.Sum != 5 {
		t.Fatalf("output %s", res.Output)
	}
	if gotMethod.Load() != "POST" || gotType.Load() != "application/json" || gotBody.Load() != `{"a":2,"b":3}` {
		t.Errorf("request %v %v %v", gotMethod.Load(), gotType.Load(), gotBody.Load())
	}
}

func TestManifestToolInvalidInput(t *testing.T) {
	var calls atomic.Int32
	tl := endpoint(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }, "")
	reg := NewRegistry(tl)
	cases := []struct {
		name, input, mention string
	}{
		{"missing field", `{"a":1}`, "missing property 'b'"},
		{"wrong type", `{"a":1,"b":"two"}`, "at '/b': got string, want integer"},
		{"extra field", `{"a":1,"b":2,"c":3}`, "'c' not allowed"},
		{"not an object", `[1,2]`, "want object"},
		{"not json", `{"a":`, "not JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := reg.Run(context.Background(), "calc.add", json.RawMessage(tc.input))
			if res.Status != Failed || res.ErrorClass != "invalid_input" {
				t.Fatalf("result %+v", res)
			}
			if !strings.Contains(res.Error, tc.mention) {
				t.Errorf("error %q does not mention %q", res.Error, tc.mention)
			}
			if strings.Contains(res.Error, "mem:///") {
				t.Errorf("error leaks the schema location: %q", res.Error)
			}
		})
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("endpoint called %d times for invalid input", n)
	}
}

func TestManifestToolHTTPFailures(t *testing.T) {
	cases := []struct {
		name   string
		h      http.HandlerFunc
		status string
		class  string
	}{
		{"5xx", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }, Failed, "tool_http_5xx"},
		{"4xx", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(422) }, Failed, "tool_http_4xx"},
		{"not json", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "<html>") }, Failed, "tool_invalid_output"},
		{"too large", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, `"`+strings.Repeat("x", MaxManifestOutput)+`"`)
		}, Failed, "tool_output_too_large"},
		{"empty body", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }, Succeeded, ""},
		{"slow", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadAll(r.Body) // the server notices a gone client only after the body
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}, Timeout, "timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			extra := ""
			if tc.name == "slow" {
				extra = `,"timeout_ms":50`
			}
			reg := NewRegistry(endpoint(t, tc.h, extra))
			res := reg.Run(context.Background(), "calc.add", json.RawMessage(`{"a":1,"b":2}`))
			if res.Status != tc.status || res.ErrorClass != tc.class {
				t.Fatalf("result %+v, want %s/%s", res, tc.status, tc.class)
			}
		})
	}
}

func TestManifestToolEgressBlocked(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("blocked endpoint was reached")
	}))
	defer srv.Close()
	doc := `{"name":"local","input_schema":{"type":"object"},"endpoint":"` + srv.URL + `/"}`
	// Default guard: loopback is blocked.
	tl, err := ParseManifest([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	res := NewRegistry(tl).Run(context.Background(), "local", json.RawMessage(`{}`))
	if res.Status != Failed || res.ErrorClass != "ssrf_block.loopback" {
		t.Fatalf("result %+v", res)
	}

	meta, err := ParseManifest([]byte(`{"name":"meta","input_schema":{"type":"object"},"endpoint":"http://169.254.169.254/latest"}`))
	if err != nil {
		t.Fatal(err)
	}
	res = NewRegistry(meta).Run(context.Background(), "meta", json.RawMessage(`{}`))
	if res.Status != Failed || res.ErrorClass != "ssrf_block.metadata" {
		t.Fatalf("metadata result %+v", res)
	}
}

func TestSpecs(t *testing.T) {
	tls, errs := LoadManifests([]string{"testdata/manifests/good"})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	reg := NewRegistry(Echo{}, Sleep{}, NewHTTPFetch(nil), tls[0], tls[1])
	specs := Specs(reg)
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
		if !json.Valid(s.InputSchema) {
			t.Errorf("%s: schema %s", s.Name, s.InputSchema)
		}
	}
	if strings.Join(names, ",") != "echo,http.fetch,sleep,translate,weather.lookup" {
		t.Fatalf("names %v", names)
	}
	if specs[4].Description != "Current weather for a city." || !strings.Contains(string(specs[4].InputSchema), `"city"`) {
		t.Errorf("manifest spec %+v", specs[4])
	}
	if !strings.Contains(string(specs[1].InputSchema), `"url"`) {
		t.Errorf("http.fetch spec %+v", specs[1])
	}
	if specs[0].Description == "" {
		t.Error("echo has no description")
	}
}

func TestManifestTestdataIsValidJSONWhereIntended(t *testing.T) {
	// Guard the fixtures: the "good" directory must only hold valid manifests.
	entries, err := os.ReadDir("testdata/manifests/good")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join("testdata/manifests/good", e.Name()))
		if err != nil || !json.Valid(b) {
			t.Errorf("%s: %v", e.Name(), err)
		}
	}
}
