package runs

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// fixturePath finds ../shared/fixtures from the repo (checked out beside
// shared/) or from testdata when the shared folder is absent.
func fixturePath(t *testing.T, name string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	for _, p := range []string{
		filepath.Join(filepath.Dir(file), "testdata", name),
		filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "fixtures", name),
	} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("fixture %s not found", name)
	return ""
}

func TestCanonicalHashVectors(t *testing.T) {
	raw, err := os.ReadFile(fixturePath(t, "khala_payload_hash_vectors.v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Vectors []struct {
			Name          string          `json:"name"`
			Payload       json.RawMessage `json:"payload"`
			CanonicalJSON string          `json:"canonical_json"`
			SHA256        string          `json:"sha256"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range f.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			got, err := CanonicalizeRaw(v.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != v.CanonicalJSON {
				t.Fatalf("canonical:\n got %s\nwant %s", got, v.CanonicalJSON)
			}
			if h := PayloadHash(got); h != v.SHA256 {
				t.Fatalf("hash %s want %s", h, v.SHA256)
			}
		})
	}
}

func TestCanonicalNoHTMLEscapeAndNumbers(t *testing.T) {
	got, err := CanonicalizeRaw([]byte(` { "z": "<a&b>", "a": 1.50, "m": [ 1e3, -0, 12345678901234567890 ] } `))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a":1.50,"m":[1e3,-0,12345678901234567890],"z":"<a&b>"}`
	if string(got) != want {
		t.Fatalf("got %s want %s", got, want)
	}
	if _, err := CanonicalizeRaw([]byte(`{"a":1} {"b":2}`)); err == nil {
		t.Fatal("trailing data accepted")
	}
}

func TestEventHashChain(t *testing.T) {
	h1 := EventHash("run_1", 1, "run.started", []byte("{}"), "")
	h1again := EventHash("run_1", 1, "run.started", []byte("{}"), "root")
	if h1 != h1again {
		t.Fatal("empty prev must hash as root")
	}
	h2 := EventHash("run_1", 2, "run.delta", []byte(`{"delta":"hi"}`), h1)
	if h2 == h1 || len(h2) != 64 {
		t.Fatalf("bad hash %q", h2)
	}
	if EventHash("run_1", 2, "run.delta", []byte(`{"delta":"hj"}`), h1) == h2 {
		t.Fatal("payload change not reflected")
	}
}

func TestTransitionTable(t *testing.T) {
	fin := func(s string) json.RawMessage { return json.RawMessage(`{"status":"` + s + `"}`) }
	cases := []struct {
		from, event string
		payload     json.RawMessage
		to          string
		ok          bool
	}{
		{StatusCreated, "run.started", nil, StatusRunning, true},
		{StatusRunning, "run.started", nil, StatusRunning, true},
		{StatusCanceling, "run.started", nil, "", false},
		{StatusCreated, "run.cancel_requested", nil, StatusCanceling, true},
		{StatusRunning, "run.cancel_requested", nil, StatusCanceling, true},
		{StatusCanceling, "run.cancel_requested", nil, StatusCanceling, true},
		{StatusSucceeded, "run.cancel_requested", nil, "", false},
		{StatusRunning, "run.finished", fin("succeeded"), StatusSucceeded, true},
		{StatusCanceling, "run.finished", fin("succeeded"), "", false},
		{StatusCanceling, "run.finished", fin("canceled"), StatusCanceled, true},
		{StatusCanceling, "run.finished", fin("cancelled"), StatusCanceled, true},
		{StatusCanceling, "run.finished", fin("failed"), StatusFailed, true},
		{StatusSucceeded, "run.finished", fin("succeeded"), StatusSucceeded, true},
		{StatusSucceeded, "run.finished", fin("failed"), "", false},
		{StatusRunning, "run.finished", fin("bogus"), "", false},
		{StatusRunning, "run.finished", nil, "", false},
		{StatusRunning, "run.delta", nil, StatusRunning, true},
		{StatusFailed, "run.delta", nil, "", false},
	}
	for _, c := range cases {
		out, err := Transition(c.from, c.event, c.payload)
		if (err == nil) != c.ok {
			t.Errorf("%s %s %s: err=%v want ok=%v", c.from, c.event, c.payload, err, c.ok)
			continue
		}
		if c.ok && out.Status != c.to {
			t.Errorf("%s %s: to %s want %s", c.from, c.event, out.Status, c.to)
		}
	}
}

func TestDropMember(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		ok   bool
		want string
	}{
		{`{"a":1,"projected_at":"t","z":[1]}`, true, `{"a":1,"z":[1]}`},
		{`{"projected_at":"t","z":{"projected_at":1}}`, true, `{"z":{"projected_at":1}}`},
		{`{"a":1,"projected_at":{"x":[1,2]}}`, true, `{"a":1}`},
		{`{"projected_at":"t"}`, true, `{}`},
		{`{"a":1}`, true, `{"a":1}`},
		{`{}`, true, `{}`},
		{`{"z":1,"a":2}`, false, ``},        // not canonical: keys out of order
		{`{"a": 1}`, false, ``},             // whitespace
		{`[{"projected_at":1}]`, false, ``}, // not an object
		{`{"a":"\u00e9"}`, false, ``},       // an escape: not judged
	} {
		got, ok := DropMember([]byte(tc.doc), "projected_at")
		if ok != tc.ok || (ok && string(got) != tc.want) {
			t.Errorf("DropMember(%s) = %s, %t; want %s, %t", tc.doc, got, ok, tc.want, tc.ok)
		}
		if !ok {
			continue
		}
		// The definition: decode, delete, re-encode.
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(tc.doc))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		delete(m, "projected_at")
		if want, err := Canonical(m); err != nil || string(want) != string(got) {
			t.Errorf("DropMember(%s) = %s, decode/delete/encode gives %s (%v)", tc.doc, got, want, err)
		}
	}
}
