// Command oaruntime is the durable runtime for agent runs: the service, its
// client, and its operator tools. The work is done in internal/; this file
// only dispatches subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/oaruntime/oaruntime/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
