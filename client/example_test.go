package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/client"
)

func Example() {
	// A stand-in for a replica of the service.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"name":"liveness","token":"abc123","expires_at":"2030-01-01T00:00:00Z","expires_in":3600}`)
	}))
	defer srv.Close()

	c, err := client.New(client.Config{
		Endpoints: []string{srv.URL}, // list every replica, or the load balancer
		Key:       "reader-key-5b9e2c7f1a3d8e4b6c0f",
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := c.Token(ctx, "liveness")
	switch {
	case errors.Is(err, client.ErrUnauthorized):
		log.Fatal("the key was refused: ", err)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println(tok.Name, tok.Fingerprint(), tok.ExpiresIn(time.Now()) > 59*time.Minute)
	// Output: liveness sha256:6ca13d52ca70 true
}
