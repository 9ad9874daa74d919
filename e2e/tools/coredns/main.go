// CoreDNS with only the plugins the local platform's real node needs: cluster DNS from the API server
// (kubernetes), nothing forwarded anywhere (no forward plugin is linked, so no query can leave the node's
// network namespace). Building the full plugin set would link the cloud DNS SDKs for nothing.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// The order of the plugin chain, as in CoreDNS's plugin.cfg.
var directives = []string{"ready", "health", "errors", "log", "loadbalance", "cache", "template", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
