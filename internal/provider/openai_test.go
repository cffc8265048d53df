package provider

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeModel is a minimal OpenAI-compatible chat-completions server. reply
// decides each answer from the decoded request and the call number.
type fakeModel struct {
	t     *testing.T
	reply func(n int, req map[string]any, w http.ResponseWriter)

	mu       sync.Mutex
	requests []map[string]any
	headers  []http.Header
	paths    []string
}

func (f *fakeModel) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		f.t.Errorf("read body: %v", err)
	}
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		f.t.Errorf("request is not JSON: %v: %s", err, body)
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	f.headers = append(f.headers, r.Header.Clone())
	f.paths = append(f.paths, r.Method+" "+r.URL.Path)
	n := len(f.requests)
	f.mu.Unlock()
	f.reply(n, req, w)
}

func (f *fakeModel) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func completion(msg map[string]any, finish string) map[string]any {
	msg["role"] = "assistant"
	return map[string]any{
		"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "test-model",
		"choices": []any{map[string]any{"index": 0, "finish_reason": finish, "message": msg}},
	}
}

func newFake(t *testing.T, reply func(n int, req map[string]any, w http.ResponseWriter)) (*fakeModel, *OpenAI) {
	t.Helper()
	f := &fakeModel{t: t, reply: reply}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	p := NewOpenAI(OpenAIConfig{BaseURL: srv.URL + "/v1", APIKey: "sk-test", Model: "test-model", Timeout: 5 * time.Second})
	return f, p
}

func TestOpenAIPlainAnswer(t *testing.T) {
	f, p := newFake(t, func(_ int, _ map[string]any, w http.ResponseWriter) {
		writeJSON(w, 200, completion(map[string]any{"content": "hello there"}, "stop"))
	})
	resp, err := p.Complete(context.Background(), Request{Messages: []Message{{Role: "user", Content: "hi"}}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Answer != "hello there" || len(resp.ToolCalls) != 0 || len(resp.Deltas) != 0 {
		t.Fatalf("response %+v", resp)
	}
	if p.Name() != "openai" {
		t.Errorf("name %q", p.Name())
	}
	if f.paths[0] != "POST /v1/chat/completions" {
		t.Errorf("path %q", f.paths[0])
	}
	if got := f.headers[0].Get("Authorization"); got != "Bearer sk-test" {
		t.Errorf("authorization %q", got)
	}
	req := f.requests[0]
	if req["model"] != "test-model" {
		t.Errorf("model %v", req["model"])
	}
	msgs, _ := req["messages"].([]any)
	if len(msgs) != 1 {
		t.Fatalf("messages %v", req["messages"])
	}
	m0 := msgs[0].(map[string]any)
	if m0["role"] != "user" || m0["content"] != "hi" {
		t.Errorf("message %v", m0)
	}
	if _, ok := req["tools"]; ok {
		t.Errorf("tools sent without tools: %v", req["tools"])
	}
}

func TestOpenAIToolCallRoundTrip(t *testing.T) {
	f, p := newFake(t, func(n int, _ map[string]any, w http.ResponseWriter) {
		if n == 1 {
			writeJSON(w, 200, completion(map[string]any{
				"content": "let me look",
				"tool_calls": []any{map[string]any{
					"id": "call_abc", "type": "function",
					"function": map[string]any{"name": "http_fetch", "arguments": `{"url":"https://example.com"}`},
				}},
			}, "tool_calls"))
			return
		}
		writeJSON(w, 200, completion(map[string]any{"content": "it says hello"}, "stop"))
	})
	tools := []ToolSpec{
		{Name: "http.fetch", Description: "fetch a URL", InputSchema: json.RawMessage(`{"type":"object","properties":{"url":{"type":"string"}},"required":["url"]}`)},
		{Name: "echo"},
	}
	msgs := []Message{{Role: "user", Content: "what is on example.com?"}}
	resp, err := p.Complete(context.Background(), Request{Messages: msgs, Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.ToolCalls) != 1 || resp.Answer != "" {
		t.Fatalf("response %+v", resp)
	}
	tc := resp.ToolCalls[0]
	if tc.ID != "call_abc" || tc.Name != "http.fetch" || string(tc.Input) != `{"url":"https://example.com"}` {
		t.Fatalf("tool call %+v (%s)", tc, tc.Input)
	}
	if len(resp.Deltas) != 1 || resp.Deltas[0] != "let me look" {
		t.Fatalf("deltas %v", resp.Deltas)
	}

	// The first request offered both tools as functions with their schemas.
	sent, _ := f.requests[0]["tools"].([]any)
	if len(sent) != 2 {
		t.Fatalf("tools sent %v", f.requests[0]["tools"])
	}
	fn := sent[0].(map[string]any)["function"].(map[string]any)
	if sent[0].(map[string]any)["type"] != "function" || fn["name"] != "http_fetch" || fn["description"] != "fetch a URL" {
		t.Errorf("tool 0 %v", sent[0])
	}
	if req, _ := fn["parameters"].(map[string]any)["required"].([]any); len(req) != 1 || req[0] != "url" {
		t.Errorf("parameters %v", fn["parameters"])
	}
	fn1 := sent[1].(map[string]any)["function"].(map[string]any)
	if fn1["name"] != "echo" || fn1["parameters"].(map[string]any)["type"] != "object" {
		t.Errorf("tool 1 %v", sent[1])
	}

	// Second call carries the assistant tool call and the tool result.
	msgs = append(msgs,
		Message{Role: "assistant", ToolCalls: resp.ToolCalls},
		Message{Role: "tool", ToolCallID: "call_abc", Content: `{"status":"succeeded","output":{"body":"hello"}}`},
	)
	resp, err = p.Complete(context.Background(), Request{Messages: msgs, Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Answer != "it says hello" || len(resp.ToolCalls) != 0 {
		t.Fatalf("second response %+v", resp)
	}
	got, _ := f.requests[1]["messages"].([]any)
	if len(got) != 3 {
		t.Fatalf("second request messages %v", got)
	}
	asst := got[1].(map[string]any)
	calls, _ := asst["tool_calls"].([]any)
	if asst["role"] != "assistant" || len(calls) != 1 {
		t.Fatalf("assistant message %v", asst)
	}
	call := calls[0].(map[string]any)
	cfn := call["function"].(map[string]any)
	if call["id"] != "call_abc" || call["type"] != "function" || cfn["name"] != "http_fetch" || cfn["arguments"] != `{"url":"https://example.com"}` {
		t.Errorf("assistant tool call %v", call)
	}
	tool := got[2].(map[string]any)
	if tool["role"] != "tool" || tool["tool_call_id"] != "call_abc" || !strings.Contains(tool["content"].(string), `"hello"`) {
		t.Errorf("tool message %v", tool)
	}
}

func TestOpenAIErrorClasses(t *testing.T) {
	jsonErr := func(status int, msg string) func(int, map[string]any, http.ResponseWriter) {
		return func(_ int, _ map[string]any, w http.ResponseWriter) {
			writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": "x", "code": "y", "param": nil}})
		}
	}
	cases := []struct {
		name  string
		reply func(int, map[string]any, http.ResponseWriter)
		class string
	}{
		{"rate limited", jsonErr(429, "slow down"), ClassRateLimited},
		{"server error", jsonErr(500, "boom"), Class5xx},
		{"bad gateway plain text", func(_ int, _ map[string]any, w http.ResponseWriter) {
			w.WriteHeader(502)
			_, _ = io.WriteString(w, "<html>bad gateway</html>")
		}, Class5xx},
		{"unauthorized", jsonErr(401, "bad key"), ClassAuth},
		{"forbidden", jsonErr(403, "no access"), ClassAuth},
		{"bad request", jsonErr(400, "bad model"), ClassBadRequest},
		{"not found", jsonErr(404, "no such model"), ClassError},
		{"no choices", func(_ int, _ map[string]any, w http.ResponseWriter) {
			writeJSON(w, 200, map[string]any{"id": "x", "object": "chat.completion", "choices": []any{}})
		}, ClassError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, p := newFake(t, tc.reply)
			_, err := p.Complete(context.Background(), Request{Messages: []Message{{Role: "user", Content: "hi"}}})
			if err == nil {
				t.Fatal("no error")
			}
			if got := Class(err); got != tc.class {
				t.Fatalf("class %q, want %q (%v)", got, tc.class, err)
			}
			if strings.Contains(err.Error(), "sk-test") {
				t.Errorf("error leaks the API key: %v", err)
			}
			if n := f.count(); n != 1 {
				t.Errorf("%d requests, want 1 (retries belong to the breaker)", n)
			}
		})
	}
}

func TestOpenAITimeout(t *testing.T) {
	release := make(chan struct{})
	f := &fakeModel{t: t, reply: func(_ int, _ map[string]any, w http.ResponseWriter) {
		<-release
		writeJSON(w, 200, completion(map[string]any{"content": "late"}, "stop"))
	}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	p := NewOpenAI(OpenAIConfig{BaseURL: srv.URL + "/v1", Model: "m", Timeout: 50 * time.Millisecond})
	_, err := p.Complete(context.Background(), Request{Messages: []Message{{Role: "user", Content: "hi"}}})
	if got := Class(err); got != ClassTimeout {
		t.Fatalf("class %q, want %q (%v)", got, ClassTimeout, err)
	}
}

func TestOpenAICallerCancelIsNotAProviderFailure(t *testing.T) {
	release := make(chan struct{})
	f := &fakeModel{t: t, reply: func(_ int, _ map[string]any, w http.ResponseWriter) {
		<-release
		writeJSON(w, 200, completion(map[string]any{"content": "late"}, "stop"))
	}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	p := NewOpenAI(OpenAIConfig{BaseURL: srv.URL + "/v1", Model: "m", Timeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for f.count() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	_, err := p.Complete(ctx, Request{Messages: []Message{{Role: "user", Content: "hi"}}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	var pe *Error
	if errors.As(err, &pe) {
		t.Fatalf("caller cancellation classified as %q", pe.Class)
	}
}

func TestOpenAIConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	p := NewOpenAI(OpenAIConfig{BaseURL: url + "/v1", Model: "m", Timeout: 5 * time.Second})
	_, err := p.Complete(context.Background(), Request{Messages: []Message{{Role: "user", Content: "hi"}}})
	if got := Class(err); got != ClassError {
		t.Fatalf("class %q (%v)", got, err)
	}
}

func TestOpenAIRejectsBadRequestsLocally(t *testing.T) {
	f, p := newFake(t, func(_ int, _ map[string]any, w http.ResponseWriter) {
		writeJSON(w, 200, completion(map[string]any{"content": "x"}, "stop"))
	})
	cases := []struct {
		name  string
		req   Request
		field string
	}{
		{"unknown role", Request{Messages: []Message{{Role: "robot", Content: "x"}}}, "messages[0].role"},
		{"tool without id", Request{Messages: []Message{{Role: "user"}, {Role: "tool", Content: "x"}}}, "messages[1].tool_call_id"},
		{"no messages", Request{}, "messages"},
		{"schema not JSON", Request{Messages: []Message{{Role: "user"}}, Tools: []ToolSpec{{Name: "t", InputSchema: json.RawMessage(`{`)}}}, "tools[t].input_schema"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Complete(context.Background(), tc.req)
			if Class(err) != ClassBadRequest || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %v, want %s naming %s", err, ClassBadRequest, tc.field)
			}
		})
	}
	if f.count() != 0 {
		t.Fatalf("%d requests sent for invalid input", f.count())
	}
}

func TestOpenAIArgumentsThatAreNotJSON(t *testing.T) {
	_, p := newFake(t, func(_ int, _ map[string]any, w http.ResponseWriter) {
		writeJSON(w, 200, completion(map[string]any{"tool_calls": []any{
			map[string]any{"id": "c1", "type": "function", "function": map[string]any{"name": "echo", "arguments": `{"a":`}},
			map[string]any{"id": "c2", "type": "function", "function": map[string]any{"name": "echo", "arguments": ``}},
		}}, "tool_calls"))
	})
	resp, err := p.Complete(context.Background(), Request{Messages: []Message{{Role: "user", Content: "hi"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.ToolCalls) != 2 {
		t.Fatalf("%+v", resp)
	}
	if got := string(resp.ToolCalls[0].Input); got != `"{\"a\":"` {
		t.Errorf("invalid arguments became %s", got)
	}
	if got := string(resp.ToolCalls[1].Input); got != `{}` {
		t.Errorf("empty arguments became %s", got)
	}
}

func TestToolNamesWire(t *testing.T) {
	n := newToolNames()
	long := strings.Repeat("a", 70)
	cases := []struct{ local, wire string }{
		{"echo", "echo"},
		{"http.fetch", "http_fetch"},
		{"http_fetch", "http_fetch_2"}, // collides with the mapped http.fetch
		{"ns/tool name", "ns_tool_name"},
		{long, strings.Repeat("a", 64)},
		{long + "b", strings.Repeat("a", 62) + "_2"},
	}
	for _, tc := range cases {
		if got := n.wire(tc.local); got != tc.wire {
			t.Errorf("wire(%q) = %q, want %q", tc.local, got, tc.wire)
		}
		if got := n.wire(tc.local); got != tc.wire {
			t.Errorf("second wire(%q) = %q, not stable", tc.local, got)
		}
		if got := n.local(tc.wire); got != tc.local {
			t.Errorf("local(%q) = %q, want %q", tc.wire, got, tc.local)
		}
	}
	if got := n.local("invented"); got != "invented" {
		t.Errorf("unknown wire name mapped to %q", got)
	}
}
