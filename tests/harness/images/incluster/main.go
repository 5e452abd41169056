// Command incluster reads one key of a ConfigMap in its own namespace through the
// Kubernetes API exactly as an in-cluster client does: the apiserver's address from
// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, the bearer token, namespace and
// CA certificate from the mounted ServiceAccount volume. The server certificate is
// verified against that CA alone.
//
// Usage: incluster CONFIGMAP KEY
//
// On 200 it prints the key's value and exits 0. Any other answer is printed as
// "HTTP <code>: <body>" and exits 1; other errors exit 2.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func fail(format string, args ...any) {
	fmt.Printf(format+"\n", args...)
	os.Exit(2)
}

func readFile(name string) string {
	b, err := os.ReadFile(serviceAccountDir + "/" + name)
	if err != nil {
		fail("read %s: %v", name, err)
	}
	return string(b)
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: incluster CONFIGMAP KEY")
	}
	configMap, key := os.Args[1], os.Args[2]
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		fail("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set")
	}
	token := strings.TrimSpace(readFile("token"))
	namespace := strings.TrimSpace(readFile("namespace"))
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(readFile("ca.crt"))) {
		fail("ca.crt holds no PEM certificate")
	}

	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		},
	}
	target := "https://" + net.JoinHostPort(host, port) + "/api/v1/namespaces/" +
		url.PathEscape(namespace) + "/configmaps/" + url.PathEscape(configMap)
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		fail("request: %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		fail("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail("read the answer: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		fmt.Printf("HTTP %d: %s\n", resp.StatusCode, strings.TrimSpace(string(body)))
		os.Exit(1)
	}
	var object struct {
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal(body, &object); err != nil {
		fail("decode the ConfigMap: %v", err)
	}
	value, ok := object.Data[key]
	if !ok {
		fail("ConfigMap %s has no key %s", configMap, key)
	}
	fmt.Println(value)
}
