package correlation_test

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/app"
	"github.com/oaruntime/oaruntime/internal/config"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// repoRoot is the module root, found from this file.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// probeMethod is a method no route uses, so the mux answers 405 with the
// path's Allow header for every registered path.
const probeMethod = "OAPROBE"

// servedRoutes lists "METHOD /pattern" for every route a fully wired node
// registers (fault endpoints enabled). The path patterns come from the
// route label set httpapi hands to telemetry (every mux pattern, method
// dropped); the methods come from the mux itself: a request with an unused
// method gets 405 and an Allow header naming the path's methods.
func servedRoutes(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	cfg := &config.Config{
		Addr: "127.0.0.1:0", DataDir: dir, DatabaseURL: "sqlite:" + filepath.Join(dir, "rt.db"),
		SignatureSecret: "contract-secret-0123456789abcdef", KhalaSink: "builtin", LogLevel: "error",
		LeaseTTL: 2 * time.Second, LeaseRenew: 500 * time.Millisecond, JanitorInterval: time.Second,
		JanitorMaxAttempts: 3, ExecutorConcurrency: 1, BreakerCooldown: time.Second,
		StreamIdle: time.Second, StreamHeartbeat: time.Second, ShutdownGrace: time.Second,
		EnableFaults: true,
	}
	if err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	srv, err := app.NewServer(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)

	paths := srv.Metrics.AllowedLabelValues()[telemetry.LabelRoute]
	param := regexp.MustCompile(`\{[^}]*\}`)
	var out []string
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") {
			continue // "unmatched" and other non-pattern values
		}
		req := httptest.NewRequest(probeMethod, param.ReplaceAllString(p, "probe"), nil)
		rec := httptest.NewRecorder()
		srv.Handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusMethodNotAllowed {
			// A pattern without a method matches every method.
			out = append(out, "ANY "+p)
			continue
		}
		allow := rec.Header().Get("Allow")
		if allow == "" {
			t.Fatalf("%s %s: 405 without Allow", probeMethod, p)
		}
		for _, m := range strings.Split(allow, ",") {
			m = strings.TrimSpace(m)
			if m == http.MethodHead {
				continue // implied by GET
			}
			out = append(out, m+" "+p)
		}
	}
	sort.Strings(out)
	if len(out) < 10 {
		t.Fatalf("found only %d routes (%v): the probe is broken", len(out), out)
	}
	return out
}

// documentedRoutes are the "### `METHOD /path`" headings of the contract.
func documentedRoutes(t *testing.T, doc string) []string {
	t.Helper()
	re := regexp.MustCompile("(?m)^#{2,4} `([A-Z]+) (/[^`\\s]*)`\\s*$")
	var out []string
	for _, m := range re.FindAllStringSubmatch(doc, -1) {
		out = append(out, m[1]+" "+m[2])
	}
	sort.Strings(out)
	return out
}

func readContract(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "RUNTIME_CONTRACT.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestContractDocumentsEveryRoute keeps docs/RUNTIME_CONTRACT.md and the
// server's routes equal in both directions.
func TestContractDocumentsEveryRoute(t *testing.T) {
	served := servedRoutes(t)
	doc := readContract(t)
	documented := documentedRoutes(t, doc)
	set := func(xs []string) map[string]bool {
		m := map[string]bool{}
		for _, x := range xs {
			if m[x] {
				t.Errorf("%s listed twice", x)
			}
			m[x] = true
		}
		return m
	}
	s, d := set(served), set(documented)
	for _, r := range served {
		if !d[r] {
			t.Errorf("the server registers %s but docs/RUNTIME_CONTRACT.md has no \"### `%s`\" heading", r, r)
		}
	}
	for _, r := range documented {
		if !s[r] {
			t.Errorf("docs/RUNTIME_CONTRACT.md documents %s but the server does not register it", r)
		}
	}
}

// TestContractNamesEveryErrorCode checks that every error code constant of
// internal/httpapi appears in the contract's error table.
func TestContractNamesEveryErrorCode(t *testing.T) {
	doc := readContract(t)
	fset := token.NewFileSet()
	pkgDir := filepath.Join(repoRoot(t), "internal", "httpapi")
	entries, err := os.ReadDir(pkgDir)
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]string{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(pkgDir, e.Name()), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Code") || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						continue
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					codes[name.Name] = v
				}
			}
		}
	}
	if len(codes) < 8 {
		t.Fatalf("found only %d error codes in internal/httpapi: the parser is broken", len(codes))
	}
	for name, code := range codes {
		if !strings.Contains(doc, "`"+code+"`") {
			t.Errorf("httpapi.%s = %q is not in docs/RUNTIME_CONTRACT.md", name, code)
		}
	}
}
