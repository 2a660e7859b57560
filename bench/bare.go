package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
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
)

// The machine's bare websocket limit: a child process (this program
// re-executed) that only holds websocket connections on coder/websocket, one
// reading goroutine each, and writes a frame to one of them on request. Its
// memory per connection and its push latency are what a subscription would
// cost with no GraphQL, no authentication and no event log.

const bareEnv = "PARLEY_BENCH_BARE_WS"

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
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				break
			}
		}
		mu.Lock()
		delete(conns, i)
		mu.Unlock()
	})
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

// bareServer is the running child.
type bareServer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	base  string
}

func startBareServer() (*bareServer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), bareEnv+"=1")
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

// connectBare opens connections [from, to) to the bare server; every frame
// read is handed to sink with the time it was read.
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
