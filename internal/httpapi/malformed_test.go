package httpapi

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/auth"
)

// route is one signed route of the API as the malformed-input table sees it.
type route struct {
	name   string
	method string
	path   string // with {run} for the run id
	body   string // a valid body ("" for none)
}

func signedRoutes() []route {
	return []route{
		{"create run", "POST", "/internal/v1/runs", `{"thread_id":"thread-1"}`},
		{"get run", "GET", "/internal/v1/runs/{run}", ""},
		{"post frame", "POST", "/internal/v1/runs/{run}/frames", `{"frame_id":"f","type":"user_message","payload":{"text":"hi"}}`},
		{"post event", "POST", "/internal/v1/runs/{run}/events", `{"event_type":"run.delta","payload":{}}`},
		{"list events", "GET", "/internal/v1/runs/{run}/events", ""},
		{"stream", "GET", "/internal/v1/runs/{run}/stream", ""},
		{"cancel", "POST", "/internal/v1/runs/{run}/cancel", `{"reason":"r"}`},
		{"verify", "GET", "/internal/v1/runs/{run}/verify", ""},
	}
}

// TestMalformedRequestsOnEveryRoute sends bad signatures, principals, ids
// and bodies to every signed route: each answer must be a 4xx error envelope
// whose message names the field (or the body, or the signature).
func TestMalformedRequestsOnEveryRoute(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-malformed")
	long := strings.Repeat("a", MaxIDLen+1)
	huge := `{"thread_id":"` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}`
	replayed := sign(owner)
	wantStatus(t, e.do("GET", "/internal/v1/runs/"+run.RunID, nil, header(auth.Header, replayed)), http.StatusOK)

	type tc struct {
		name   string
		path   string // "" = the route's path with the run
		body   *string
		opts   []reqOpt
		status int
		field  string // prefix of the message
	}
	str := func(s string) *string { return &s }
	common := []tc{
		{name: "missing signature", opts: []reqOpt{noSig()}, status: 401, field: "missing runtime signature"},
		{name: "bad signature", opts: []reqOpt{header(auth.Header, auth.Sign([]byte("nope"), auth.NewClaims(time.Now(), owner, time.Minute)))}, status: 401, field: "invalid token signature"},
		{name: "garbage signature", opts: []reqOpt{header(auth.Header, "Bearer abc")}, status: 401, field: "invalid token encoding"},
		{name: "expired signature", opts: []reqOpt{as(owner, func(c *auth.Claims) { c.Iat -= 400; c.Exp = c.Iat + 300 })}, status: 401, field: "token expired"},
		{name: "replayed signature", opts: []reqOpt{header(auth.Header, replayed)}, status: 401, field: "token nonce already used"},
		{name: "huge body", body: str(huge), status: 413, field: "body:"},
	}
	runScoped := []tc{
		{name: "wrong principal", opts: []reqOpt{as(other)}, status: 403, field: "run does not belong to principal"},
		{name: "token for another run", opts: []reqOpt{as(owner, func(c *auth.Claims) { c.RunID = "other" })}, status: 403, field: "claim mismatch for run_id"},
		{name: "overlong run_id", path: "{base}/" + long, status: 400, field: "run_id:"},
		{name: "bad run_id charset", path: "{base}/run%20x", status: 400, field: "run_id:"},
		{name: "unknown run", path: "{base}/no-such-run", status: 404, field: "run_id:"},
	}
	bodyCases := map[string][]tc{
		"*": {
			{name: "bad json", body: str(`{"a":`), status: 400, field: "body:"},
			{name: "syntax error", body: str(`{'a':1}`), status: 400, field: "body:"},
			{name: "array body", body: str(`[]`), status: 400, field: "body:"},
			{name: "string body", body: str(`"x"`), status: 400, field: "body:"},
			{name: "trailing data", body: str(`{} {}`), status: 400, field: "body:"},
			{name: "unknown field", body: str(`{"bogus":1}`), status: 400, field: "bogus:"},
			{name: "deep nesting", body: str(`{"x":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`), status: 400, field: "body:"},
		},
		"create run": {
			{name: "empty body", body: str(""), status: 400, field: "body:"},
			{name: "missing thread_id", body: str(`{}`), status: 400, field: "thread_id:"},
			{name: "thread_id number", body: str(`{"thread_id":5}`), status: 400, field: "thread_id:"},
			{name: "overlong thread_id", body: str(`{"thread_id":"` + long + `"}`), status: 400, field: "thread_id:"},
			{name: "overlong run_id", body: str(`{"thread_id":"t","run_id":"` + long + `"}`), status: 400, field: "run_id:"},
			{name: "run_id charset", body: str(`{"thread_id":"t","run_id":"a/b"}`), status: 400, field: "run_id:"},
			{name: "run_id invalid utf8", body: str("{\"thread_id\":\"t\",\"run_id\":\"\xff\"}"), status: 400, field: "run_id:"},
			{name: "provider string", body: str(`{"thread_id":"t","provider":"scripted"}`), status: 400, field: "provider:"},
			{name: "provider unknown field", body: str(`{"thread_id":"t","provider":{"nme":"x"}}`), status: 400, field: "provider.nme:"},
			{name: "provider error_rate", body: str(`{"thread_id":"t","provider":{"faults":{"error_rate":2}}}`), status: 400, field: "provider.faults.error_rate:"},
			{name: "provider latency type", body: str(`{"thread_id":"t","provider":{"faults":{"latency_ms":"5"}}}`), status: 400, field: "provider.faults.latency_ms:"},
			{name: "tools object", body: str(`{"thread_id":"t","tools":{}}`), status: 400, field: "tools:"},
			{name: "tools item", body: str(`{"thread_id":"t","tools":[1]}`), status: 400, field: "tools[0]:"},
			{name: "authorization sats", body: str(`{"thread_id":"t","authorization":{"max_total_sats":-1}}`), status: 400, field: "authorization.max_total_sats:"},
			{name: "authorization id type", body: str(`{"thread_id":"t","authorization":{"authorization_id":1}}`), status: 400, field: "authorization.authorization_id:"},
			{name: "output_schema invalid", body: str(`{"thread_id":"t","output_schema":{"type":5}}`), status: 400, field: "output_schema:"},
			{name: "output_schema file ref", body: str(`{"thread_id":"t","output_schema":{"$ref":"file:///etc/passwd"}}`), status: 400, field: "output_schema:"},
			{name: "metadata array", body: str(`{"thread_id":"t","metadata":[]}`), status: 400, field: "metadata:"},
			{name: "other principal's run id", body: str(`{"thread_id":"thread-1","run_id":"run-malformed"}`), opts: []reqOpt{as(other)}, status: 409, field: "run_id:"},
		},
		"post frame": {
			{name: "empty body", body: str(""), status: 400, field: "body:"},
			{name: "missing frame_id", body: str(`{"type":"finish"}`), status: 400, field: "frame_id:"},
			{name: "frame_id number", body: str(`{"frame_id":1,"type":"finish"}`), status: 400, field: "frame_id:"},
			{name: "overlong frame_id", body: str(`{"frame_id":"` + long + `","type":"finish"}`), status: 400, field: "frame_id:"},
			{name: "missing type", body: str(`{"frame_id":"f"}`), status: 400, field: "type:"},
			{name: "unknown type", body: str(`{"frame_id":"f","type":"launch"}`), status: 400, field: "type:"},
			{name: "payload array", body: str(`{"frame_id":"f","type":"finish","payload":[]}`), status: 400, field: "payload:"},
			{name: "user_message without text", body: str(`{"frame_id":"f","type":"user_message","payload":{}}`), status: 400, field: "payload.text:"},
			{name: "text number", body: str(`{"frame_id":"f","type":"user_message","payload":{"text":1}}`), status: 400, field: "payload.text:"},
			{name: "text with NUL", body: str(`{"frame_id":"f","type":"user_message","payload":{"text":"a\u0000b"}}`), status: 400, field: "payload.text:"},
			{name: "script not array", body: str(`{"frame_id":"f","type":"user_message","payload":{"script":{}}}`), status: 400, field: "payload.script:"},
			{name: "script step unknown", body: str(`{"frame_id":"f","type":"user_message","payload":{"script":[{"jump":1}]}}`), status: 400, field: "payload.script[0].jump:"},
			{name: "script step two verbs", body: str(`{"frame_id":"f","type":"user_message","payload":{"script":[{"say":"a","answer":"b"}]}}`), status: 400, field: "payload.script[0]:"},
			{name: "script sleep type", body: str(`{"frame_id":"f","type":"user_message","payload":{"script":[{"say":"a"},{"sleep_ms":"x"}]}}`), status: 400, field: "payload.script[1].sleep_ms:"},
			{name: "script sleep range", body: str(`{"frame_id":"f","type":"user_message","payload":{"script":[{"sleep_ms":-1}]}}`), status: 400, field: "payload.script[0].sleep_ms:"},
			{name: "reason type", body: str(`{"frame_id":"f","type":"fail","payload":{"reason":{}}}`), status: 400, field: "payload.reason:"},
			{name: "thread mismatch", body: str(`{"frame_id":"f","type":"finish","thread_id":"other"}`), status: 400, field: "thread_id:"},
			{name: "occurred_at", body: str(`{"frame_id":"f","type":"finish","occurred_at":"yesterday"}`), status: 400, field: "occurred_at:"},
		},
		"post event": {
			{name: "empty body", body: str(""), status: 400, field: "body:"},
			{name: "missing event_type", body: str(`{"payload":{}}`), status: 400, field: "event_type:"},
			{name: "event_type array", body: str(`{"event_type":["x"]}`), status: 400, field: "event_type:"},
			{name: "event_type charset", body: str(`{"event_type":"Run Started"}`), status: 400, field: "event_type:"},
			{name: "overlong event_type", body: str(`{"event_type":"` + strings.Repeat("a", MaxTypeLen+1) + `"}`), status: 400, field: "event_type:"},
			{name: "payload string", body: str(`{"event_type":"run.delta","payload":"x"}`), status: 400, field: "payload:"},
			{name: "seq string", body: str(`{"event_type":"run.delta","expected_previous_seq":"1"}`), status: 400, field: "expected_previous_seq:"},
			{name: "seq fraction", body: str(`{"event_type":"run.delta","expected_previous_seq":1.5}`), status: 400, field: "expected_previous_seq:"},
			{name: "seq overflow", body: str(`{"event_type":"run.delta","expected_previous_seq":1e30}`), status: 400, field: "expected_previous_seq:"},
			{name: "seq negative", body: str(`{"event_type":"run.delta","expected_previous_seq":-1}`), status: 400, field: "expected_previous_seq:"},
			{name: "seq mismatch", body: str(`{"event_type":"run.delta","expected_previous_seq":7}`), status: 409, field: "expected_previous_seq:"},
			{name: "overlong key", body: str(`{"event_type":"run.delta","idempotency_key":"` + long + `"}`), status: 400, field: "idempotency_key:"},
			{name: "key with space", body: str(`{"event_type":"run.delta","idempotency_key":"a b"}`), status: 400, field: "idempotency_key:"},
			{name: "finished without status", body: str(`{"event_type":"run.finished","payload":{}}`), status: 400, field: "event_type:"},
			{name: "finished status type", body: str(`{"event_type":"run.finished","payload":{"status":1}}`), status: 400, field: "payload.status:"},
			{name: "finished reason NUL", body: str(`{"event_type":"run.finished","payload":{"status":"failed","reason":"a\u0000"}}`), status: 400, field: "payload.reason:"},
		},
		"cancel": {
			{name: "reason number", body: str(`{"reason":5}`), status: 400, field: "reason:"},
			{name: "overlong reason", body: str(`{"reason":"` + strings.Repeat("r", MaxReasonLen+1) + `"}`), status: 400, field: "reason:"},
			{name: "reason NUL", body: str(`{"reason":"\u0000"}`), status: 400, field: "reason:"},
		},
		"list events": {
			{name: "after_seq negative", path: "?after_seq=-1", status: 400, field: "after_seq:"},
			{name: "after_seq text", path: "?after_seq=abc", status: 400, field: "after_seq:"},
			{name: "after_seq twice", path: "?after_seq=1&after_seq=2", status: 400, field: "after_seq:"},
			{name: "after_seq overflow", path: "?after_seq=99999999999999999999", status: 400, field: "after_seq:"},
			{name: "limit zero", path: "?limit=0", status: 400, field: "limit:"},
			{name: "limit too big", path: "?limit=1001", status: 400, field: "limit:"},
		},
	}

	for _, rt := range signedRoutes() {
		base := strings.TrimSuffix(strings.SplitN(rt.path, "{run}", 2)[0], "/")
		full := strings.ReplaceAll(rt.path, "{run}", run.RunID)
		cases := append([]tc(nil), common...)
		if strings.Contains(rt.path, "{run}") {
			for _, c := range runScoped {
				if c.path != "" {
					// Replace the run id segment, keep the route's suffix.
					suffix := strings.SplitN(rt.path, "{run}", 2)[1]
					c.path = strings.Replace(c.path, "{base}", base, 1) + suffix
				}
				cases = append(cases, c)
			}
		}
		if rt.method == "POST" {
			cases = append(cases, bodyCases["*"]...)
		}
		cases = append(cases, bodyCases[rt.name]...)
		for _, c := range cases {
			t.Run(rt.name+"/"+c.name, func(t *testing.T) {
				path := full
				if c.path != "" {
					if strings.HasPrefix(c.path, "?") {
						path = full + c.path
					} else {
						path = c.path
					}
				}
				var body any
				if rt.body != "" {
					body = rt.body
				}
				if c.body != nil {
					body = *c.body
				}
				w := e.do(rt.method, path, body, c.opts...)
				if w.Code >= 500 {
					t.Fatalf("5xx: %d %s", w.Code, w.Body.String())
				}
				if w.Header().Get("x-request-id") == "" {
					t.Fatal("no x-request-id")
				}
				if w.Code != c.status {
					t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body.String())
				}
				if env := decodeErr(t, w); !strings.HasPrefix(env.Error.Message, c.field) {
					t.Fatalf("message %q does not name %q", env.Error.Message, c.field)
				}
			})
		}
	}
	if n := e.gather(); n == nil {
		t.Fatal("no metrics")
	}
	for _, class := range []string{"5xx"} {
		for _, rt := range signedRoutes() {
			pattern := strings.ReplaceAll(rt.path, "{run}", "{run_id}")
			if n := e.httpCount(pattern, rt.method, class); n != 0 {
				t.Errorf("%s %s: %v 5xx answers", rt.method, pattern, n)
			}
		}
	}
}

// TestValidBodiesStillAccepted guards the table above: each route's valid
// body must succeed, so a 4xx there is caused by the malformation.
func TestValidBodiesStillAccepted(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-valid")
	for _, rt := range signedRoutes() {
		var body any
		if rt.body != "" {
			body = rt.body
		}
		w := e.do(rt.method, strings.ReplaceAll(rt.path, "{run}", run.RunID), body)
		if w.Code >= 300 {
			t.Errorf("%s: %d %s", rt.name, w.Code, w.Body.String())
		}
	}
}
