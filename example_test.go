package tokenkeeper_test

import (
	"context"
	"log"
	"net/http"
	"os/signal"
	"syscall"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// A replica embedded in a plain net/http server: the API's own replicas
// are the fleet, and /token/ serves the shared token to the app.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	// TuneRedis sets the timeouts and spare connections the default lock
	// TTL needs (go-redis's own fit it too: New checks them).
	opt := &redis.Options{Addr: "redis:6379"}
	tokenkeeper.TuneRedis(opt, 0)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	k, err := tokenkeeper.New(tokenkeeper.Config{
		Redis: rdb,
		RDP:   &upstream.Config{ClientID: "service-account", ClientSecret: "secret from a file"},
		HTTP:  tokenkeeper.HTTPConfig{ReaderKeys: []string{"app-key"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	go k.Run(ctx)
	mux := http.NewServeMux()
	mux.Handle("/token/", http.StripPrefix("/token", k.Handler()))
	log.Fatal(http.ListenAndServe(":8080", mux))
}

// In an echo app, the Keeper's handler is mounted under a group, and a
// route of the app reads the token in process.
func Example_echo() {
	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"})
	k, err := tokenkeeper.New(tokenkeeper.Config{
		Redis: rdb,
		RDP:   &upstream.Config{ClientID: "service-account", ClientSecret: "secret from a file"},
		HTTP:  tokenkeeper.HTTPConfig{ReaderKeys: []string{"app-key"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	go k.Run(context.Background())
	e := echo.New()
	e.Any("/tokenkeeper/*", echo.WrapHandler(http.StripPrefix("/tokenkeeper", k.Handler())))
	e.GET("/session", func(c echo.Context) error {
		t, err := k.Token(c.Request().Context(), tokenkeeper.Name)
		if err != nil {
			return echo.NewHTTPError(http.StatusServiceUnavailable, "no token yet")
		}
		return c.JSON(http.StatusOK, map[string]string{"liveness_token": t.Value})
	})
	log.Fatal(e.Start(":8080"))
}
