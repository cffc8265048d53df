// Command khala measures the Khala projection and sync delivery of a
// built oaruntime binary (issue 4): sustained event ingest against
// projection lag, and WebSocket fan-out to many subscribers of one node.
//
//	khala ingest --bin ./oaruntime --pg URL --rates 200,400,800,1600,3200 --step 20s
//	khala fanout --bin ./oaruntime --pg URL --subscribers 1000
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// The sync token key is the same for serve and for `oaruntime token mint`.
const (
	keyID      = "khala-bench"
	signingKey = "khala-bench-signing-key-0123456789abcdef"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "khala:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "ingest" && args[0] != "fanout") {
		return fmt.Errorf("usage: khala ingest|fanout [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	bin := fs.String("bin", "./oaruntime", "oaruntime binary")
	pg := fs.String("pg", envOr("OA_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "PostgreSQL URL")
	schema := fs.String("schema", "khalabench", "PostgreSQL schema (dropped before and after)")
	work := fs.String("work", "", "directory for server logs and SQLite files (default: a new temp dir)")
	out := fs.String("out", "results/khala.json", "JSON results file (this subcommand's section is replaced)")
	stores := fs.String("stores", "sqlite,postgres", "stores to measure")
	rates := fs.String("rates", "200,400,800,1600,3200", "ingest: target events/s, one step each")
	step := fs.Duration("step", 20*time.Second, "ingest: length of each step")
	runs := fs.Int("runs", 100, "ingest: concurrent keep_open runs per step; fanout: runs the events go to")
	workers := fs.Int("workers", 128, "ingest: concurrent append requests at most")
	subs := fs.Int("subscribers", 1000, "fanout: WebSocket subscribers, one token each, same user")
	events := fs.Int("events", 60, "fanout: events appended")
	interval := fs.Duration("interval", 250*time.Millisecond, "fanout: time between appends")
	cliMint := fs.Int("cli-mint", 5, "fanout: subscribers whose token is minted by `oaruntime token mint` (the rest by POST /api/khala/token)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *work == "" {
		d, err := os.MkdirTemp("", "khalabench.")
		if err != nil {
			return err
		}
		*work = d
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	logf("work dir %s, load %s", *work, loadavg())
	dropSchema(ctx, *pg, *schema)
	defer dropSchema(ctx, *pg, *schema)
	pgu, err := benchutil.PGURL(*pg, map[string]string{"schema": *schema})
	if err != nil {
		return err
	}
	urls := map[string]string{"postgres": pgu}
	var section any
	switch args[0] {
	case "ingest":
		var rs []float64
		for _, s := range strings.Split(*rates, ",") {
			f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil || f <= 0 {
				return fmt.Errorf("--rates: %q is not a positive number", s)
			}
			rs = append(rs, f)
		}
		c := ingestConfig{bin: absBin, work: *work, rates: rs, step: *step, runs: *runs, workers: *workers}
		var all []ingestStore
		for _, st := range strings.Split(*stores, ",") {
			u := urls[st]
			if st == "sqlite" {
				u = "sqlite:" + filepath.Join(*work, "ingest-"+randHex(3)+".db")
			}
			r, err := ingestStoreRun(ctx, c, st, u)
			if err != nil {
				return fmt.Errorf("ingest %s: %w", st, err)
			}
			fmt.Printf("ingest %s: highest target with lag p95 <= 25 events: %.0f/s (achieved %.1f/s); max achieved %.1f/s; %s\n",
				st, r.HighestOK, r.HighestOKAt, r.MaxAchieved, r.StoppedBy)
			all = append(all, r)
			dropSchema(ctx, *pg, *schema)
		}
		section = map[string]any{"config": map[string]any{"rates": rs, "step": step.String(), "runs": *runs, "workers": *workers,
			"request":   `POST /internal/v1/runs/{id}/events {"event_type":"run.delta"} signed, round robin over fresh keep_open runs each step`,
			"lag":       lagMetric + `{projection="run_summary"}: bucket deltas between scrapes at the start and end of each step`,
			"criterion": "p95 <= 25 events exactly when the share of observations in le=25 is >= 0.95 (25 is a bucket bound)"},
			"results": all}
	case "fanout":
		c := fanoutConfig{bin: absBin, work: *work, subscribers: *subs, runs: *runs, events: *events, interval: *interval, cliMint: *cliMint}
		mint := func(sub string) (string, error) {
			cmd := exec.CommandContext(ctx, absBin, "token", "mint", "--sub", sub, "--scope", topic, "--ttl", "15m")
			cmd.Env = append(os.Environ(), "OA_SYNC_TOKEN_KEY_ID="+keyID, "OA_SYNC_TOKEN_SIGNING_KEY="+signingKey)
			b, err := cmd.Output()
			if err != nil {
				return "", fmt.Errorf("oaruntime token mint: %w", err)
			}
			return strings.TrimSpace(string(b)), nil
		}
		var all []fanoutResult
		for _, st := range strings.Split(*stores, ",") {
			u := urls[st]
			if st == "sqlite" {
				u = "sqlite:" + filepath.Join(*work, "fanout-"+randHex(3)+".db")
			}
			r, err := fanoutStore(ctx, c, st, u, mint)
			if err != nil {
				return fmt.Errorf("fanout %s: %w", st, err)
			}
			fmt.Printf("fanout %s: %d/%d subscribers, commit-to-client p50 %.1f ms p99 %.1f ms max %.1f ms (%d deliveries, %d missing), slowest subscriber per event p50 %.1f ms p99 %.1f ms; server RSS %.1f -> %.1f MiB open, peak %.1f MiB; server %.2f cores, client %.2f, machine %.2f\n",
				st, r.Open, r.Subscribers, r.Latency.P50MS, r.Latency.P99MS, r.Latency.MaxMS, r.Deliveries, r.Missing,
				r.PerEventP99.P50MS, r.PerEventP99.P99MS, r.RSSIdleMiB, r.RSSOpenMiB, r.RSSPeakMiB, r.ServerCPU, r.ClientCPU, r.MachineCPU)
			all = append(all, r)
			dropSchema(ctx, *pg, *schema)
		}
		section = map[string]any{"config": map[string]any{"subscribers": *subs, "runs": *runs, "events": *events, "interval": interval.String(),
			"topic": topic, "latency": "append HTTP response -> update_batch read by the subscriber carrying runtime_source.seq >= the appended seq"},
			"results": all}
	}
	return saveJSON(*out, args[0], section)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func dropSchema(ctx context.Context, base, schema string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		logf("drop schema %s: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		logf("drop schema %s: %v", schema, err)
	}
}
