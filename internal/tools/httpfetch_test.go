package tools

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/tools/egress"
)

func fetchInput(t *testing.T, v map[string]any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHTTPFetchBlockedByDefault(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("blocked request reached the server")
	}))
	defer srv.Close()
	reg := NewRegistry(NewHTTPFetch(nil))
	cases := []struct{ url, class string }{
		{srv.URL + "/x", "ssrf_block.loopback"},
		{"http://169.254.169.254/latest/meta-data/", "ssrf_block.metadata"},
		{"http://metadata.google.internal/", "ssrf_block.metadata"},
		{"http://10.1.2.3/", "ssrf_block.private"},
		{"file:///etc/passwd", "ssrf_block.scheme_not_allowed"},
		{"http://[::1]:9/", "ssrf_block.loopback"},
		{"http://%zz/", "ssrf_block.invalid_url"},
	}
	for _, tc := range cases {
		res := reg.Run(context.Background(), "http.fetch", fetchInput(t, map[string]any{"url": tc.url}))
		if res.Status != Failed || res.ErrorClass != tc.class {
			t.Errorf("%s: result %+v, want failed %s", tc.url, res, tc.class)
		}
	}
}

func TestHTTPFetchAllowedWithTestOption(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hello":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Set-Cookie", "session=secret")
			w.Header().Set("Etag", `"v1"`)
			if r.Method == http.MethodHead {
				return
			}
			_, _ = io.WriteString(w, "hello world")
		case "/missing":
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, "nope")
		case "/big":
			// 10 bytes of ASCII then a 3-byte character straddling the cap.
			_, _ = io.WriteString(w, "0123456789€€€")
		case "/to-metadata":
			http.Redirect(w, r, "http://169.254.169.254/latest", http.StatusFound)
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}
	}))
	defer srv.Close()
	client := egress.New(egress.Config{AllowLoopbackForTests: true})
	reg := NewRegistry(NewHTTPFetch(client, WithFetchMaxBody(12)))

	get := func(path, method string) Result {
		in := map[string]any{"url": srv.URL + path}
		if method != "" {
			in["method"] = method
		}
		return reg.Run(context.Background(), "http.fetch", fetchInput(t, in))
	}
	decode := func(res Result) FetchOutput {
		t.Helper()
		if res.Status != Succeeded {
			t.Fatalf("result %+v", res)
		}
		var out FetchOutput
		if err := json.Unmarshal(res.Output, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}

	out := decode(get("/hello", ""))
	if out.Status != 200 || out.Body != "hello world" || out.Truncated {
		t.Errorf("GET %+v", out)
	}
	if out.Headers["content-type"] != "text/plain; charset=utf-8" || out.Headers["etag"] != `"v1"` {
		t.Errorf("headers %v", out.Headers)
	}
	if _, ok := out.Headers["set-cookie"]; ok {
		t.Errorf("cookie returned: %v", out.Headers)
	}

	out = decode(get("/hello", "head"))
	if out.Status != 200 || out.Body != "" {
		t.Errorf("HEAD %+v", out)
	}

	out = decode(get("/missing", ""))
	if out.Status != 404 || out.Body != "nope" {
		t.Errorf("404 %+v", out)
	}

	out = decode(get("/big", ""))
	if !out.Truncated || out.Body != "0123456789" {
		t.Errorf("truncated %+v", out)
	}

	if res := get("/to-metadata", ""); res.Status != Failed || res.ErrorClass != "ssrf_block.metadata" {
		t.Errorf("redirect to metadata: %+v", res)
	}

	slow := NewRegistry(NewHTTPFetch(client, WithFetchTimeout(50*time.Millisecond)))
	if res := slow.Run(context.Background(), "http.fetch", fetchInput(t, map[string]any{"url": srv.URL + "/slow"})); res.Status != Timeout {
		t.Errorf("slow: %+v", res)
	}
}

func TestHTTPFetchInvalidInput(t *testing.T) {
	reg := NewRegistry(NewHTTPFetch(egress.New(egress.Config{AllowLoopbackForTests: true})))
	cases := []struct{ name, input, mention string }{
		{"missing url", `{}`, "url"},
		{"post", `{"url":"http://127.0.0.1/","method":"POST"}`, "method"},
		{"unknown field", `{"url":"http://127.0.0.1/","body":"x"}`, "body"},
		{"url not a string", `{"url":5}`, "url"},
		{"not json", `{"url":`, "input"},
	}
	for _, tc := range cases {
		res := reg.Run(context.Background(), "http.fetch", json.RawMessage(tc.input))
		if res.Status != Failed || res.ErrorClass != "invalid_input" || !strings.Contains(res.Error, tc.mention) {
			t.Errorf("%s: %+v (want invalid_input naming %s)", tc.name, res, tc.mention)
		}
	}
}

func TestTrimPartialRune(t *testing.T) {
	euro := "€" // 3 bytes
	cases := []struct{ in, want string }{
		{"abc", "abc"},
		{"ab" + euro, "ab" + euro},
		{"ab" + euro[:1], "ab"},
		{"ab" + euro[:2], "ab"},
		{"", ""},
	}
	for _, tc := range cases {
		if got := string(trimPartialRune([]byte(tc.in))); got != tc.want {
			t.Errorf("trimPartialRune(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
