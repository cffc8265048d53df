package ops

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// Command runs `oaruntime ops <generate|check|rules> [flags]` and returns the
// process exit code: 0 success, 1 drift or failure, 2 usage error.
//
//	generate [--dir .]   write the files under deploy/monitoring/
//	check    [--dir .]   exit 1 and list the files that differ from the code
//	rules    [--time-divisor N] [--interval D] [--runbook-base URL] [--operator]
//	                     print the rule file; --time-divisor 60 turns 10m windows
//	                     into 10s for drills against a real Prometheus
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: oaruntime ops generate|check|rules [flags]")
		return 2
	}
	if err := ctx.Err(); err != nil {
		fmt.Fprintf(stderr, "ops: %v\n", err)
		return 1
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("ops "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch sub {
	case "generate", "check":
		dir := fs.String("dir", ".", "repository root holding deploy/monitoring/")
		if err := fs.Parse(rest); err != nil {
			return usageCode(err)
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "ops %s: unexpected argument %q\n", sub, fs.Arg(0))
			return 2
		}
		if sub == "generate" {
			if err := Generate(*dir); err != nil {
				fmt.Fprintf(stderr, "ops generate: %v\n", err)
				return 1
			}
			files, _ := GeneratedFiles()
			for _, rel := range sortedKeys(files) {
				fmt.Fprintf(stdout, "wrote %s\n", rel)
			}
			return 0
		}
		drifted, err := Check(*dir)
		if err != nil {
			fmt.Fprintf(stderr, "ops check: %v\n", err)
			return 1
		}
		if len(drifted) > 0 {
			for _, rel := range drifted {
				fmt.Fprintf(stderr, "out of date: %s\n", rel)
			}
			fmt.Fprintln(stderr, "run `oaruntime ops generate` and commit the result")
			return 1
		}
		fmt.Fprintln(stdout, "deploy/monitoring is up to date")
		return 0
	case "rules":
		divisor := fs.Int("time-divisor", 1, "divide every window and `for` by N (60: 10m becomes 10s)")
		interval := fs.Duration("interval", 0, "rule group evaluation interval (0: Prometheus default)")
		base := fs.String("runbook-base", "", "runbook URL base (default the repository's docs/OPERATIONS_ALERTING.md)")
		operator := fs.Bool("operator", false, "print a PrometheusRule resource instead of a plain rule file")
		if err := fs.Parse(rest); err != nil {
			return usageCode(err)
		}
		if *divisor < 1 {
			fmt.Fprintln(stderr, "ops rules: --time-divisor must be at least 1")
			return 2
		}
		if *interval < 0 || *interval%time.Millisecond != 0 {
			fmt.Fprintln(stderr, "ops rules: --interval must be a positive whole number of milliseconds")
			return 2
		}
		o := Options{TimeDivisor: *divisor, EvaluationInterval: *interval, RunbookBaseURL: *base}
		render := RuleFile
		if *operator {
			render = PrometheusRuleFile
		}
		out, err := render(o)
		if err != nil {
			fmt.Fprintf(stderr, "ops rules: %v\n", err)
			return 1
		}
		if _, err := stdout.Write(out); err != nil {
			fmt.Fprintf(stderr, "ops rules: %v\n", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(stderr, "ops: unknown subcommand %q (want generate, check or rules)\n", sub)
		return 2
	}
}

func usageCode(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
