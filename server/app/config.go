package app

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config is Parley's configuration, read from the environment. Every
// variable is documented in the README's configuration table.
type Config struct {
	Addr            string        // PARLEY_ADDR
	DatabaseURL     string        // DATABASE_URL
	DataDir         string        // PARLEY_DATA_DIR
	CORSOrigins     []string      // PARLEY_CORS_ORIGINS
	Introspection   bool          // PARLEY_INTROSPECTION
	SessionTTL      time.Duration // PARLEY_SESSION_TTL
	AdminEmail      string        // PARLEY_ADMIN_EMAIL
	AdminPassword   string        // PARLEY_ADMIN_PASSWORD
	AdminName       string        // PARLEY_ADMIN_NAME
	Demo            bool          // PARLEY_DEMO
	LogLevel        slog.Level    // PARLEY_LOG_LEVEL
	LogFormat       string        // PARLEY_LOG_FORMAT
	MaxBodyBytes    int64         // PARLEY_MAX_BODY_BYTES
	ComplexityLimit int           // PARLEY_COMPLEXITY_LIMIT
	DepthLimit      int           // PARLEY_DEPTH_LIMIT
	ShutdownTimeout time.Duration // PARLEY_SHUTDOWN_TIMEOUT
	EventRetention  time.Duration // PARLEY_EVENT_RETENTION
	WSPingInterval  time.Duration // PARLEY_WS_PING_INTERVAL
	SubscriptionBuf int           // PARLEY_SUBSCRIPTION_BUFFER
	PublicURL       string        // PARLEY_PUBLIC_URL
	FilesDir        string        // PARLEY_FILES_DIR
	TelegramAPIURL  string        // PARLEY_TELEGRAM_API_URL
	GraphAPIURL     string        // PARLEY_GRAPH_API_URL
	GraphAPIVersion string        // PARLEY_GRAPH_API_VERSION
	MetaAppID       string        // PARLEY_META_APP_ID
	WebhookMaxBytes int64         // PARLEY_WEBHOOK_MAX_BYTES
	GCHeapFloor     int64         // PARLEY_GC_HEAP_FLOOR_BYTES (0: off)
	PGTransactions  int           // PARLEY_PG_TRANSACTIONS (0: the desk's default)
}

// LoadConfig reads the configuration from getenv (os.Getenv in production).
func LoadConfig(getenv func(string) string) (Config, error) {
	c := Config{
		Addr:            envOr(getenv, "PARLEY_ADDR", ":8080"),
		DatabaseURL:     getenv("DATABASE_URL"),
		DataDir:         envOr(getenv, "PARLEY_DATA_DIR", "data"),
		AdminEmail:      getenv("PARLEY_ADMIN_EMAIL"),
		AdminPassword:   getenv("PARLEY_ADMIN_PASSWORD"),
		AdminName:       envOr(getenv, "PARLEY_ADMIN_NAME", "Administrator"),
		LogFormat:       envOr(getenv, "PARLEY_LOG_FORMAT", "text"),
		SessionTTL:      12 * time.Hour,
		MaxBodyBytes:    1 << 20,
		ComplexityLimit: 1000,
		DepthLimit:      12,
		ShutdownTimeout: 15 * time.Second,
		EventRetention:  7 * 24 * time.Hour,
		WSPingInterval:  15 * time.Second,
		SubscriptionBuf: 256,
		PublicURL:       strings.TrimRight(getenv("PARLEY_PUBLIC_URL"), "/"),
		FilesDir:        getenv("PARLEY_FILES_DIR"),
		TelegramAPIURL:  envOr(getenv, "PARLEY_TELEGRAM_API_URL", "https://api.telegram.org"),
		GraphAPIURL:     envOr(getenv, "PARLEY_GRAPH_API_URL", "https://graph.facebook.com"),
		GraphAPIVersion: envOr(getenv, "PARLEY_GRAPH_API_VERSION", "v25.0"),
		MetaAppID:       getenv("PARLEY_META_APP_ID"),
		WebhookMaxBytes: 4 << 20,
		GCHeapFloor:     128 << 20,
	}
	for _, o := range strings.Split(getenv("PARLEY_CORS_ORIGINS"), ",") {
		if o = strings.TrimSpace(o); o != "" {
			if o == "*" {
				return c, fmt.Errorf("PARLEY_CORS_ORIGINS: list origins explicitly; * is not allowed with credentials")
			}
			c.CORSOrigins = append(c.CORSOrigins, o)
		}
	}
	var errs []error
	boolean := func(name string, dst *bool) {
		if v := getenv(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a boolean", name, v))
			}
			*dst = b
		}
	}
	duration := func(name string, dst *time.Duration) {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				errs = append(errs, fmt.Errorf("%s: %q is not a positive duration (e.g. 12h)", name, v))
			}
			*dst = d
		}
	}
	// whole reads a whole number of at least least (0 or 1) into dst.
	whole := func(name string, least int, dst *int) {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < least {
				what := "a positive integer"
				if least == 0 {
					what = "a non-negative integer"
				}
				errs = append(errs, fmt.Errorf("%s: %q is not %s", name, v, what))
			}
			*dst = n
		}
	}
	integer := func(name string, dst *int) { whole(name, 1, dst) }
	boolean("PARLEY_INTROSPECTION", &c.Introspection)
	boolean("PARLEY_DEMO", &c.Demo)
	duration("PARLEY_SESSION_TTL", &c.SessionTTL)
	duration("PARLEY_SHUTDOWN_TIMEOUT", &c.ShutdownTimeout)
	duration("PARLEY_EVENT_RETENTION", &c.EventRetention)
	duration("PARLEY_WS_PING_INTERVAL", &c.WSPingInterval)
	integer("PARLEY_SUBSCRIPTION_BUFFER", &c.SubscriptionBuf)
	integer("PARLEY_COMPLEXITY_LIMIT", &c.ComplexityLimit)
	integer("PARLEY_DEPTH_LIMIT", &c.DepthLimit)
	integer("PARLEY_PG_TRANSACTIONS", &c.PGTransactions)
	var maxBody, webhookMax int
	integer("PARLEY_MAX_BODY_BYTES", &maxBody)
	if maxBody > 0 {
		c.MaxBodyBytes = int64(maxBody)
	}
	integer("PARLEY_WEBHOOK_MAX_BYTES", &webhookMax)
	if webhookMax > 0 {
		c.WebhookMaxBytes = int64(webhookMax)
	}
	floor := int(c.GCHeapFloor)
	whole("PARLEY_GC_HEAP_FLOOR_BYTES", 0, &floor) // 0 turns the floor off
	c.GCHeapFloor = int64(floor)
	if c.FilesDir == "" {
		c.FilesDir = filepath.Join(c.DataDir, "files")
	}
	if v := getenv("PARLEY_LOG_LEVEL"); v != "" {
		if err := c.LogLevel.UnmarshalText([]byte(v)); err != nil {
			errs = append(errs, fmt.Errorf("PARLEY_LOG_LEVEL: %q is not debug, info, warn or error", v))
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("PARLEY_LOG_FORMAT: %q is not text or json", c.LogFormat))
	}
	if (c.AdminEmail == "") != (c.AdminPassword == "") {
		errs = append(errs, fmt.Errorf("PARLEY_ADMIN_EMAIL and PARLEY_ADMIN_PASSWORD go together"))
	}
	if len(errs) > 0 {
		return c, errs[0]
	}
	return c, nil
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

// Logger builds the process logger.
func (c Config) Logger() *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
