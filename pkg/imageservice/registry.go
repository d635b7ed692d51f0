package imageservice

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hyperlet/hyperlet/pkg/config"
)

// endpoint is one place to pull a repository from.
type endpoint struct {
	host     string // host[:port]
	insecure bool   // plain HTTP
}

// dockerHub is where docker.io's API actually lives.
const dockerHub = "index.docker.io"

// endpoints lists where to pull domain's images: its mirrors in order, then
// the registry itself.
func endpoints(reg config.Registry, domain string) ([]endpoint, error) {
	var eps []endpoint
	mirrors, ok := reg.Mirrors[domain]
	if !ok && domain == "docker.io" {
		mirrors = reg.Mirrors[dockerHub]
	}
	for _, e := range mirrors.Endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("registry mirror %q for %s: want http(s)://host[:port]", e, domain)
		}
		eps = append(eps, endpoint{host: u.Host, insecure: u.Scheme == "http"})
	}
	host := domain
	if host == "docker.io" {
		host = dockerHub
	}
	return append(eps, endpoint{host: host}), nil
}

// transport builds the HTTP transport for a host from its TLS config.
func transport(reg config.Registry, host string) (http.RoundTripper, error) {
	hc, ok := reg.Configs[host]
	if !ok || hc.TLS == nil {
		return remote.DefaultTransport, nil
	}
	tc := &tls.Config{InsecureSkipVerify: hc.TLS.InsecureSkipVerify} //nolint:gosec // operator's explicit choice
	if hc.TLS.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(hc.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("registry %s ca_file: %w", host, err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("registry %s ca_file %s: no certificates", host, hc.TLS.CAFile)
		}
		tc.RootCAs = pool
	}
	if hc.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(hc.TLS.CertFile, hc.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("registry %s client certificate: %w", host, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	t := remote.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tc
	return t, nil
}

// Auth is what a CRI caller may send with a pull.
type Auth struct {
	Username, Password, Auth, IdentityToken, RegistryToken string
}

func (a *Auth) empty() bool {
	return a == nil || *a == Auth{}
}

// authenticator picks credentials: the caller's, else the host's configured
// ones, else anonymous.
func authenticator(reg config.Registry, host string, a *Auth) authn.Authenticator {
	if !a.empty() {
		return authn.FromConfig(authn.AuthConfig{
			Username: a.Username, Password: a.Password, Auth: a.Auth,
			IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken,
		})
	}
	if hc, ok := reg.Configs[host]; ok && hc.Auth != nil {
		return authn.FromConfig(authn.AuthConfig{
			Username: hc.Auth.Username, Password: hc.Auth.Password,
			Auth: hc.Auth.Auth, IdentityToken: hc.Auth.IdentityToken,
		})
	}
	return authn.Anonymous
}
