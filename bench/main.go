// Command oabench measures oaruntime side by side with River (riverqueue)
// on the same PostgreSQL: runs per second, rescue time after a SIGKILL,
// append latency at a fixed rate, and SSE fan-out. oaruntime is driven as a
// built binary over its public HTTP API (this module cannot import the
// product's internal packages); River runs in-process as a library, and in a
// child process for the rescue measurement. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

type common struct {
	bin  string
	pg   string
	out  string
	work string
}

func (c *common) register(fs *flag.FlagSet) {
	def := os.Getenv("OA_TEST_DATABASE_URL")
	if def == "" {
		def = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	fs.StringVar(&c.bin, "bin", "./oaruntime", "oaruntime binary (go build -o from the repository root)")
	fs.StringVar(&c.pg, "pg", def, "PostgreSQL URL (default $OA_TEST_DATABASE_URL); the bench creates and drops its own schemas")
	fs.StringVar(&c.out, "out", "results/bench.json", "JSON results file (each subcommand updates its section)")
	fs.StringVar(&c.work, "work", "", "directory for server logs and SQLite files (default a temporary directory)")
}

func (c *common) prepare() error {
	if c.work == "" {
		d, err := os.MkdirTemp("", "oabench-")
		if err != nil {
			return err
		}
		c.work = d
	}
	if err := os.MkdirAll(c.work, 0o755); err != nil {
		return err
	}
	abs, err := filepath.Abs(c.bin)
	if err != nil {
		return err
	}
	c.bin = abs
	if c.bin != "" {
		if _, err := os.Stat(c.bin); err != nil {
			return fmt.Errorf("--bin: %w (build it: go build -o bench/oaruntime ./cmd/oaruntime)", err)
		}
	}
	logf("work dir %s", c.work)
	return nil
}

const usage = `usage: oabench COMMAND [flags]

  runs      runs/s of oaruntime vs jobs/s of River, alternating rounds
  rescue    time to resume a run after SIGKILL vs River's rescuer
  append    append latency at a fixed rate on SQLite and PostgreSQL
  fanout    SSE fan-out: concurrent streams, server RSS, commit-to-client latency
  all       runs, rescue, append and fanout in sequence (common flags only)
  gobench   store the output of the executor Go benchmark in the JSON file
  river-worker   (internal) a River client process for the rescue measurement
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "runs":
		err = runsCmd(ctx, args)
	case "rescue":
		err = rescueCmd(ctx, args)
	case "append":
		err = appendCmd(ctx, args)
	case "fanout":
		err = fanoutCmd(ctx, args)
	case "all":
		err = allCmd(ctx, args)
	case "gobench":
		err = gobenchCmd(ctx, args)
	case "river-worker":
		err = riverWorkerCmd(ctx, args)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "oabench %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func allCmd(ctx context.Context, args []string) error {
	start := time.Now()
	for _, f := range []func(context.Context, []string) error{runsCmd, rescueCmd, appendCmd, fanoutCmd} {
		if err := f(ctx, args); err != nil {
			return err
		}
	}
	logf("all done in %s", time.Since(start).Round(time.Second))
	return nil
}
