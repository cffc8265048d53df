package app_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/alerttest"
)

// TestVerifyChecksASavedReceipt: GET .../verify recomputes the chain and the
// receipt; a receipt saved earlier matches while the log is unchanged and no
// longer matches once the run has moved on.
func TestVerifyChecksASavedReceipt(t *testing.T) {
	rt := alerttest.StartRuntime(t)
	c := rt.Client
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.CreateRun(ctx, map[string]any{"run_id": "run_rcpt", "thread_id": "t", "metadata": map[string]any{"keep_open": true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SendFrame(ctx, "run_rcpt", "f1", "user_message", map[string]any{"text": "hi"}); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := c.GetRun(ctx, "run_rcpt")
		if err == nil && r.LatestSeq >= 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("run not answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var receipt struct {
		ReceiptHash string `json:"receipt_hash"`
	}
	if _, err := c.Do(ctx, http.MethodGet, "/internal/v1/runs/run_rcpt/receipt", nil, &receipt); err != nil {
		t.Fatal(err)
	}
	type verify struct {
		OK      bool `json:"ok"`
		Receipt struct {
			ReceiptHash string `json:"receipt_hash"`
			Matches     *bool  `json:"matches"`
		} `json:"receipt"`
	}
	var v verify
	if _, err := c.Do(ctx, http.MethodGet, "/internal/v1/runs/run_rcpt/verify?receipt_hash="+receipt.ReceiptHash, nil, &v); err != nil {
		t.Fatal(err)
	}
	if !v.OK || v.Receipt.Matches == nil || !*v.Receipt.Matches || v.Receipt.ReceiptHash != receipt.ReceiptHash {
		t.Fatalf("verify of an unchanged run: %+v (saved %s)", v, receipt.ReceiptHash)
	}
	if _, err := c.Do(ctx, http.MethodPost, "/internal/v1/runs/run_rcpt/events", map[string]any{"event_type": "run.delta", "payload": map[string]any{"delta": "more"}}, nil); err != nil {
		t.Fatal(err)
	}
	v = verify{}
	if _, err := c.Do(ctx, http.MethodGet, "/internal/v1/runs/run_rcpt/verify?receipt_hash="+receipt.ReceiptHash, nil, &v); err != nil {
		t.Fatal(err)
	}
	if v.Receipt.Matches == nil || *v.Receipt.Matches {
		t.Fatalf("a saved receipt still matches after the log moved on: %+v", v)
	}
	_, err := c.Do(ctx, http.MethodGet, "/internal/v1/runs/run_rcpt/verify?receipt_hash=nothex", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "receipt_hash") {
		t.Fatalf("bad receipt_hash: %v", err)
	}
}
