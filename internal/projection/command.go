package projection

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// CommandConfig configures the operator command beyond the store.
type CommandConfig struct {
	Sink    Sink   // nil: builtin; pass the http sink when OA_KHALA_SINK=http
	Version string // projection_version; default DefaultVersion
	Logger  *slog.Logger
}

// Command runs `oaruntime khala reproject|verify ...` with the builtin sink.
// See CommandWith.
func Command(ctx context.Context, st store.ProjectionStore, m *telemetry.Metrics, args []string, stdout, stderr io.Writer, isTTY bool) int {
	return CommandWith(ctx, st, m, CommandConfig{}, args, stdout, stderr, isTTY)
}

// CommandWith runs an operator command as its own process. Its replay and
// drift rows are stored uncounted, and the serving process turns them into
// metrics (Prometheus does not scrape this process). Exit codes: 0 success,
// 1 an entity failed or verify found a mismatch, 2 usage error.
func CommandWith(ctx context.Context, st store.ProjectionStore, m *telemetry.Metrics, cfg CommandConfig, args []string, stdout, stderr io.Writer, isTTY bool) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, commandUsage)
		return 2
	}
	p := New(st, cfg.Sink, nil, m, Config{Version: cfg.Version, Logger: cfg.Logger})
	switch args[0] {
	case "reproject":
		return p.reprojectCmd(ctx, args[1:], stdout, stderr, isTTY)
	case "verify":
		return p.verifyCmd(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, commandUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "khala: unknown command %q\n%s", args[0], commandUsage)
		return 2
	}
}

const commandUsage = `usage:
  oaruntime khala reproject --all | --run-id ID | --worker-id ID [--dry-run]
  oaruntime khala verify [--sample N]
`

func (p *Projector) reprojectCmd(ctx context.Context, args []string, stdout, stderr io.Writer, isTTY bool) int {
	fs := flag.NewFlagSet("khala reproject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	all := fs.Bool("all", false, "rebuild every run and every codex worker")
	runID := fs.String("run-id", "", "rebuild one run")
	workerID := fs.String("worker-id", "", "rebuild one codex worker")
	dry := fs.Bool("dry-run", false, "rebuild and compare, write nothing")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "khala reproject: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	n := 0
	for _, set := range []bool{*all, *runID != "", *workerID != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		fmt.Fprintln(stderr, "khala reproject: give exactly one of --all, --run-id ID, --worker-id ID")
		return 2
	}
	if *workerID != "" && !p.ProjectsWorkers() {
		fmt.Fprintln(stderr, "khala reproject: this store does not project codex workers")
		return 2
	}

	var progress func(done, total int)
	if isTTY {
		progress = func(done, total int) { drawBar(stderr, done, total) }
	}
	rep, err := p.Reproject(ctx, Scope{All: *all, RunID: *runID, WorkerID: *workerID, DryRun: *dry}, progress)
	if isTTY && rep.Total > 0 {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "khala reproject: %v\n", err)
		return 1
	}
	for _, e := range rep.Entities {
		line := fmt.Sprintf("reproject scope=%s entity=%s result=%s changed=%t seq=%d duration_ms=%d",
			e.Scope, e.EntityID, e.Result, e.Changed, e.Seq, e.Duration.Milliseconds())
		switch {
		case e.Result == store.ReplayError:
			fmt.Fprintf(stderr, "%s reason=%q\n", line, e.Error)
		case !isTTY:
			fmt.Fprintln(stdout, line)
		}
	}
	fmt.Fprintf(stdout, "reproject total=%d succeeded=%d failed=%d changed=%d dry_run=%t duration_ms=%d\n",
		rep.Total, rep.Succeeded, rep.Failed, rep.Changed, rep.DryRun, rep.Duration.Milliseconds())
	if rep.Failed > 0 {
		return 1
	}
	return 0
}

// drawBar redraws a one-line progress bar in place.
func drawBar(w io.Writer, done, total int) {
	const width = 30
	if total <= 0 {
		return
	}
	filled := done * width / total
	fmt.Fprintf(w, "\rreproject [%s%s] %d/%d", strings.Repeat("#", filled), strings.Repeat(".", width-filled), done, total)
}

func (p *Projector) verifyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("khala verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sample := fs.Int("sample", DefaultAuditSample, "number of most recently updated checkpoints to audit per projection, runs and codex workers (1-10000)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "khala verify: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *sample < 1 || *sample > 10000 {
		fmt.Fprintln(stderr, "khala verify: --sample must be in 1..10000")
		return 2
	}
	t0 := time.Now()
	rep, err := p.Audit(ctx, *sample)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(stderr, "khala verify: canceled")
		} else {
			fmt.Fprintf(stderr, "khala verify: %v\n", err)
		}
		return 1
	}
	for _, f := range rep.Findings {
		fmt.Fprintf(stdout, "verify projection=%s entity=%s reason_class=%s checkpoint_seq=%d document_seq=%d runtime_seq=%d\n",
			f.Projection, f.EntityID, f.ReasonClass, f.CheckpointSeq, f.DocumentSeq, f.RuntimeSeq)
	}
	fmt.Fprintf(stdout, "verify status=%s sampled=%d mismatches=%d missing_documents=%d hash_mismatches=%d lag_drift=%d duration_ms=%d\n",
		rep.Status, rep.Sampled, rep.Mismatches, rep.Missing, rep.HashMismatches, rep.LagDrift, time.Since(t0).Milliseconds())
	if rep.Mismatches > 0 {
		return 1
	}
	return 0
}
