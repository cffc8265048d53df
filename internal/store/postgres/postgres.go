// Package postgres is the PostgreSQL driver of the store contract: pgx v5
// with a pgxpool for queries, a dedicated connection for LISTEN, and goose
// migrations embedded in the binary. Every object lives in one schema
// (default "oaruntime") selected through search_path, so several
// installations or tests can share a database without seeing each other.
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/oaruntime/oaruntime/internal/store"
)

//go:embed migrations/*.sql
var migrationsFS embed.FS

// DefaultSchema is the schema used when neither WithSchema nor the URL's
// "schema" query parameter names one.
const DefaultSchema = "oaruntime"

// URLSchemaParam is the query parameter of a postgres:// URL that selects the
// schema, e.g. postgres://host/db?schema=tenant_a. It is removed before the
// URL reaches pgx, which would otherwise send it to the server as a setting.
const URLSchemaParam = "schema"

// schemaRe keeps schema names plain lowercase identifiers so they need no
// quoting in search_path and the derived channel name stays under
// PostgreSQL's 63-byte identifier limit.
var schemaRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,47}$`)

// Option configures Open.
type Option func(*config)

type config struct {
	schema     string
	logger     *slog.Logger
	backoffMin time.Duration
	backoffMax time.Duration
	migrate    bool
}

// WithMigrate applies pending migrations during Open (what serve does).
func WithMigrate() Option { return func(c *config) { c.migrate = true } }

// WithSchema selects the schema holding all tables. It takes precedence over
// the URL's "schema" parameter. Names must match ^[a-z_][a-z0-9_]{0,47}$.
func WithSchema(name string) Option { return func(c *config) { c.schema = name } }

// WithLogger receives listener reconnects and other background conditions.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithListenerBackoff bounds the delay between listener reconnect attempts
// (defaults 100ms and 5s); the delay doubles per failed attempt.
func WithListenerBackoff(minDelay, maxDelay time.Duration) Option {
	return func(c *config) { c.backoffMin, c.backoffMax = minDelay, maxDelay }
}

// Store is the PostgreSQL implementation of store.Store.
type Store struct {
	pool    *pgxpool.Pool
	db      *sql.DB // database/sql view of pool for goose
	goose   *goose.Provider
	schema  string
	channel string
	cfg     config

	// listenConfig is the connection config of LISTEN connections, kept apart
	// from the pool so that a listener never holds a pool slot.
	listenConfig *pgx.ConnConfig

	// heads lets an append skip reading the run row (see appendFastMany).
	heads heads
	// notes sends the notices of committed run writes (see notifier).
	notes *notifier
	// Group commit (batch.go): fast appends of many runs (group.go), new
	// runs and new frames (runs.go).
	appends *batcher[groupEntry, groupOutcome]
	creates *batcher[createItem, createOutcome]
	frames  *batcher[frameItem, frameOutcome]

	// Listener state across all Watch calls: ListenerUp is true when at least
	// one Watch is active and all active ones are connected.
	watchers  atomic.Int64
	connected atomic.Int64
	// projectionFallbacks counts projection batches written one by one
	// (a write failed, or the batch could not be sent).
	projectionFallbacks atomic.Int64

	mu     sync.Mutex // guards closed and loops.Add against Close
	closed bool
	done   chan struct{}
	loops  sync.WaitGroup // Watch goroutines, awaited by Close
}

var _ store.Store = (*Store)(nil)

// Open connects to PostgreSQL at rawURL (postgres:// URL or key=value DSN).
// It does not migrate; call Migrate.
func Open(ctx context.Context, rawURL string, opts ...Option) (*Store, error) {
	cfg := config{backoffMin: 100 * time.Millisecond, backoffMax: 5 * time.Second}
	connURL, urlSchema, err := splitSchemaParam(rawURL)
	if err != nil {
		return nil, err
	}
	cfg.schema = urlSchema
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.schema == "" {
		cfg.schema = DefaultSchema
	}
	if !schemaRe.MatchString(cfg.schema) {
		return nil, fmt.Errorf("postgres: schema %q must match %s", cfg.schema, schemaRe)
	}
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.DiscardHandler)
	}
	if cfg.backoffMin <= 0 || cfg.backoffMax < cfg.backoffMin {
		return nil, fmt.Errorf("postgres: listener backoff bounds %v..%v are invalid", cfg.backoffMin, cfg.backoffMax)
	}

	pcfg, err := pgxpool.ParseConfig(connURL)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse database url: %w", err)
	}
	rp := pcfg.ConnConfig.RuntimeParams
	rp["search_path"] = cfg.schema
	if rp["application_name"] == "" {
		rp["application_name"] = "oaruntime"
	}
	listenCfg := pcfg.ConnConfig.Copy()
	listenCfg.RuntimeParams["application_name"] = "oaruntime-listener:" + cfg.schema

	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: create pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: ping: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	sub, err := fs.Sub(migrationsFS, "migrations")
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: migrations: %w", err)
	}
	// The advisory lock id is per schema so that installations in different
	// schemas (and parallel tests) migrate without waiting for each other.
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(int64(crc32.ChecksumIEEE([]byte("oaruntime-migrate:"+cfg.schema)))),
		lock.WithLockTimeout(1, 300),
	)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: migration locker: %w", err)
	}
	prov, err := goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		_ = db.Close()
		pool.Close()
		return nil, fmt.Errorf("postgres: migration provider: %w", err)
	}
	s := &Store{
		pool:         pool,
		db:           db,
		goose:        prov,
		schema:       cfg.schema,
		channel:      cfg.schema + "_events",
		cfg:          cfg,
		listenConfig: listenCfg,
		done:         make(chan struct{}),
	}
	s.notes = newNotifier(s)
	// A quarter of the pool: enough flushers that a write rarely waits
	// for one, few enough that under load each call carries many.
	flushers := max(2, int(pcfg.MaxConns)/4)
	s.appends = newBatcher(flushers, s.applyAppends)
	s.creates = newBatcher(flushers, s.applyCreates)
	s.frames = newBatcher(flushers, s.applyFrames)
	for _, run := range []func(<-chan struct{}){s.notes.run, s.appends.run, s.creates.run, s.frames.run} {
		s.loops.Add(1)
		go func() {
			defer s.loops.Done()
			run(s.done)
		}()
	}
	if cfg.migrate {
		if err := s.Migrate(ctx); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

// splitSchemaParam removes the schema parameter from a URL-form connection
// string. Key=value DSNs pass through unchanged.
func splitSchemaParam(raw string) (string, string, error) {
	if !strings.HasPrefix(raw, "postgres://") && !strings.HasPrefix(raw, "postgresql://") {
		return raw, "", nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		// Do not echo the URL: it may carry a password.
		return "", "", errors.New("postgres: database url is not a valid URL")
	}
	q := u.Query()
	schema := q.Get(URLSchemaParam)
	if !q.Has(URLSchemaParam) {
		return raw, "", nil
	}
	q.Del(URLSchemaParam)
	u.RawQuery = q.Encode()
	return u.String(), schema, nil
}

// Schema is the schema this store works in.
func (s *Store) Schema() string { return s.schema }

// Channel is the NOTIFY channel of this store's schema.
func (s *Store) Channel() string { return s.channel }

// Pool exposes the connection pool for callers that need plain SQL
// (operators' tools, tests); store semantics are only guaranteed through
// the Store methods.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Dialect implements store.Store.
func (s *Store) Dialect() string { return "postgres" }

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

// Close stops listeners and closes the pool. It is safe to call twice.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.loops.Wait()
	err := s.db.Close()
	s.pool.Close()
	if err != nil {
		return fmt.Errorf("postgres: close: %w", err)
	}
	return nil
}

// ensureSchema creates the schema when it is missing. Checking first lets
// a role without CREATE on the database run against a schema made by a DBA.
func (s *Store) ensureSchema(ctx context.Context) error {
	var exists bool
	if err := s.pool.QueryRow(ctx,
		`SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, s.schema).Scan(&exists); err != nil {
		return fmt.Errorf("postgres: check schema %s: %w", s.schema, err)
	}
	if exists {
		return nil
	}
	if _, err := s.pool.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{s.schema}.Sanitize()); err != nil {
		return fmt.Errorf("postgres: create schema %s: %w", s.schema, err)
	}
	return nil
}

// Migrate applies pending migrations, creating the schema first when needed.
// Concurrent callers (replicas starting together) serialize on an advisory lock.
func (s *Store) Migrate(ctx context.Context) error {
	if err := s.ensureSchema(ctx); err != nil {
		return err
	}
	if _, err := s.goose.Up(ctx); err != nil {
		return fmt.Errorf("postgres: migrate schema %s: %w", s.schema, err)
	}
	return nil
}

// MigrationStatus lists every embedded migration with its applied state.
func (s *Store) MigrationStatus(ctx context.Context) ([]*goose.MigrationStatus, error) {
	if err := s.ensureSchema(ctx); err != nil {
		return nil, err
	}
	st, err := s.goose.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: migration status of schema %s: %w", s.schema, err)
	}
	return st, nil
}

// SchemaVersion implements store.Store. It reads goose's table directly so
// that readiness checks neither take the migration lock nor create tables;
// an unmigrated schema reports 0.
func (s *Store) SchemaVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.pool.QueryRow(ctx,
		`SELECT COALESCE(MAX(version_id), 0) FROM goose_db_version WHERE is_applied`).Scan(&v)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") { // undefined table / schema
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("postgres: schema version: %w", err)
	}
	return v, nil
}
