package graph

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/errcode"
	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/extension"
	"github.com/99designs/gqlgen/graphql/handler/lru"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/parleydesk/parley/desk"
	"github.com/parleydesk/parley/desk/live"
	"github.com/parleydesk/parley/ent"
	"github.com/parleydesk/parley/ent/message"
)

// Options shape the GraphQL endpoint.
type Options struct {
	// Introspection enables __schema and __type (and the playground in server/).
	Introspection bool
	// ComplexityLimit bounds the cost of one operation (default 1000).
	ComplexityLimit int
	// DepthLimit bounds the nesting of selections (default 12).
	DepthLimit int
	// TokenLimit bounds the number of tokens of a query document (default 10000).
	TokenLimit int
	// MaxUploadBytes bounds multipart uploads (default 32 MiB).
	MaxUploadBytes int64
	Logger         *slog.Logger
	// Hub serves subscriptions; without it subscriptions are refused.
	Hub *live.Hub
	// Loads shares the loads of live events between their subscribers; give
	// it the events of each local commit (LiveLoads.Committed) so that the
	// events of one commit share them too. Nil: a LiveLoads of its own.
	Loads *LiveLoads
	// Origins are the browser origins allowed to open a websocket (the CORS
	// allow-list); clients that send no Origin (servers, tests) are allowed.
	Origins []string
	// PingInterval is how often the server pings websocket clients (give or
	// take 10%, the first ping after half an interval to one, so that
	// clients connected together are not pinged together); one that does
	// not answer within two intervals is dropped (default 15s).
	PingInterval time.Duration
	// InitTimeout is how long a websocket may stay without connection_init
	// (default 10s).
	InitTimeout time.Duration
	// Websockets tracks the open websockets, for the server's shutdown to
	// close them (http.Server.Shutdown does not); nil: untracked.
	Websockets *Websockets
	// PublicURL is where providers reach this server (webhook registration).
	PublicURL string
}

// NewHandler builds the GraphQL server over the desk: transports, limits,
// authentication of every root field, and errors with stable codes.
func NewHandler(d *desk.Desk, opts Options) *handler.Server {
	if opts.ComplexityLimit <= 0 {
		opts.ComplexityLimit = 1000
	}
	if opts.DepthLimit <= 0 {
		opts.DepthLimit = 12
	}
	if opts.TokenLimit <= 0 {
		opts.TokenLimit = 10000
	}
	if opts.MaxUploadBytes <= 0 {
		opts.MaxUploadBytes = 32 << 20
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 15 * time.Second
	}
	if opts.Loads == nil {
		opts.Loads = NewLiveLoads()
	}
	cfg := Config{Resolvers: &Resolver{client: d.Client(), desk: d, hub: opts.Hub, publicURL: opts.PublicURL, live: opts.Loads}}
	cfg.Directives.Public = func(ctx context.Context, _ any, next graphql.Resolver) (any, error) {
		return next(ctx)
	}
	cfg.Directives.Requires = func(ctx context.Context, _ any, next graphql.Resolver, access desk.Access) (any, error) {
		if _, err := desk.Require(ctx, access); err != nil {
			return nil, err
		}
		return next(ctx)
	}
	srv := handler.New(NewExecutableSchema(cfg))
	srv.AddTransport(newWSTransport(d, opts, log))
	srv.AddTransport(transport.Options{})
	srv.AddTransport(transport.GET{})
	srv.AddTransport(transport.POST{})
	srv.AddTransport(transport.MultipartForm{MaxUploadSize: opts.MaxUploadBytes, MaxMemory: 8 << 20})
	srv.SetQueryCache(lru.New[*ast.QueryDocument](1000))
	srv.SetParserTokenLimit(opts.TokenLimit)
	if opts.Introspection {
		srv.Use(extension.Introspection{})
	}
	srv.Use(extension.FixedComplexityLimit(opts.ComplexityLimit))
	srv.Use(depthLimit{max: opts.DepthLimit})
	srv.Use(noNUL{})
	srv.AroundOperations(withSiblings)
	srv.AroundRootFields(requireAuthentication)
	srv.AroundFields(markResolverErrors)
	srv.SetRecoverFunc(func(ctx context.Context, v any) error {
		log.Error("panic in resolver", "panic", v, "stack", string(debug.Stack()))
		return &desk.Error{Code: desk.CodeInternal, Message: "internal error"}
	})
	srv.SetErrorPresenter(func(ctx context.Context, err error) *gqlerror.Error {
		return presentError(ctx, log, err)
	})
	return srv
}

// initCredential reads the bearer credential of a connection_init payload:
// {"Authorization": "Bearer …"} (any case), or {"authToken": "…"}.
func initCredential(p map[string]any) string {
	for k, v := range p {
		s, ok := v.(string)
		if !ok {
			continue
		}
		switch strings.ToLower(k) {
		case "authorization":
			if len(s) > 7 && strings.EqualFold(s[:7], "bearer ") {
				return strings.TrimSpace(s[7:])
			}
			return strings.TrimSpace(s)
		case "authtoken", "token":
			return strings.TrimSpace(s)
		}
	}
	return ""
}

// requireAuthentication refuses every root field but those marked @public
// (and introspection) to a caller without credentials.
func requireAuthentication(ctx context.Context, next graphql.RootResolver) graphql.Marshaler {
	rfc := graphql.GetRootFieldContext(ctx)
	if desk.ActorFrom(ctx) != nil || rfc == nil || isPublic(rfc.Field) {
		return next(ctx)
	}
	graphql.AddError(ctx, desk.ErrUnauthenticated)
	return graphql.Null
}

func isPublic(f graphql.CollectedField) bool {
	switch f.Name {
	case "__typename", "__schema", "__type":
		return true
	}
	return f.Definition != nil && f.Definition.Directives.ForName("public") != nil
}

// CodeBadRequest is the code of a request that is not a GraphQL request.
const CodeBadRequest desk.Code = "BAD_REQUEST"

// CodeRequestTooLarge refuses a request body over its endpoint's limit
// (PARLEY_MAX_BODY_BYTES; a webhook's delivery limit).
const CodeRequestTooLarge desk.Code = "REQUEST_TOO_LARGE"

// CodeQueryTooLarge is the code of a document over the parser's token limit.
const CodeQueryTooLarge desk.Code = "QUERY_TOO_LARGE"

// CodeIntrospectionDisabled answers __schema and __type when introspection
// is off.
const CodeIntrospectionDisabled desk.Code = "INTROSPECTION_DISABLED"

// CodeCancelled answers an operation whose request ended (the client hung
// up, or the server shut down past its grace period) while it waited to
// begin or read: nothing was changed (desk.txFunc).
const CodeCancelled desk.Code = "CANCELLED"

// resolverError marks an error returned by a resolver (as opposed to one of
// the GraphQL layer, such as a malformed argument), so that the presenter
// knows an unclassified one is internal.
type resolverError struct{ err error }

func (e resolverError) Error() string { return e.err.Error() }
func (e resolverError) Unwrap() error { return e.err }

func markResolverErrors(ctx context.Context, next graphql.Resolver) (any, error) {
	res, err := next(ctx)
	if err != nil {
		var ge *gqlerror.Error
		if !errors.As(err, &ge) {
			err = resolverError{err}
		}
	}
	return res, err
}

// presentError gives every error a stable extensions.code. Errors of the rules
// keep their message; unexpected ones are logged and reach the client as
// INTERNAL without driver or SQL text. Every other refusal is logged too, by
// code, path and field (not its message, which may quote the input).
func presentError(ctx context.Context, log *slog.Logger, err error) *gqlerror.Error {
	ge := presentedError(ctx, log, err)
	if code, _ := ge.Extensions["code"].(string); code != string(desk.CodeInternal) {
		attrs := []any{"code", code}
		if len(ge.Path) > 0 {
			attrs = append(attrs, "path", ge.Path.String())
		}
		if f, ok := ge.Extensions["field"]; ok {
			attrs = append(attrs, "field", f)
		}
		log.Info("graphql refused", attrs...)
	}
	return ge
}

// presentedError is the error as the client receives it (see presentError).
func presentedError(ctx context.Context, log *slog.Logger, err error) *gqlerror.Error {
	ge := graphql.DefaultErrorPresenter(ctx, err)
	var de *desk.Error
	var re resolverError
	switch {
	case errors.As(err, &de):
	case errors.As(err, &re) && re.err.Error() == "introspection disabled":
		// gqlgen's refusal of __schema/__type when introspection is off.
		de = desk.Fail(CodeIntrospectionDisabled, "introspection is disabled on this server (PARLEY_INTROSPECTION)")
	case errors.As(err, &re) && desk.CallerEnded(ctx, re.err):
		// The request's own end, not a failure: logged as a refusal.
		de = desk.Fail(CodeCancelled, "the request ended before the operation could run; nothing was changed")
	case errors.As(err, &re):
		de = desk.AsError(re.err)
		if de.Code == desk.CodeInternal {
			log.Error("resolver failed", "path", ge.Path.String(), "err", re.err)
		}
	case ge.Extensions["code"] != nil:
		if ge.Extensions["code"] == errcode.ParseFailed && strings.HasPrefix(ge.Message, "exceeded token limit") {
			// gqlparser reports its token limit as a parse failure; tell the
			// client the document is too large, as schema.graphql documents.
			ge.Extensions["code"] = string(CodeQueryTooLarge)
		}
		return ge // the GraphQL layer's own code (parse, validation, complexity)
	case len(ge.Path) == 0:
		// The request itself could not be read (malformed JSON, wrong method).
		de = &desk.Error{Code: CodeBadRequest, Message: ge.Message}
	default:
		// An argument the GraphQL layer could not coerce (e.g. a malformed ID).
		de = &desk.Error{Code: desk.CodeValidation, Message: ge.Message}
	}
	ge.Message = de.Message
	if ge.Extensions == nil {
		ge.Extensions = map[string]any{}
	}
	ge.Extensions["code"] = string(de.Code)
	if de.Field != "" {
		ge.Extensions["field"] = de.Field
	}
	return ge
}

// depthLimit refuses operations nested deeper than max (introspection is
// not counted: its shape is fixed).
type depthLimit struct{ max int }

var _ interface {
	graphql.HandlerExtension
	graphql.OperationContextMutator
} = depthLimit{}

func (depthLimit) ExtensionName() string                   { return "DepthLimit" }
func (depthLimit) Validate(graphql.ExecutableSchema) error { return nil }
func (l depthLimit) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	op := oc.Doc.Operations.ForName(oc.OperationName)
	if op == nil {
		return nil
	}
	if d := depth(op.SelectionSet, 0, l.max); d > l.max {
		err := gqlerror.Errorf("operation is nested deeper than the limit of %d", l.max)
		errcode.Set(err, "DEPTH_LIMIT_EXCEEDED")
		return err
	}
	return nil
}

// depth returns the nesting depth of a selection set, stopping early once it
// is past max (so that fragment cycles, already refused by validation, or
// huge documents cost little).
func depth(set ast.SelectionSet, level, max int) int {
	if level > max {
		return level
	}
	deepest := level
	for _, s := range set {
		var d int
		switch s := s.(type) {
		case *ast.Field:
			if len(s.Name) > 1 && s.Name[:2] == "__" {
				continue
			}
			if len(s.SelectionSet) == 0 {
				d = level + 1
			} else {
				d = depth(s.SelectionSet, level+1, max)
			}
		case *ast.InlineFragment:
			d = depth(s.SelectionSet, level, max)
		case *ast.FragmentSpread:
			if s.Definition != nil {
				d = depth(s.Definition.SelectionSet, level, max)
			}
		}
		if d > deepest {
			deepest = d
		}
	}
	return deepest
}

// maxPage is the largest page a connection returns at once.
const maxPage = 500

func checkPage(first, last *int) error {
	if (first != nil && (*first < 0 || *first > maxPage)) || (last != nil && (*last < 0 || *last > maxPage)) {
		return desk.Fail(desk.CodeValidation, "first and last must be between 0 and %d", maxPage)
	}
	return nil
}

// authorizeNode hides from node(id:) what the caller may not list.
func authorizeNode(ctx context.Context, d *desk.Desk, n ent.Noder) error {
	switch n := n.(type) {
	case *ent.Message:
		// R24: a message is read through its chat's rules. The chat is found
		// by the message's id: n holds only the columns the query selected
		// (field collection), so n.ChatID may be unset.
		c, err := d.Client().Message.Query().Where(message.ID(n.ID)).QueryChat().Only(ctx)
		if err != nil {
			return err
		}
		if ok, err := d.CanReadMessages(ctx, c); err != nil {
			return err
		} else if !ok {
			return desk.Fail(desk.CodeNotFound, "not found")
		}
	case *ent.ApiKey:
		if _, err := desk.Require(ctx, desk.AccessAdmin); err != nil {
			return err
		}
	}
	return nil
}

type requestMetaKey struct{}

// WithRequestMeta keeps the user agent and address of an HTTP request for
// the session a login opens.
func WithRequestMeta(r *http.Request) context.Context {
	return context.WithValue(r.Context(), requestMetaKey{}, desk.SessionMeta{
		UserAgent: r.UserAgent(), RemoteAddr: r.RemoteAddr,
	})
}

func sessionMetaFrom(ctx context.Context) desk.SessionMeta {
	m, _ := ctx.Value(requestMetaKey{}).(desk.SessionMeta)
	return m
}

// Authenticate is HTTP middleware: it resolves the bearer credential of a
// request into an actor in the request's context. Without a valid one the
// request goes on unauthenticated and every non-public field refuses it.
func Authenticate(d *desk.Desk, log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := WithRequestMeta(r)
		if cred := bearer(r); cred != "" {
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			a, err := d.Authenticate(actx, cred)
			cancel()
			switch {
			case err == nil:
				ctx = desk.WithActor(ctx, a)
			case desk.CallerEnded(ctx, err):
				// The client hung up (or the server shut down) while its
				// credential was checked: no one reads an answer, and
				// answering as if unauthenticated would be untrue.
				log.Info("authenticate: the request ended first", "err", err)
				WriteError(w, http.StatusServiceUnavailable, CodeCancelled, "the request ended before it was authenticated")
				return
			case desk.AsError(err).Code != desk.CodeUnauthenticated:
				log.Error("authenticate", "err", err)
			}
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// WriteError answers an HTTP request with a GraphQL-shaped error
// ({"errors":[{"message","extensions":{"code"}}]}) outside the executor: for
// the endpoints beside /graphql and refusals before an operation runs.
func WriteError(w http.ResponseWriter, status int, code desk.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]any{{
		"message": msg, "extensions": map[string]string{"code": string(code)},
	}}})
}

func bearer(r *http.Request) string {
	const prefix = "Bearer "
	h := r.Header.Get("Authorization")
	if len(h) > len(prefix) && (h[:len(prefix)] == prefix || h[:len(prefix)] == "bearer ") {
		return h[len(prefix):]
	}
	return ""
}
