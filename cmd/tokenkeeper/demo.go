package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// newDemoKey returns a new admin key for one run of the demo: 32 random
// bytes in base64url, strong as every admin key must be.
func newDemoKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return "demo-" + base64.RawURLEncoding.EncodeToString(b[:])
}

// runDemo runs one replica with everything in-process: a Redis-protocol
// server (miniredis), the fake RDP issuing two-minute liveness tokens and
// a second fake upstream issuing three-minute OAuth2 tokens (partner), so
// a newcomer sees a catalog of two tokens, their countdowns and refreshes
// within minutes, and can break one upstream while the other keeps going.
func runDemo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(stdout, "usage: tokenkeeper demo  (honours TOKENKEEPER_LISTEN, default :8080)")
		return nil
	}
	if len(args) > 0 {
		return fmt.Errorf("demo takes no arguments, got %q", args[0])
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	demoAdminKey := newDemoKey()

	mr := miniredis.NewMiniRedis()
	mr.ClockTTL(true)
	if err := mr.Start(); err != nil {
		return fmt.Errorf("demo: in-process Redis: %w", err)
	}
	defer mr.Close()

	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: 2 * time.Minute}})
	fakeLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fakeCtx, stopFake := context.WithCancel(context.Background())
	defer stopFake()
	go serveHTTP(fakeCtx, fakeLn, fake)

	idp := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: 3 * time.Minute}})
	idpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go serveHTTP(fakeCtx, idpLn, idp)
	idpURL := "http://" + idpLn.Addr().String()

	listen := getenv("TOKENKEEPER_LISTEN")
	if listen == "" {
		listen = ":8080"
	}
	cfg := Config{
		Listen:         listen,
		Redis:          &redis.Options{Addr: mr.Addr()},
		AllowAnonymous: true,
		AdminKeys:      []string{demoAdminKey},
		Instance:       "demo-1",
		RefreshBefore:  45 * time.Second,
		LockTTL:        5 * time.Second,
		TokenLifetime:  2 * time.Minute,
		ServeMargin:    15 * time.Second,
		PollInterval:   2 * time.Second,
		RetryMin:       time.Second,
		RetryMax:       10 * time.Second,
		AuthPerMinute:  20,
		RDP: RDPConfig{
			BaseURL: "http://" + fakeLn.Addr().String(), Auth: "v2",
			ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
		},
	}
	cfg.Catalog = demoCatalog(cfg, idpURL)
	p, err := NewProgram(cfg, log, nil)
	if err != nil {
		return err
	}
	defer p.Close()

	base := "http://" + dialable(p.Addr(), "localhost")
	log.Warn("DEMO MODE: in-process Redis and a FAKE RDP issuing 2-minute tokens; anyone may read the token. " +
		"For real, run 'tokenkeeper serve' with TOKENKEEPER_REDIS_URL, TOKENKEEPER_API_KEYS and RDP_CLIENT_ID/RDP_CLIENT_SECRET (see README).")
	fmt.Fprintf(stdout, "\ntokenkeeper demo on %s\n  read the token:    curl -s %s/v1/tokens/liveness\n  the other token:   curl -s %s/v1/tokens/partner\n  a device's own:    curl -s %s/v1/tokens/per-device/devices/my-phone\n  list the tokens:   curl -s %s/v1/tokens\n  fleet status:      curl -s -H 'Authorization: Bearer %s' %s/v1/status\n  force a refresh:   curl -s -X POST -H 'Authorization: Bearer %s' %s/v1/tokens/liveness/refresh\n  stop:              Ctrl-C\n\n",
		base, base, base, base, base, demoAdminKey, base, demoAdminKey, base)
	fmt.Fprintf(stdout, "  status page:       %s/status#key=%s\n  metrics:           curl -s %s/metrics | grep ^tokenkeeper_\n"+
		"  fleet from Redis:  TOKENKEEPER_REDIS_URL=redis://%s tokenkeeper status\n"+
		"  add a replica:     TOKENKEEPER_REDIS_URL=redis://%s RDP_BASE_URL=%s RDP_CLIENT_ID=%s RDP_CLIENT_SECRET=%s \\\n"+
		"                     TOKENKEEPER_ALLOW_ANONYMOUS=true TOKENKEEPER_ADMIN_KEYS=%s TOKENKEEPER_LISTEN=127.0.0.1:0 TOKENKEEPER_LOCK_TTL=5s \\\n"+
		"                     TOKENKEEPER_REFRESH_BEFORE=45s TOKENKEEPER_TOKEN_LIFETIME=2m TOKENKEEPER_SERVE_MARGIN=15s TOKENKEEPER_LOG_FORMAT=text tokenkeeper serve\n"+
		"                     (it keeps liveness only: replicas with different catalogs share what they both keep)\n"+
		"  break the upstream: curl -s -X PUT -d '{\"liveness_status\":503}' %s/fake/v1/knobs   (heal: 0)\n"+
		"  break the partner's upstream alone: the same PUT to %s/fake/v1/knobs\n\n",
		base, demoAdminKey, base, mr.Addr(), mr.Addr(), cfg.RDP.BaseURL, fakerdp.ClientID, fakerdp.ClientSecret, demoAdminKey, cfg.RDP.BaseURL, idpURL)

	go demoCountdown(ctx, log, p)
	return p.Run(ctx)
}

// demoCatalog is the demo's catalog: the liveness token of cfg's RDP
// settings, shared by every caller; per-device, the same RDP minting a
// liveness token per device; and partner, an OAuth2 token from the fake
// at idpURL.
func demoCatalog(cfg Config, idpURL string) *tokenkeeper.Catalog {
	rdp := func() *upstream.Config {
		return &upstream.Config{BaseURL: cfg.RDP.BaseURL, Auth: upstream.AuthV2, ClientID: cfg.RDP.ClientID, ClientSecret: cfg.RDP.ClientSecret,
			DefaultLifetime: cfg.TokenLifetime, Timeout: 5 * time.Second}
	}
	return &tokenkeeper.Catalog{Tokens: []tokenkeeper.TokenConfig{
		{
			Name: "liveness", ServeMargin: cfg.ServeMargin, RefreshBefore: cfg.RefreshBefore, AuthPerMinute: cfg.AuthPerMinute,
			RDP: rdp(),
		},
		{
			Name: "per-device", Optional: true, PerDevice: true,
			ServeMargin: cfg.ServeMargin, RefreshBefore: cfg.RefreshBefore, AuthPerMinute: cfg.AuthPerMinute,
			RDP: rdp(),
		},
		{
			Name: "partner", Optional: true, ServeMargin: 15 * time.Second, RefreshBefore: time.Minute, AuthPerMinute: cfg.AuthPerMinute,
			OAuth2: &upstream.OAuth2Config{
				TokenURL: idpURL + fakerdp.OAuth2TokenPath, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
				Scopes: []string{"partner.read"}, AuthStyle: upstream.OAuth2AuthAuto, DefaultLifetime: 3 * time.Minute, Timeout: 5 * time.Second,
			},
		},
	}}
}

// demoCountdown logs the held token's fingerprint and remaining life every
// ten seconds, so the refresh is visible.
func demoCountdown(ctx context.Context, log *slog.Logger, p *Program) {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, name := range p.keeper.Names() {
			t, ok := p.keeper.Current(name)
			if !ok {
				log.Info("demo: no servable token yet", "token", name)
				continue
			}
			log.Info("demo: serving", "token", name, "fingerprint", t.Fingerprint(),
				"expires_in", t.Remaining(time.Now()).Round(time.Second))
		}
	}
}
