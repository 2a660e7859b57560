package app_test

import (
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/parleydesk/parley/server/app"
)

func TestConfig_Defaults(t *testing.T) {
	t.Parallel()
	c, err := app.LoadConfig(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	want := app.Config{
		Addr: ":8080", DataDir: "data", AdminName: "Administrator", LogFormat: "text", LogLevel: slog.LevelInfo,
		SessionTTL: 12 * time.Hour, MaxBodyBytes: 1 << 20, ComplexityLimit: 1000, DepthLimit: 12,
		ShutdownTimeout: 15 * time.Second, EventRetention: 7 * 24 * time.Hour, WSPingInterval: 15 * time.Second,
		SubscriptionBuf: 256, FilesDir: "data/files", TelegramAPIURL: "https://api.telegram.org",
		GraphAPIURL: "https://graph.facebook.com", GraphAPIVersion: "v25.0", WebhookMaxBytes: 4 << 20,
		GCHeapFloor: 128 << 20,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestConfig_ReadsEveryVariable(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"PARLEY_ADDR":                "127.0.0.1:9000",
		"DATABASE_URL":               "postgres://u@db/parley",
		"PARLEY_DATA_DIR":            "/var/lib/parley",
		"PARLEY_CORS_ORIGINS":        " https://a.example , ,https://b.example",
		"PARLEY_INTROSPECTION":       "true",
		"PARLEY_SESSION_TTL":         "30m",
		"PARLEY_ADMIN_EMAIL":         "root@example.com",
		"PARLEY_ADMIN_PASSWORD":      "long-password",
		"PARLEY_ADMIN_NAME":          "Root",
		"PARLEY_DEMO":                "1",
		"PARLEY_LOG_LEVEL":           "debug",
		"PARLEY_LOG_FORMAT":          "json",
		"PARLEY_MAX_BODY_BYTES":      "2048",
		"PARLEY_COMPLEXITY_LIMIT":    "50",
		"PARLEY_DEPTH_LIMIT":         "5",
		"PARLEY_SHUTDOWN_TIMEOUT":    "3s",
		"PARLEY_EVENT_RETENTION":     "48h",
		"PARLEY_WS_PING_INTERVAL":    "5s",
		"PARLEY_SUBSCRIPTION_BUFFER": "64",
		"PARLEY_PUBLIC_URL":          "https://desk.example/",
		"PARLEY_FILES_DIR":           "/srv/files",
		"PARLEY_TELEGRAM_API_URL":    "http://tg.fake",
		"PARLEY_GRAPH_API_URL":       "http://graph.fake",
		"PARLEY_GRAPH_API_VERSION":   "v99.0",
		"PARLEY_META_APP_ID":         "1234",
		"PARLEY_WEBHOOK_MAX_BYTES":   "1000",
		"PARLEY_GC_HEAP_FLOOR_BYTES": "0",
		"PARLEY_PG_TRANSACTIONS":     "3",
	}
	c, err := app.LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	want := app.Config{
		Addr: "127.0.0.1:9000", DatabaseURL: "postgres://u@db/parley", DataDir: "/var/lib/parley",
		CORSOrigins: []string{"https://a.example", "https://b.example"}, Introspection: true,
		SessionTTL: 30 * time.Minute, AdminEmail: "root@example.com", AdminPassword: "long-password", AdminName: "Root",
		Demo: true, LogLevel: slog.LevelDebug, LogFormat: "json", MaxBodyBytes: 2048, ComplexityLimit: 50,
		DepthLimit: 5, ShutdownTimeout: 3 * time.Second, EventRetention: 48 * time.Hour, WSPingInterval: 5 * time.Second,
		SubscriptionBuf: 64, PublicURL: "https://desk.example", FilesDir: "/srv/files", TelegramAPIURL: "http://tg.fake",
		GraphAPIURL: "http://graph.fake", GraphAPIVersion: "v99.0", MetaAppID: "1234", WebhookMaxBytes: 1000,
		GCHeapFloor: 0, PGTransactions: 3,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("config:\n got %+v\nwant %+v", c, want)
	}
}

func TestConfig_RefusesInvalidValues(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, key, value string
		// mention is what the error must name so that an operator can fix it.
		mention string
	}{
		{"boolean", "PARLEY_INTROSPECTION", "maybe", "PARLEY_INTROSPECTION"},
		{"demo boolean", "PARLEY_DEMO", "yes please", "PARLEY_DEMO"},
		{"duration", "PARLEY_SESSION_TTL", "12", "PARLEY_SESSION_TTL"},
		{"negative duration", "PARLEY_SESSION_TTL", "-1h", "PARLEY_SESSION_TTL"},
		{"zero duration", "PARLEY_SHUTDOWN_TIMEOUT", "0s", "PARLEY_SHUTDOWN_TIMEOUT"},
		{"integer", "PARLEY_COMPLEXITY_LIMIT", "lots", "PARLEY_COMPLEXITY_LIMIT"},
		{"zero integer", "PARLEY_DEPTH_LIMIT", "0", "PARLEY_DEPTH_LIMIT"},
		{"negative body limit", "PARLEY_MAX_BODY_BYTES", "-5", "PARLEY_MAX_BODY_BYTES"},
		{"negative heap floor", "PARLEY_GC_HEAP_FLOOR_BYTES", "-1", "PARLEY_GC_HEAP_FLOOR_BYTES"},
		{"heap floor with a unit", "PARLEY_GC_HEAP_FLOOR_BYTES", "128MB", "PARLEY_GC_HEAP_FLOOR_BYTES"},
		{"zero transactions", "PARLEY_PG_TRANSACTIONS", "0", "PARLEY_PG_TRANSACTIONS"},
		{"log level", "PARLEY_LOG_LEVEL", "loud", "PARLEY_LOG_LEVEL"},
		{"log format", "PARLEY_LOG_FORMAT", "xml", "PARLEY_LOG_FORMAT"},
		{"wildcard origin with credentials", "PARLEY_CORS_ORIGINS", "https://a.example,*", "PARLEY_CORS_ORIGINS"},
		{"admin email without password", "PARLEY_ADMIN_EMAIL", "root@example.com", "PARLEY_ADMIN_PASSWORD"},
		{"admin password without email", "PARLEY_ADMIN_PASSWORD", "long-password", "PARLEY_ADMIN_EMAIL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := app.LoadConfig(func(k string) string {
				if k == c.key {
					return c.value
				}
				return ""
			})
			if err == nil {
				t.Fatalf("%s=%q accepted", c.key, c.value)
			}
			if !strings.Contains(err.Error(), c.mention) {
				t.Errorf("error %q does not name %s", err, c.mention)
			}
		})
	}
}

func TestConfig_LoggerHonoursLevelAndFormat(t *testing.T) {
	t.Parallel()
	c, err := app.LoadConfig(func(k string) string {
		return map[string]string{"PARLEY_LOG_LEVEL": "warn"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	l := c.Logger()
	if l.Enabled(t.Context(), slog.LevelInfo) || !l.Enabled(t.Context(), slog.LevelWarn) {
		t.Error("the logger ignores PARLEY_LOG_LEVEL")
	}
}
