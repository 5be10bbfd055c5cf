package upstream_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"strings"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

func ExampleClient_Token() {
	fake := fakerdp.New(fakerdp.Config{})
	srv := httptest.NewServer(fake)
	defer srv.Close()

	c, err := upstream.New(upstream.Config{
		BaseURL:      srv.URL,
		ClientID:     fakerdp.ClientID,
		ClientSecret: fakerdp.ClientSecret,
	})
	if err != nil {
		log.Fatal(err)
	}
	tok, err := c.Token(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.HasPrefix(tok.Value, fakerdp.LivenessPrefix), tok.Lifetime)
	fmt.Println(fake.Stats().AuthCalls.V2, fake.Stats().LivenessOK)
	// Output:
	// true 1h0m0s
	// 1 1
}
