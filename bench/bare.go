package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/parleydesk/parley/desk/store"
)

// The machine's bare websocket limit: a child process (this program
// re-executed) that only holds websocket connections on coder/websocket, one
// reading goroutine each, and writes a frame to one of them on request. Its
// memory per connection and its push latency are what a subscription would
// cost with no GraphQL, no authentication and no event log.
//
// Given a database (bareDBEnv), it is also the bare pipeline the webhook →
// panel figures stand beside: POST /hook decodes a Telegram-shaped update,
// stores its text in one transaction (BEGIN, INSERT, COMMIT, as the bare
// insert+commit does) and writes a panel-shaped frame to every connection
// before it answers: what a webhook reaching live panels costs on this
// machine with no routing, no event log, no GraphQL and no authentication.

const (
	bareEnv = "PARLEY_BENCH_BARE_WS"
	// bareDBEnv is "<driver> <data source>" (postgres or sqlite).
	bareDBEnv = "PARLEY_BENCH_BARE_DB"
)

// runBareServer is the child's main.
func runBareServer() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var mu sync.Mutex
	conns := map[int]*websocket.Conn{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(r.URL.Query().Get("i"))
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		mu.Lock()
		conns[i] = c
		mu.Unlock()
		// Registered: from now on every delivery reaches this connection.
		// The client waits for this frame before it counts on that
		// (connectBare), as a panel waits for its subscription to be live.
		if err := c.Write(r.Context(), websocket.MessageText, []byte(bareReady)); err != nil {
			return
		}
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				break
			}
		}
		mu.Lock()
		delete(conns, i)
		mu.Unlock()
	})
	if spec := os.Getenv(bareDBEnv); spec != "" {
		db, err := openBareDB(spec)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		mux.HandleFunc("POST /hook", func(w http.ResponseWriter, r *http.Request) {
			var u struct {
				UpdateID int64 `json:"update_id"`
				Message  struct {
					Text string `json:"text"`
				} `json:"message"`
			}
			if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&u); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			tx, err := db.BeginTx(r.Context(), nil)
			if err == nil {
				if _, err = tx.ExecContext(r.Context(), db.insert, u.UpdateID, u.Message.Text); err != nil {
					_ = tx.Rollback()
				} else {
					err = tx.Commit()
				}
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			frame, _ := json.Marshal(map[string]any{"type": "next", "id": "1", "payload": map[string]any{"data": map[string]any{
				"panel": map[string]any{"id": strconv.FormatInt(u.UpdateID, 10), "type": "MESSAGE_ADDED",
					"message": map[string]any{"text": u.Message.Text}}}}})
			mu.Lock()
			all := make([]*websocket.Conn, 0, len(conns))
			for _, c := range conns {
				all = append(all, c)
			}
			mu.Unlock()
			for _, c := range all {
				if err := c.Write(r.Context(), websocket.MessageText, frame); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
			}
			w.WriteHeader(http.StatusOK)
		})
	}
	mux.HandleFunc("POST /push", func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(r.URL.Query().Get("i"))
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		c := conns[i]
		mu.Unlock()
		if c == nil {
			http.Error(w, "no such connection", http.StatusNotFound)
			return
		}
		if err := c.Write(r.Context(), websocket.MessageText, body); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	fmt.Println("ADDR " + ln.Addr().String())
	go func() {
		// The parent holds standard input: its end ends the child.
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	_ = http.Serve(ln, mux)
}

// bareDB is the bare pipeline's database, with its statement.
type bareDB struct {
	*sql.DB
	insert string
}

// openBareDB opens the database of a bareDBEnv spec and creates the table
// the bare insert+commit writes (the same columns and index).
func openBareDB(spec string) (*bareDB, error) {
	kind, dsn, _ := strings.Cut(spec, " ")
	db, err := sql.Open(kind, dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	ins, err := createInsertTable(context.Background(), db, kind, "bench_pipeline")
	if err != nil {
		db.Close()
		return nil, err
	}
	return &bareDB{DB: db, insert: ins}, nil
}

// bareServer is the running child.
type bareServer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	base  string
}

func startBareServer(extraEnv ...string) (*bareServer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), bareEnv+"=1"), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ADDR ") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("bare websocket server did not start: %q %v", line, err)
	}
	return &bareServer{cmd: cmd, stdin: stdin, base: "http://" + strings.TrimSpace(strings.TrimPrefix(line, "ADDR "))}, nil
}

func (b *bareServer) pid() int { return b.cmd.Process.Pid }

func (b *bareServer) stop() {
	_ = b.stdin.Close()
	done := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-done
	}
}

// bareConn is a client connection to the bare server.
type bareConn struct {
	conn *websocket.Conn
	done chan struct{}
}

// bareReady is the bare server's first frame on a websocket: the
// connection is registered and receives every delivery from then on.
const bareReady = `{"type":"connection_ack"}`

// connectBare opens connections [from, to) to the bare server, each once
// the server has registered it (bareReady); every later frame read is
// handed to sink with the time it was read.
func connectBare(ctx context.Context, base string, from, to, par int, sink func(time.Time, []byte)) ([]*bareConn, error) {
	out := make([]*bareConn, to-from)
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= to || ctx.Err() != nil {
					return
				}
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				c, _, err := websocket.Dial(dctx, "ws"+strings.TrimPrefix(base, "http")+"/ws?i="+strconv.Itoa(i), nil)
				if err == nil {
					// The server has registered the connection once it says so.
					var b []byte
					if _, b, err = c.Read(dctx); err == nil && string(b) != bareReady {
						err = fmt.Errorf("bare websocket %d: first frame %q, want %q", i, b, bareReady)
					}
					if err != nil {
						_ = c.CloseNow()
					}
				}
				cancel()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				bc := &bareConn{conn: c, done: make(chan struct{})}
				go func() {
					defer close(bc.done)
					for {
						_, b, err := c.Read(context.Background())
						if err != nil {
							return
						}
						if sink != nil {
							sink(time.Now(), b)
						}
					}
				}()
				out[i-from] = bc
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		closeBare(out)
		return nil, firstErr
	}
	return out, nil
}

func closeBare(cs []*bareConn) {
	for _, c := range cs {
		if c != nil {
			_ = c.conn.CloseNow()
			<-c.done
		}
	}
}

// pipeSource sends Telegram-shaped updates, each from a contact of its own,
// to the bare pipeline.
type pipeSource struct{ base string }

func (p pipeSource) next(*rand.Rand) delivery {
	seq := msgSeq.Add(1)
	c := contactRef{n: contactSeq.Add(1)}
	req, _ := http.NewRequest(http.MethodPost, p.base+"/hook", strings.NewReader(telegramUpdate(c, seq)))
	req.Header.Set("Content-Type", "application/json")
	return delivery{seq: seq, contact: c, req: req}
}

func (pipeSource) acked(delivery) {}

// pipeLimit is the bare pipeline's webhook → panel latency at c=1 and at
// c=8 at the rate of the webhook → panel scenario's c=8 phase.
type pipeLimit struct {
	c1, c8 samples
}

// barePipeline measures the bare pipeline on a database of e's kind of its
// own, with k panel connections, at c=1 and (when rate8 > 0) at c=8 paced
// at rate8, each for half the phase duration, and reports it.
func (r *runner) barePipeline(ctx context.Context, e *env, rate8 float64) (pipeLimit, error) {
	var lim pipeLimit
	var d *database
	var spec string
	if e.kind == dbPostgres {
		var err error
		if d, err = newPostgres(ctx, r.opt.pgURL, "pipe"); err != nil {
			return lim, err
		}
		spec = "postgres " + d.url
	} else {
		d = newSQLite(r.tmp, "pipeline")
		spec = "sqlite " + store.SQLiteDSN(d.sqlitePath)
	}
	if !r.opt.keep {
		defer d.drop()
	}
	bare, err := startBareServer(bareDBEnv + "=" + spec)
	if err != nil {
		return lim, err
	}
	defer bare.stop()
	trk := newTracker()
	conns, err := connectBare(ctx, bare.base, 0, r.opt.operators, r.opt.operators, func(at time.Time, b []byte) {
		var m wsMessage
		var p nextPayload
		if json.Unmarshal(b, &m) == nil && m.Type == "next" && json.Unmarshal(m.Payload, &p) == nil && p.Data.Panel != nil {
			trk.receive(at, p.Data.Panel)
		}
	})
	if err != nil {
		return lim, err
	}
	defer closeBare(conns)
	label := dbLabel(e.kind)
	// out receives a phase's receipts (nil: not reported).
	type phase struct {
		name string
		spec loadSpec
		out  *samples
	}
	phases := []phase{
		{"warm-up", loadSpec{conc: 1, dur: 10 * time.Second, maxN: 30}, nil},
		{"c=1", loadSpec{conc: 1, dur: r.opt.duration / 2}, &lim.c1},
	}
	if rate8 > 0 {
		phases = append(phases, phase{fmt.Sprintf("c=8 at %s/s", num(rate8)), loadSpec{conc: 8, rate: rate8, dur: r.opt.duration / 2}, &lim.c8})
	}
	for _, p := range phases {
		ph := &deliveryPhase{}
		res := drive(ctx, e.web, pipeSource{base: bare.base}, p.spec, trackHooks(trk, r.opt.operators, ph))
		got := trk.wait(ph, 10*time.Second)
		if res.acked == 0 || got.got < got.expected {
			return lim, fmt.Errorf("bare pipeline %s: %d acknowledged, %d of %d frames received (%s)", p.name, res.acked, got.got, got.expected, res.errSummary())
		}
		if p.out == nil {
			continue
		}
		*p.out = got.receipts
		r.rep.add(row{DB: label, Figure: "Bare pipeline " + p.name + ": webhook → panel p50 / p99",
			Value: p50p99(got.receipts) + fmt.Sprintf(" (decode, BEGIN/INSERT/COMMIT, a frame to each of %d websockets; ack p50 / p99 %s; %s)",
				r.opt.operators, p50p99(res.ack), delivered(got)),
			Limit: "(the limit)"})
	}
	return lim, nil
}
