// Command latencyproxy stands between the replicas and Redis in the
// integration suite and makes Redis answer slowly on request: a TCP proxy
// that holds back what the target sends by a delay the test sets through an
// HTTP control API (see Proxy.Handler). The kernels the suite runs on lack
// netem, so the delay is injected here.
//
//	LATENCYPROXY_LISTEN   address to accept clients on       [:6379]
//	LATENCYPROXY_TARGET   host:port to forward them to       [redis:6379]
//	LATENCYPROXY_CONTROL  address of the control API         [:8474]
//
// It starts with the latency off. scripts/build-images.sh builds it into the
// image tokenkeeper/latencyproxy:dev.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	err := run(ctx, os.Getenv, log)
	stop()
	if err != nil {
		log.Error("latencyproxy stopped", "error", err)
		os.Exit(1)
	}
}

// run proxies and serves the control API until ctx ends.
func run(ctx context.Context, getenv func(string) string, log *slog.Logger) error {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	listen, target, control := env("LATENCYPROXY_LISTEN", ":6379"), env("LATENCYPROXY_TARGET", "redis:6379"), env("LATENCYPROXY_CONTROL", ":8474")
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("LATENCYPROXY_LISTEN: %w", err)
	}
	cln, err := net.Listen("tcp", control)
	if err != nil {
		ln.Close()
		return fmt.Errorf("LATENCYPROXY_CONTROL: %w", err)
	}
	p := New(target, log)
	srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 5 * time.Second}
	log.Info("latencyproxy listening", "listen", ln.Addr().String(), "target", target, "control", cln.Addr().String())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() {
		defer cancel()
		errc <- p.Run(ctx, ln)
	}()
	go func() {
		defer cancel()
		if err := srv.Serve(cln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("control API: %w", err)
			return
		}
		errc <- nil
	}()
	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	return errors.Join(<-errc, <-errc)
}
