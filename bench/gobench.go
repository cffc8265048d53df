package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// gobenchCmd reads `go test -bench BenchmarkExecutorOverhead` output and
// stores its custom metrics as the executor_overhead section.
func gobenchCmd(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("gobench", flag.ContinueOnError)
	in := fs.String("in", "", "go test -bench output file")
	out := fs.String("out", "results/bench.json", "JSON results file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	rows := map[string]map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "BenchmarkExecutorOverhead/") {
			continue
		}
		name := strings.TrimPrefix(fields[0], "BenchmarkExecutorOverhead/")
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		m := map[string]float64{}
		if n, err := strconv.ParseFloat(fields[1], 64); err == nil {
			m["iterations"] = n
		}
		for i := 2; i+1 < len(fields); i += 2 {
			if v, err := strconv.ParseFloat(fields[i], 64); err == nil {
				m[fields[i+1]] = v
			}
		}
		rows[name] = m
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(rows) == 0 {
		return fmt.Errorf("%s: no BenchmarkExecutorOverhead lines", *in)
	}
	for name, m := range rows {
		fmt.Printf("executor %s: per step p50 %.0f µs p99 %.0f µs (per turn p50 %.0f µs p99 %.0f µs, %.0f model calls/turn)\n",
			name, m["step-p50-µs"], m["step-p99-µs"], m["turn-p50-µs"], m["turn-p99-µs"], m["model-calls/turn"])
	}
	return saveSection(*out, func(r *results) {
		r.Executor = map[string]any{
			"source":  "go test -run '^$' -bench BenchmarkExecutorOverhead ./internal/executor (internal/executor/bench_test.go)",
			"measure": "RunOnce of a leased run with one user_message, minus the time inside the scripted (instant) model provider; step = one model call of the turn; metrics nil, tracer no-op",
			"results": rows,
		}
	})
}
