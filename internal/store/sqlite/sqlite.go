// Package sqlite is the embedded store driver: one SQLite file in WAL mode,
// pure Go (modernc.org/sqlite), zero setup. It implements store.Store.
//
// SQLite allows one writer at a time. Every write goes through a dedicated
// pool of exactly one connection whose transactions begin IMMEDIATE, so
// writers queue inside database/sql instead of failing with SQLITE_BUSY, and
// each write transaction (read, check, write) is serializable. Reads use a
// separate pool of read-only connections that WAL lets run beside the writer.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/oaruntime/oaruntime/internal/store"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Store is the SQLite implementation of store.Store.
type Store struct {
	path   string
	writer *sql.DB // exactly one connection, BEGIN IMMEDIATE
	reader *sql.DB // read-only connections
	bc     *broadcaster
	clock  func() time.Time
	goose  *goose.Provider
}

var _ store.Store = (*Store)(nil)

type config struct {
	busyTimeout time.Duration
	readConns   int
	synchronous string
	migrate     bool
	clock       func() time.Time
}

// Option configures Open.
type Option func(*config)

// WithMigrate applies pending migrations during Open (what serve does).
func WithMigrate() Option { return func(c *config) { c.migrate = true } }

// WithBusyTimeout sets how long a connection waits for a lock held by another
// process (for example `oaruntime migrate` beside a running server). Default 5 s.
func WithBusyTimeout(d time.Duration) Option { return func(c *config) { c.busyTimeout = d } }

// WithReadConns sets the size of the read pool. Default 8.
func WithReadConns(n int) Option { return func(c *config) { c.readConns = n } }

// WithSynchronous sets PRAGMA synchronous: "FULL" (default; a committed event
// survives power loss) or "NORMAL" (faster; WAL still survives a process crash).
func WithSynchronous(mode string) Option { return func(c *config) { c.synchronous = mode } }

// WithClock replaces time.Now for lease expiry and timestamps (tests, benches).
func WithClock(now func() time.Time) Option { return func(c *config) { c.clock = now } }

// Open opens (creating if needed) the database file at path. Migrations are
// applied only with WithMigrate or by calling Migrate.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	cfg := config{busyTimeout: 5 * time.Second, readConns: 8, synchronous: "FULL", clock: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	if path == "" {
		return nil, errors.New("sqlite: open: empty database path")
	}
	switch cfg.synchronous {
	case "FULL", "NORMAL":
	default:
		return nil, fmt.Errorf("sqlite: open: synchronous must be FULL or NORMAL, got %q", cfg.synchronous)
	}
	if cfg.readConns < 1 {
		cfg.readConns = 1
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("sqlite: open: create directory: %w", err)
		}
	}

	busy := strconv.FormatInt(cfg.busyTimeout.Milliseconds(), 10)
	common := url.Values{}
	common.Add("_pragma", "busy_timeout("+busy+")")
	common.Add("_pragma", "foreign_keys(1)")
	common.Add("_pragma", "synchronous("+cfg.synchronous+")")

	w := url.Values{}
	for k, v := range common {
		w[k] = append([]string(nil), v...)
	}
	// journal_mode is persistent in the file; setting it on the writer first
	// means readers open an already-WAL database.
	w.Add("_pragma", "journal_mode(WAL)")
	w.Set("_txlock", "immediate")
	writer, err := sql.Open("sqlite", dsn(path, w))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open writer: %w", err)
	}
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxIdleTime(0)
	writer.SetConnMaxLifetime(0)
	if err := writer.PingContext(ctx); err != nil {
		_ = writer.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}

	r := common
	r.Add("_pragma", "query_only(1)")
	reader, err := sql.Open("sqlite", dsn(path, r))
	if err != nil {
		_ = writer.Close()
		return nil, fmt.Errorf("sqlite: open reader: %w", err)
	}
	reader.SetMaxOpenConns(cfg.readConns)
	reader.SetMaxIdleConns(cfg.readConns)

	s := &Store{path: path, writer: writer, reader: reader, bc: newBroadcaster(), clock: cfg.clock}
	if s.goose, err = newProvider(writer); err != nil {
		_ = s.Close()
		return nil, err
	}
	if cfg.migrate {
		if err := s.Migrate(ctx); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

func dsn(path string, q url.Values) string {
	u := url.URL{Scheme: "file", Opaque: (&url.URL{Path: path}).EscapedPath(), RawQuery: q.Encode()}
	return u.String()
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Dialect implements store.Store.
func (s *Store) Dialect() string { return "sqlite" }

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.reader.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
	}
	return nil
}

// ListenerUp implements store.Store: the in-process broadcaster is up until Close.
func (s *Store) ListenerUp() bool { return !s.bc.isClosed() }

// Watch implements store.Store with an in-process broadcaster fed after each
// commit. A slow watcher loses notices (they are only wake-ups), never blocks writers.
func (s *Store) Watch(ctx context.Context) (<-chan store.Notice, error) {
	return s.bc.subscribe(ctx)
}

// Close closes watchers and both pools.
func (s *Store) Close() error {
	s.bc.close()
	return errors.Join(s.reader.Close(), s.writer.Close())
}

func newProvider(db *sql.DB) (*goose.Provider, error) {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("sqlite: migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, sub, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return nil, fmt.Errorf("sqlite: migrations: %w", err)
	}
	return p, nil
}

// Migrate applies pending migrations.
func (s *Store) Migrate(ctx context.Context) error {
	if _, err := s.goose.Up(ctx); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	return nil
}

// MigrationStatus lists every known migration and whether it is applied
// (`oaruntime migrate --status`). The type is goose's, shared with the
// postgres driver.
func (s *Store) MigrationStatus(ctx context.Context) ([]*goose.MigrationStatus, error) {
	st, err := s.goose.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlite: migration status: %w", err)
	}
	return st, nil
}

// SchemaVersion implements store.Store: the highest applied migration, 0 when none.
func (s *Store) SchemaVersion(ctx context.Context) (int64, error) {
	v, err := s.goose.GetDBVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("sqlite: schema version: %w", err)
	}
	return v, nil
}

// write runs fn in one IMMEDIATE transaction on the single writer connection
// and publishes the notices fn collected once the commit succeeded.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx, notify func(store.Notice)) error) error {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	var notices []store.Notice
	if err := fn(tx, func(n store.Notice) { notices = append(notices, n) }); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	for _, n := range notices {
		s.bc.publish(n)
	}
	return nil
}

// now is the store clock truncated to what the database keeps.
func (s *Store) now() time.Time { return s.clock().UTC().Truncate(time.Microsecond) }

// tsLayout is fixed-width so that stored timestamps compare as strings.
const tsLayout = "2006-01-02T15:04:05.000000Z"

func formatTS(t time.Time) string { return t.UTC().Format(tsLayout) }

func parseTS(s string) (time.Time, error) {
	t, err := time.Parse(tsLayout, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("sqlite: bad timestamp %q: %w", s, err)
	}
	return t, nil
}

func parseNullTS(s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTS(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}
