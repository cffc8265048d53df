package workers

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/oaruntime/oaruntime/internal/httpapi"
)

// FuzzDecodeRequests drives the worker request bodies through the same
// decoding and validation the handlers run: any input is accepted or
// refused with a 4xx naming a field, never a panic or another status.
func FuzzDecodeRequests(f *testing.F) {
	for _, seed := range []string{
		`{}`, ``, `null`, `[]`, `{"worker_id":"w1","metadata":{"a":[1,{"b":null}]}}`,
		`{"event_type":"worker.response","payload":{"api_key":"sk-x","n":1e400},"idempotency_key":"k"}`,
		`{"event_type":"worker.stopped","payload":{"reason":["x"]}}`, `{"reason":"\u0000"}`,
		`{"metadata":{"a":"\ud800"}}`, `{"event_type":"worker.x","payload":{"a":{"a":{"a":{}}}}}`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		check := func(name string, aerr *httpapi.APIError) {
			if aerr == nil {
				return
			}
			if aerr.Status < 400 || aerr.Status > 499 || !strings.Contains(aerr.Message, ":") {
				t.Fatalf("%s: %d %q for %q", name, aerr.Status, aerr.Message, body)
			}
		}
		req := func() *http.Request { return httptest.NewRequest("POST", "/", strings.NewReader(body)) }
		var c createRequest
		if aerr := httpapi.DecodeJSON(req(), &c, true); aerr != nil {
			check("create decode", aerr)
		} else {
			check("create", c.validate())
		}
		var e eventRequest
		if aerr := httpapi.DecodeJSON(req(), &e, false); aerr != nil {
			check("event decode", aerr)
		} else {
			check("event", e.validate())
		}
		var s stopRequest
		if aerr := httpapi.DecodeJSON(req(), &s, true); aerr != nil {
			check("stop decode", aerr)
		} else {
			check("stop", s.validate())
		}
	})
}
