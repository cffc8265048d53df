package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/oaruntime/oaruntime/internal/config"
)

func migrateCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg config.Config
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	cfg.Register(fs)
	status := fs.Bool("status", false, "list migrations and whether each is applied")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if cfg.DatabaseURL == "" {
		cfg.DatabaseURL = "sqlite:" + dataPath(cfg.DataDir, config.DefaultDBFile)
	}
	st, err := openStore(ctx, &cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	if !*status {
		if err := st.Migrate(ctx); err != nil {
			return err
		}
	}
	if *status {
		type lister interface {
			MigrationStatus(ctx context.Context) ([]*goose.MigrationStatus, error)
		}
		if l, ok := st.(lister); ok {
			ms, err := l.MigrationStatus(ctx)
			if err != nil {
				return err
			}
			for _, m := range ms {
				applied := "pending"
				if m.State == goose.StateApplied {
					applied = "applied " + m.AppliedAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(stdout, "%5d  %-40s %s\n", m.Source.Version, filepath.Base(m.Source.Path), applied)
			}
		}
	}
	v, err := st.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s schema version %d\n", st.Dialect(), v)
	return nil
}
