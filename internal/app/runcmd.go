package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
	"github.com/oaruntime/oaruntime/internal/config"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/stream/sseclient"
)

func newID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// clientFromEnv builds a signed client from the same settings serve uses:
// the address and secret (or the development secret serve created).
func clientFromEnv(fs *flag.FlagSet) func() (*client.Client, error) {
	addr := fs.String("addr", envOr("OA_RUNTIME_ADDR", config.DefaultAddr), "server address (OA_RUNTIME_ADDR)")
	secret := fs.String("signature-secret", os.Getenv("OA_RUNTIME_SIGNATURE_SECRET"), "HMAC secret (OA_RUNTIME_SIGNATURE_SECRET; default: the development secret of serve)")
	dataDir := fs.String("data-dir", envOr("OA_RUNTIME_DATA_DIR", config.DefaultDataDir), "where serve keeps its development secret")
	sub := fs.String("sub", envOr("OA_RUNTIME_SUB", "user:local"), "principal to act as (user:ID or guest:SCOPE)")
	return func() (*client.Client, error) {
		s := *secret
		if s == "" {
			var err error
			if s, err = config.ReadDevSecret(*dataDir); err != nil {
				return nil, err
			}
		}
		base := *addr
		if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
			base = "http://" + base
		}
		return client.New(base, []byte(s), *sub), nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// runCmd: create a run, send one frame, print the streamed events until
// run.finished; exit 0 when the run succeeded.
func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	mk := clientFromEnv(fs)
	prompt := fs.String("prompt", "hello", "user message text")
	scriptFile := fs.String("script", "", "JSON file with a scripted-provider script (a list of steps)")
	providerJSON := fs.String("provider", "", `provider document, e.g. {"name":"scripted","faults":{"latency_ms":100}}`)
	raw := fs.Bool("json", false, "print raw SSE data lines")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := parseFlags(fs, args, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	c, err := mk()
	if err != nil {
		fmt.Fprintln(stderr, "oaruntime run:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	payload := map[string]any{"text": *prompt}
	if *scriptFile != "" {
		b, err := os.ReadFile(*scriptFile)
		if err != nil {
			fmt.Fprintln(stderr, "oaruntime run: --script:", err)
			return 2
		}
		if _, err := provider.ParseScript(b); err != nil {
			fmt.Fprintf(stderr, "oaruntime run: --script %s: %v\n", *scriptFile, err)
			return 2
		}
		payload["script"] = json.RawMessage(b)
	}
	// The run and its message in one request (the input field).
	body := map[string]any{"run_id": newID("run_"), "thread_id": newID("thread_"),
		"input": map[string]any{"frame_id": newID("frame_"), "type": "user_message", "payload": payload}}
	if *providerJSON != "" {
		if !json.Valid([]byte(*providerJSON)) {
			fmt.Fprintln(stderr, "oaruntime run: --provider: not valid JSON")
			return 2
		}
		body["provider"] = json.RawMessage(*providerJSON)
	}
	run, err := c.CreateRun(ctx, body)
	if err != nil {
		fmt.Fprintln(stderr, "oaruntime run: create run:", err)
		return 1
	}
	fmt.Fprintf(stderr, "run %s created\n", run.RunID)
	status := ""
	url := c.BaseURL + "/internal/v1/runs/" + run.RunID + "/stream"
	sc := &sseclient.Client{Prepare: func(r *http.Request) error {
		r.Header.Set("X-OA-RUNTIME-SIGNATURE", c.Sign())
		return nil
	}}
	err = sc.Stream(ctx, url, nil, "", func(ev sseclient.Event) error {
		if *raw {
			fmt.Fprintf(stdout, "id: %s data: %s\n", ev.ID, ev.Data)
		}
		if ev.Done() {
			return nil
		}
		var d map[string]any
		if json.Unmarshal([]byte(ev.Data), &d) != nil {
			return nil
		}
		if !*raw {
			printEvent(stdout, ev.ID, d)
		}
		if d["type"] == "finish" {
			if meta, ok := d["meta"].(map[string]any); ok {
				status, _ = meta["status"].(string)
			}
		}
		return nil
	})
	if err != nil {
		fmt.Fprintln(stderr, "oaruntime run: stream:", err)
		return 1
	}
	if status == "" {
		if r, err := c.GetRun(ctx, run.RunID); err == nil {
			status = r.Status
		}
	}
	fmt.Fprintf(stderr, "run %s %s\n", run.RunID, status)
	if status != "succeeded" {
		return 1
	}
	return 0
}

func printEvent(w io.Writer, id string, d map[string]any) {
	switch d["type"] {
	case "start":
		fmt.Fprintf(w, "[%s] run started\n", id)
	case "text-delta":
		fmt.Fprintf(w, "[%s] %v\n", id, d["delta"])
	case "tool-call":
		b, _ := json.Marshal(d["toolCall"])
		fmt.Fprintf(w, "[%s] tool call %s\n", id, b)
	case "tool-result":
		b, _ := json.Marshal(d["toolResult"])
		fmt.Fprintf(w, "[%s] tool result %s\n", id, b)
	case "finish":
		b, _ := json.Marshal(d["meta"])
		fmt.Fprintf(w, "[%s] run finished %s\n", id, b)
	default:
		b, _ := json.Marshal(d)
		fmt.Fprintf(w, "[%s] %s\n", id, b)
	}
}
