// Command drillcmd runs the restart/reconnect chaos drills against real
// `oaruntime serve` processes and writes results.jsonl, summary.json and
// SUMMARY.md into the output folder. It exits 1 when any drill failed, 2 on
// bad usage. scripts/run-restart-reconnect-chaos-drills.sh builds and runs
// it; see docs/RESTART_RECONNECT_CHAOS.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/oaruntime/oaruntime/internal/drills"
)

func main() {
	os.Exit(run())
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func run() int {
	fs := flag.NewFlagSet("drillcmd", flag.ContinueOnError)
	bin := fs.String("bin", "", "the oaruntime binary (required)")
	out := fs.String("out", "", "output folder (required)")
	revision := fs.String("revision", "", "source revision of the binary, recorded in summary.json")
	short := fs.Bool("short", os.Getenv("OA_DRILL_SHORT") == "1", "CI load: fewer runs and clients (OA_DRILL_SHORT=1)")
	only := fs.String("only", os.Getenv("OA_DRILL_ONLY"), "comma-separated drill names to run (OA_DRILL_ONLY; default all)")
	stores := fs.String("stores", os.Getenv("OA_DRILL_STORES"), "comma-separated stores: sqlite,postgres (OA_DRILL_STORES; default both)")
	leaseTTL := fs.Duration("lease-ttl", 10*time.Second, "lease TTL given to every node")
	leaseRenew := fs.Duration("lease-renew", 3*time.Second, "lease renewal interval given to every node")
	janitor := fs.Duration("janitor-interval", 2*time.Second, "janitor interval given to every node")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *bin == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "drillcmd: --bin and --out are required")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := drills.New(drills.Config{
		Bin: *bin, Revision: *revision, OutDir: *out, Short: *short, CI: os.Getenv("CI") != "",
		PGURL: os.Getenv("OA_TEST_DATABASE_URL"), PGBin: os.Getenv("OA_TEST_PG_BIN"), PGData: os.Getenv("OA_TEST_PG_DATA"),
		PGStopMode: os.Getenv("OA_DRILL_PG_STOP_MODE"),
		LeaseTTL:   *leaseTTL, LeaseRenew: *leaseRenew, JanitorInterval: *janitor,
		Only: splitList(*only), Stores: splitList(*stores), Progress: os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	results, err := d.RunAll(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "drillcmd:", err)
		return 1
	}
	totals, passed := drills.Summarize(results)
	fmt.Fprintf(os.Stderr, "drillcmd: %d passed, %d failed, %d not run; artifacts in %s\n", totals[drills.StatusPassed], totals[drills.StatusFailed], totals[drills.StatusNotRun], *out)
	if !passed {
		return 1
	}
	return 0
}
