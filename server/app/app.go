// Package app assembles the Parley server: configuration, database,
// migration, the HTTP surface and graceful shutdown. server/main.go runs it;
// tests build it in-process.
package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/99designs/gqlgen/graphql/playground"
	"github.com/rs/cors"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/files"
	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/desk/store"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/graph"
	"github.com/parleydesk/parley/server/webhooks"
)

// App is a running Parley instance.
type App struct {
	Config Config
	Log    *slog.Logger
	DB     *store.DB
	Desk   *desk.Desk
	// DemoCredentials are the logins demo mode created (printed at start).
	DemoCredentials []desk.DemoCredential
	// Hub delivers events to live subscriptions.
	Hub *live.Hub
	// Websockets are the open GraphQL websockets: hijacked connections,
	// which http.Server.Shutdown neither waits for nor closes.
	Websockets *graph.Websockets

	stopLive context.CancelFunc
	// loads shares the loads of live events between their subscribers.
	loads *graph.LiveLoads

	requests atomic.Int64
}

// Option adjusts how an App is built (tests inject a clock, a low bcrypt
// cost or a database of their own).
type Option func(*options)

type options struct {
	desk []desk.Option
	db   *store.DB
}

// WithDeskOptions passes options to desk.New.
func WithDeskOptions(opts ...desk.Option) Option {
	return func(o *options) { o.desk = append(o.desk, opts...) }
}

// WithDB uses an open database instead of opening the configured one.
func WithDB(db *store.DB) Option { return func(o *options) { o.db = db } }

// New opens and migrates the database, creates the settings row, the first
// administrator (from PARLEY_ADMIN_EMAIL/PASSWORD) and, in demo mode, the
// demo data.
func New(ctx context.Context, cfg Config, log *slog.Logger, opts ...Option) (*App, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	db := o.db
	if db == nil {
		var err error
		if db, err = store.Open(ctx, cfg.DatabaseURL, cfg.DataDir); err != nil {
			return nil, err
		}
	}
	db.SetLogger(log)
	if err := db.Migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	// The live hub is told of every local commit that appended events; on
	// PostgreSQL other instances hear of it through the NOTIFY the
	// committing transaction sends (desk.EventsChannel).
	var hub *live.Hub
	loads := graph.NewLiveLoads()
	liveCtx, stopLive := context.WithCancel(context.WithoutCancel(ctx))
	store, err := files.NewDir(cfg.FilesDir)
	if err != nil {
		db.Close()
		stopLive()
		return nil, err
	}
	deskOpts := append([]desk.Option{desk.WithLogger(log), desk.WithDialect(db.Dialect), desk.WithWriteLock(db.WriteLock()),
		desk.WithConfig(desk.Config{SessionTTL: cfg.SessionTTL, EventRetention: cfg.EventRetention, MetaAppID: cfg.MetaAppID,
			Transactions: cfg.PGTransactions}),
		desk.WithCommitViews(func() bool { return hub.Subscribers() > 0 }, loads.Viewed),
		desk.WithEventSink(func(events []*ent.Event) { loads.Committed(events); hub.Committed(events) }),
		desk.WithFiles(store), desk.WithAdapters(adapters(cfg)...)}, o.desk...)
	a := &App{Config: cfg, Log: log, DB: db, Desk: desk.New(db.Client, deskOpts...), stopLive: stopLive,
		Websockets: graph.NewWebsockets(), loads: loads}
	hubOpts := live.Options{Buffer: cfg.SubscriptionBuf, Logger: log}
	hub = live.New(a.Desk, hubOpts)
	a.Hub = hub
	if err := hub.Start(liveCtx); err != nil {
		a.Close()
		return nil, fmt.Errorf("live events: %w", err)
	}
	if db.Postgres() {
		if err := live.Listen(liveCtx, db.URL, db.SQL, hub, a.Desk, log); err != nil {
			a.Close()
			return nil, fmt.Errorf("listen for events: %w", err)
		}
	}
	if err := a.Desk.SchedulePruning(ctx); err != nil {
		a.Close()
		return nil, fmt.Errorf("schedule event pruning: %w", err)
	}
	if _, err := a.Desk.Settings(ctx); err != nil {
		a.Close()
		return nil, fmt.Errorf("settings: %w", err)
	}
	if cfg.AdminEmail != "" {
		created, err := a.Desk.EnsureAdmin(ctx, cfg.AdminEmail, cfg.AdminName, cfg.AdminPassword)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("first administrator: %w", err)
		}
		if created {
			log.Info("administrator created", "email", cfg.AdminEmail)
		}
	}
	if cfg.Demo {
		var err error
		if a.DemoCredentials, err = a.Desk.SeedDemo(ctx); err != nil {
			a.Close()
			return nil, fmt.Errorf("demo data: %w", err)
		}
	}
	return a, nil
}

// Close ends live subscriptions and releases the database.
func (a *App) Close() error {
	// Run closed the websockets already; a server that did not Run (tests
	// serving Handler themselves) closes them here, before the hub ends.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = a.Websockets.Shutdown(ctx)
	cancel()
	a.stopLive()
	return a.DB.Close()
}

// Handler is the whole HTTP surface.
func (a *App) Handler() http.Handler {
	gql := graph.NewHandler(a.Desk, graph.Options{
		Introspection:   a.Config.Introspection,
		ComplexityLimit: a.Config.ComplexityLimit,
		DepthLimit:      a.Config.DepthLimit,
		Logger:          a.Log,
		Hub:             a.Hub,
		Loads:           a.loads,
		Origins:         a.Config.CORSOrigins,
		PingInterval:    a.Config.WSPingInterval,
		PublicURL:       a.Config.PublicURL,
		Websockets:      a.Websockets,
	})
	mux := http.NewServeMux()
	mux.Handle("/graphql", limitBody(a.Config.MaxBodyBytes, graph.Authenticate(a.Desk, a.Log, gql)))
	webhooks.Register(mux, a.Desk, a.Log, a.Config.WebhookMaxBytes)
	mux.Handle("GET /files/{id}", graph.Authenticate(a.Desk, a.Log, a.serveFile(func(r *http.Request, id int) (*desk.StoredFile, error) {
		return a.Desk.OpenAttachment(r.Context(), id)
	})))
	mux.Handle("GET /files/contacts/{id}/photo", graph.Authenticate(a.Desk, a.Log, a.serveFile(func(r *http.Request, id int) (*desk.StoredFile, error) {
		return a.Desk.OpenContactPhoto(r.Context(), id)
	})))
	if a.Config.Introspection {
		mux.Handle("GET /playground", playground.Handler("Parley", "/graphql"))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := a.DB.SQL.PingContext(ctx); err != nil {
			a.Log.Warn("readiness: database unreachable", "err", err)
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": "database unreachable"})
			return
		}
		ready := map[string]any{"status": "ready"}
		if load, ok := a.Desk.Transactions(); ok {
			ready["transactions"] = load
		}
		writeJSON(w, http.StatusOK, ready)
	})
	c := cors.New(cors.Options{
		AllowedOrigins:   a.Config.CORSOrigins,
		AllowedMethods:   []string{http.MethodGet, http.MethodPost, http.MethodOptions},
		AllowedHeaders:   []string{"Authorization", "Content-Type", "Accept"},
		AllowCredentials: true,
		MaxAge:           600,
	})
	return a.logRequests(recoverPanics(a.Log, c.Handler(mux)))
}

// Run serves until ctx is cancelled, then shuts down gracefully: it stops
// accepting, lets requests in flight finish within the shutdown timeout, and
// closes the database.
func (a *App) Run(ctx context.Context, ln net.Listener) error {
	// Requests run under a context that outlives ctx, so that those in
	// flight when ctx is cancelled finish during the shutdown; it is
	// cancelled once Shutdown returns (or times out).
	reqCtx, cancelRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRequests()
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	// The scheduler runs the timers (accept and completion timeouts, waiting
	// chat releases, session expiry) on every instance; the database makes
	// each fire once.
	schedCtx, stopScheduler := context.WithCancel(context.WithoutCancel(ctx))
	schedDone := make(chan struct{})
	go func() {
		defer close(schedDone)
		_ = a.Desk.RunScheduler(schedCtx)
	}()
	defer func() {
		stopScheduler()
		<-schedDone
	}()
	a.Log.Info("parley listening", "addr", ln.Addr().String(), "database", a.DB.Dialect)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	a.Log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), a.Config.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	// Then the websockets, which Shutdown does not see (hijacked): their
	// clients heard the events of the requests that finished meanwhile.
	if werr := a.Websockets.Shutdown(sctx); werr != nil {
		a.Log.Warn("websockets not closed in time", "err", werr)
	}
	cancelRequests()
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// limitBody refuses JSON bodies over max with 413 (multipart uploads are
// bounded by the GraphQL handler's own upload limit). A body of unknown
// length (chunked) is read here up to the limit, so that an oversized one
// gets the same 413 rather than a decoding error from the GraphQL handler.
func limitBody(max int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
			tooLarge := func() {
				graph.WriteError(w, http.StatusRequestEntityTooLarge, graph.CodeRequestTooLarge,
					fmt.Sprintf("the request body is over %d bytes", max))
			}
			switch {
			case r.ContentLength > max:
				tooLarge()
				return
			case r.ContentLength < 0:
				b, err := io.ReadAll(io.LimitReader(r.Body, max+1))
				if err != nil {
					graph.WriteError(w, http.StatusBadRequest, graph.CodeBadRequest, "could not read the request body")
					return
				}
				if int64(len(b)) > max {
					tooLarge()
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(b))
			default:
				r.Body = http.MaxBytesReader(w, r.Body, max)
			}
		}
		next.ServeHTTP(w, r)
	})
}

func recoverPanics(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.Error("panic in handler", "panic", v, "path", r.URL.Path, "stack", string(debug.Stack()))
				graph.WriteError(w, http.StatusInternalServerError, desk.CodeInternal, "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection (websockets, flush).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (a *App) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := a.requests.Add(1)
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		level := slog.LevelDebug
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" {
			level = slog.LevelInfo
		}
		// A request that ended first (the client hung up, a shutdown
		// past its grace) answered no one: its handler logged why.
		if rec.status >= 500 && r.Context().Err() == nil {
			level = slog.LevelError
		}
		a.Log.Log(r.Context(), level, "http request", "id", id, "method", r.Method, "path", r.URL.Path,
			"status", rec.status, "bytes", rec.bytes, "duration_ms", float64(time.Since(start).Microseconds())/1000,
			"remote", r.RemoteAddr)
	})
}
