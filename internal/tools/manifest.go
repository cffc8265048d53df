package tools

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/oaruntime/oaruntime/internal/tools/egress"
)

// Manifest limits.
const (
	DefaultManifestTimeout = 5 * time.Second
	MaxManifestTimeout     = 60 * time.Second
	// MaxManifestOutput caps a manifest tool's response body.
	MaxManifestOutput = 1 << 20
	// maxManifestSize caps a manifest file; a tool description is small.
	maxManifestSize = 256 << 10
	maxNameLen      = 64
)

// Manifest rejection reasons: the reason_class of manifest parity failures
// (m.ParityFailure("manifest", reason, "tools.manifest")).
const (
	ManifestInvalid         = "invalid_manifest" // unreadable, not JSON, unknown or bad field
	ManifestInvalidName     = "invalid_name"
	ManifestInvalidSchema   = "invalid_schema"
	ManifestInvalidEndpoint = "invalid_endpoint"
	ManifestDuplicate       = "duplicate" // same name twice, or a built-in tool's name
)

// ManifestReasons lists the rejection reasons, for the metric label set.
func ManifestReasons() []string {
	return []string{ManifestInvalid, ManifestInvalidName, ManifestInvalidSchema, ManifestInvalidEndpoint, ManifestDuplicate}
}

// BuiltinToolNames are the names manifests may not take.
func BuiltinToolNames() []string { return []string{"echo", "sleep", "http.fetch"} }

// Manifest is a tool manifest as written on disk.
type Manifest struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	InputSchema json.RawMessage `json:"input_schema"`
	Endpoint    string          `json:"endpoint"`
	Method      string          `json:"method,omitempty"`     // POST (default), PUT or PATCH
	TimeoutMS   *int            `json:"timeout_ms,omitempty"` // default 5000, max 60000
	CostSats    *int64          `json:"cost_sats,omitempty"`  // default 0
	Provider    string          `json:"provider,omitempty"`   // breaker key; default the endpoint host
}

// ManifestError is a rejected manifest. Field names the offending field (a
// JSON path such as "input_schema.properties"), Reason is one of the
// Manifest* reasons.
type ManifestError struct {
	Source string // file path, or "" for ParseManifest
	Name   string // the tool name when known
	Field  string
	Reason string
	Msg    string
}

func (e *ManifestError) Error() string {
	var b strings.Builder
	b.WriteString("tool manifest")
	if e.Source != "" {
		b.WriteString(" " + e.Source)
	}
	if e.Name != "" {
		fmt.Fprintf(&b, " (%s)", e.Name)
	}
	fmt.Fprintf(&b, ": %s: %s", e.Field, e.Msg)
	return b.String()
}

// ReasonClass is the parity failure reason class.
func (e *ManifestError) ReasonClass() string { return e.Reason }

// ManifestOption configures parsing and loading.
type ManifestOption func(*manifestOptions)

type manifestOptions struct {
	client   *egress.Client
	reserved []string
}

// WithEgress sets the guarded client manifest tools call their endpoints
// with. Its Timeout should be at least MaxManifestTimeout so that the tool's
// own timeout_ms is what bounds a call. Default: egress.New with a
// MaxManifestTimeout timeout and the guard's other defaults.
func WithEgress(c *egress.Client) ManifestOption {
	return func(o *manifestOptions) { o.client = c }
}

// WithReservedNames replaces the names manifests may not take (default
// BuiltinToolNames), e.g. to add tools registered by other means.
func WithReservedNames(names ...string) ManifestOption {
	return func(o *manifestOptions) { o.reserved = slices.Clone(names) }
}

func buildOptions(opts []ManifestOption) manifestOptions {
	o := manifestOptions{reserved: BuiltinToolNames()}
	for _, f := range opts {
		f(&o)
	}
	if o.client == nil {
		o.client = egress.New(egress.Config{Timeout: MaxManifestTimeout})
	}
	return o
}

// ManifestTool is a tool described by a manifest: its input is validated
// against the manifest's schema, then sent as JSON to the endpoint through
// the egress guard; the endpoint's JSON answer is the output.
type ManifestTool struct {
	m        Manifest
	method   string
	timeout  time.Duration
	cost     int64
	provider string
	endpoint *url.URL
	schema   *jsonschema.Schema
	client   *egress.Client
}

var toolNameRe = regexp.MustCompile(`^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$`)

// ParseManifest parses and validates one manifest. The error is a
// *ManifestError.
func ParseManifest(data []byte, opts ...ManifestOption) (*ManifestTool, error) {
	o := buildOptions(opts)
	t, err := parseManifest(data, o)
	if err != nil {
		return nil, err
	}
	if slices.Contains(o.reserved, t.m.Name) {
		return nil, &ManifestError{Name: t.m.Name, Field: "name", Reason: ManifestDuplicate, Msg: fmt.Sprintf("%q is the name of a built-in tool", t.m.Name)}
	}
	return t, nil
}

func parseManifest(data []byte, o manifestOptions) (*ManifestTool, error) {
	bad := func(name, field, reason, format string, args ...any) (*ManifestTool, error) {
		return nil, &ManifestError{Name: name, Field: field, Reason: reason, Msg: fmt.Sprintf(format, args...)}
	}
	if len(data) > maxManifestSize {
		return bad("", "(file)", ManifestInvalid, "larger than %d bytes", maxManifestSize)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return bad("", jsonErrField(err), ManifestInvalid, "%v", err)
	}
	if dec.More() {
		return bad("", "(file)", ManifestInvalid, "trailing data after the manifest object")
	}

	switch {
	case m.Name == "":
		return bad("", "name", ManifestInvalidName, "required")
	case len(m.Name) > maxNameLen:
		return bad("", "name", ManifestInvalidName, "longer than %d characters", maxNameLen)
	case !toolNameRe.MatchString(m.Name):
		return bad("", "name", ManifestInvalidName, "%q must be lowercase letters, digits, _ and -, in dot-separated parts starting with a letter", m.Name)
	}
	t := &ManifestTool{m: m, client: o.client}

	if len(m.Description) > 4096 {
		return bad(m.Name, "description", ManifestInvalid, "longer than 4096 characters")
	}

	schema, field, err := compileInputSchema(m.Name, m.InputSchema)
	if err != nil {
		return bad(m.Name, field, ManifestInvalidSchema, "%v", err)
	}
	t.schema = schema

	u, err := url.Parse(m.Endpoint)
	switch {
	case m.Endpoint == "":
		return bad(m.Name, "endpoint", ManifestInvalidEndpoint, "required")
	case err != nil:
		return bad(m.Name, "endpoint", ManifestInvalidEndpoint, "not a URL: %v", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return bad(m.Name, "endpoint", ManifestInvalidEndpoint, "scheme must be http or https, not %q", u.Scheme)
	case u.Hostname() == "":
		return bad(m.Name, "endpoint", ManifestInvalidEndpoint, "has no host")
	case u.User != nil:
		// Credentials in a manifest would be copied into events and logs.
		return bad(m.Name, "endpoint", ManifestInvalidEndpoint, "must not carry user info")
	case u.Fragment != "":
		return bad(m.Name, "endpoint", ManifestInvalidEndpoint, "must not have a fragment")
	}
	t.endpoint = u

	t.method = strings.ToUpper(m.Method)
	switch t.method {
	case "":
		t.method = http.MethodPost
	case http.MethodPost, http.MethodPut, http.MethodPatch:
	default:
		return bad(m.Name, "method", ManifestInvalid, "%q is not POST, PUT or PATCH (the input is sent as the request body)", m.Method)
	}

	t.timeout = DefaultManifestTimeout
	if m.TimeoutMS != nil {
		ms := *m.TimeoutMS
		if ms <= 0 || time.Duration(ms)*time.Millisecond > MaxManifestTimeout {
			return bad(m.Name, "timeout_ms", ManifestInvalid, "%d is outside 1..%d", ms, MaxManifestTimeout.Milliseconds())
		}
		t.timeout = time.Duration(ms) * time.Millisecond
	}

	if m.CostSats != nil {
		if *m.CostSats < 0 {
			return bad(m.Name, "cost_sats", ManifestInvalid, "%d is negative", *m.CostSats)
		}
		t.cost = *m.CostSats
	}

	t.provider = m.Provider
	if t.provider == "" {
		t.provider = strings.ToLower(u.Hostname())
	} else if len(t.provider) > maxNameLen || !toolNameRe.MatchString(t.provider) {
		return bad(m.Name, "provider", ManifestInvalid, "%q must be lowercase letters, digits, _, - and dots, at most %d characters", m.Provider, maxNameLen)
	}
	return t, nil
}

// jsonErrField names the field a decoding error is about, when it can.
func jsonErrField(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return te.Field
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return strings.Trim(strings.TrimPrefix(msg, "json: unknown field "), `"`)
	}
	return "(file)"
}

// refuseLoader keeps schema compilation from reading files or the network:
// a manifest's $ref may only point inside the schema itself (the standard
// meta-schemas are built in).
type refuseLoader struct{}

func (refuseLoader) Load(u string) (any, error) {
	return nil, fmt.Errorf("external $ref %q is not allowed", u)
}

// compileInputSchema compiles a tool's input schema; field names what is
// wrong when it fails.
func compileInputSchema(name string, raw json.RawMessage) (*jsonschema.Schema, string, error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return nil, "input_schema", errors.New("required")
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, "input_schema", fmt.Errorf("not JSON: %w", err)
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return nil, "input_schema", errors.New("must be a JSON Schema object")
	}
	// Tool input is always a JSON object (it is a model's function arguments).
	if typ, has := obj["type"]; has && typ != "object" {
		return nil, "input_schema.type", fmt.Errorf("must be \"object\", not %v", typ)
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(refuseLoader{})
	c.DefaultDraft(jsonschema.Draft2020)
	loc := "mem:///tools/" + name + "/input_schema.json"
	if err := c.AddResource(loc, doc); err != nil {
		return nil, "input_schema", err
	}
	s, err := c.Compile(loc)
	if err != nil {
		return nil, "input_schema", schemaErr(err, loc)
	}
	return s, "", nil
}

// schemaErr turns a compile error into one line naming where in the schema
// it is; the compiler's own message repeats the internal resource location
// and hides the detail in nested causes.
func schemaErr(err error, loc string) error {
	var sve *jsonschema.SchemaValidationError
	var ve *jsonschema.ValidationError
	if errors.As(err, &sve) && errors.As(sve.Err, &ve) {
		return fmt.Errorf("not a valid JSON Schema: %s", leafMessages(ve))
	}
	return errors.New(strings.ReplaceAll(err.Error(), loc, "input_schema"))
}

// leafMessages lists the innermost validation failures ("at '/b': ..."),
// which are the ones that say what is wrong; at most five.
func leafMessages(ve *jsonschema.ValidationError) string {
	var msgs []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			leaf := &jsonschema.ValidationError{InstanceLocation: e.InstanceLocation, ErrorKind: e.ErrorKind}
			msgs = append(msgs, leaf.Error())
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	if len(msgs) > 5 {
		msgs = append(msgs[:5], fmt.Sprintf("and %d more", len(msgs)-5))
	}
	return strings.Join(msgs, "; ")
}

// LoadManifests loads manifests from files and directories (every *.json file
// of a directory, not recursive, in name order). Every manifest is checked;
// valid ones are returned, and each rejection is returned as a
// *ManifestError so the caller can log it and count a manifest parity
// failure. A duplicate name rejects the later manifest.
func LoadManifests(paths []string, opts ...ManifestOption) ([]*ManifestTool, []error) {
	o := buildOptions(opts)
	var files []string
	var errs []error
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			errs = append(errs, &ManifestError{Source: p, Field: "(file)", Reason: ManifestInvalid, Msg: err.Error()})
			continue
		}
		if !info.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, &ManifestError{Source: p, Field: "(file)", Reason: ManifestInvalid, Msg: err.Error()})
			continue
		}
		var names []string
		for _, e := range entries {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ".json") {
				names = append(names, filepath.Join(p, e.Name()))
			}
		}
		sort.Strings(names)
		files = append(files, names...)
	}

	seen := map[string]string{}
	for _, n := range o.reserved {
		seen[n] = "(built-in)"
	}
	var out []*ManifestTool
	for _, f := range files {
		data, err := readCapped(f)
		if err != nil {
			errs = append(errs, &ManifestError{Source: f, Field: "(file)", Reason: ManifestInvalid, Msg: err.Error()})
			continue
		}
		t, err := parseManifest(data, o)
		if err != nil {
			var me *ManifestError
			if errors.As(err, &me) {
				me.Source = f
			}
			errs = append(errs, err)
			continue
		}
		if prev, dup := seen[t.m.Name]; dup {
			msg := fmt.Sprintf("%q is already defined by %s", t.m.Name, prev)
			if prev == "(built-in)" {
				msg = fmt.Sprintf("%q is the name of a built-in tool", t.m.Name)
			}
			errs = append(errs, &ManifestError{Source: f, Name: t.m.Name, Field: "name", Reason: ManifestDuplicate, Msg: msg})
			continue
		}
		seen[t.m.Name] = f
		out = append(out, t)
	}
	return out, errs
}

func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, err
	}
	return data, nil
}

// Manifest returns the parsed manifest.
func (t *ManifestTool) Manifest() Manifest { return t.m }

// Name implements Tool.
func (t *ManifestTool) Name() string { return t.m.Name }

// Timeout implements Tool.
func (t *ManifestTool) Timeout() time.Duration { return t.timeout }

// Description and InputSchema describe the tool to models (Describer).
func (t *ManifestTool) Description() string          { return t.m.Description }
func (t *ManifestTool) InputSchema() json.RawMessage { return t.m.InputSchema }

// Cost is the price of one call in sats, for the spend layer.
func (t *ManifestTool) Cost() int64 { return t.cost }

// Provider is the breaker key of the tool's endpoint.
func (t *ManifestTool) Provider() string { return t.provider }

// Call implements Tool.
func (t *ManifestTool) Call(ctx context.Context, input json.RawMessage) (json.RawMessage, error) {
	if len(bytes.TrimSpace(input)) == 0 {
		input = json.RawMessage("{}")
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(input))
	if err != nil {
		return nil, &ClassError{Class: "invalid_input", Err: fmt.Errorf("input is not JSON: %w", err)}
	}
	if err := t.schema.Validate(doc); err != nil {
		return nil, &ClassError{Class: "invalid_input", Err: inputErr(err)}
	}
	req, err := http.NewRequestWithContext(ctx, t.method, t.endpoint.String(), bytes.NewReader(input))
	if err != nil {
		return nil, &ClassError{Class: "tool_error", Err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := t.client.Do(ctx, req)
	if err != nil {
		return nil, httpErr(ctx, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestOutput+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &ClassError{Class: "tool_http_error", Err: fmt.Errorf("read response: %w", err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, &ClassError{Class: StatusClass(resp.StatusCode), Err: fmt.Errorf("endpoint answered %d", resp.StatusCode)}
	}
	if len(body) > MaxManifestOutput {
		return nil, &ClassError{Class: "tool_output_too_large", Err: fmt.Errorf("response larger than %d bytes", MaxManifestOutput)}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return json.RawMessage("null"), nil
	}
	if !json.Valid(body) {
		return nil, &ClassError{Class: "tool_invalid_output", Err: errors.New("response is not JSON")}
	}
	return json.RawMessage(body), nil
}

// StatusClass is the error class of a non-2xx endpoint answer:
// tool_http_3xx, tool_http_4xx or tool_http_5xx.
func StatusClass(code int) string {
	switch {
	case code >= 500:
		return "tool_http_5xx"
	case code >= 400:
		return "tool_http_4xx"
	case code >= 300:
		return "tool_http_3xx"
	default:
		return "tool_http_other"
	}
}

// httpErr classifies a failed guarded request: a block is ssrf_block.<why>,
// a deadline or cancellation is left to the runner (timeout, canceled).
func httpErr(ctx context.Context, err error) error {
	if b, ok := egress.IsBlocked(err); ok {
		return &ClassError{Class: b.ReasonClass(), Err: err}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &ClassError{Class: "tool_http_error", Err: err}
}

// inputErr says, in one line, where the input fails its schema.
func inputErr(err error) error {
	var ve *jsonschema.ValidationError
	if errors.As(err, &ve) {
		return fmt.Errorf("input does not match input_schema: %s", leafMessages(ve))
	}
	return fmt.Errorf("input does not match input_schema: %w", err)
}

// Describer is implemented by tools that describe themselves to models.
type Describer interface {
	Description() string
	InputSchema() json.RawMessage
}

// Spec is what a model is told about a tool.
type Spec struct {
	Name        string
	Description string
	InputSchema json.RawMessage
}

// Specs lists the registry's tools for a model request, by name. Tools that
// do not describe themselves get a short built-in description (echo, sleep)
// or an open object schema.
func Specs(r *Registry) []Spec {
	names := r.Names()
	sort.Strings(names)
	out := make([]Spec, 0, len(names))
	for _, n := range names {
		t, _ := r.Lookup(n)
		s := Spec{Name: n, InputSchema: json.RawMessage(`{"type":"object"}`)}
		switch d := t.(type) {
		case Describer:
			s.Description, s.InputSchema = d.Description(), d.InputSchema()
		default:
			switch n {
			case "echo":
				s.Description = "Returns its input unchanged."
			case "sleep":
				s.Description = "Waits ms milliseconds, then returns."
				s.InputSchema = json.RawMessage(`{"type":"object","properties":{"ms":{"type":"integer","minimum":0,"maximum":600000}}}`)
			}
		}
		out = append(out, s)
	}
	return out
}
