package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The single-node cluster's addresses: everything listens on loopback but
// kubelet, which the API server reaches at the node's address.
const (
	clusterEtcdPort    = 23790
	clusterAPIPort     = 16443
	clusterServiceCIDR = "10.96.0.0/24"
	clusterKubeletPort = 10292
)

// pki is the cluster's certificate authority and the keys the test makes.
type pki struct {
	dir    string
	ca     *x509.Certificate
	caKey  *rsa.PrivateKey
	serial int64
}

func newPKI(t *testing.T, dir string) *pki {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hyperlet-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{dir: dir, ca: ca, caKey: key, serial: 1}
	p.write(t, "ca", der, key)
	return p
}

// write stores a certificate and its key as NAME.crt and NAME.key.
func (p *pki) write(t *testing.T, name string, der []byte, key *rsa.PrivateKey) {
	t.Helper()
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	k := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(filepath.Join(p.dir, name+".crt"), crt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, name+".key"), k, 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue makes NAME.crt/key signed by the CA: a client certificate for
// cn/orgs, or a server one when it has IP or DNS names.
func (p *pki) issue(t *testing.T, name, cn string, orgs []string, ips []net.IP, dns []string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, IPAddresses: ips, DNSNames: dns,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if len(ips)+len(dns) > 0 {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	p.write(t, name, der, key)
}

// kubeconfig writes NAME.kubeconfig for the client certificate NAME.
func (p *pki) kubeconfig(t *testing.T, name string) string {
	t.Helper()
	b64 := func(f string) string {
		b, err := os.ReadFile(filepath.Join(p.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:%d", certificate-authority-data: %s}
users:
- name: %[3]s
  user: {client-certificate-data: %s, client-key-data: %s}
contexts:
- name: test
  context: {cluster: test, user: %[3]s}
current-context: test
`, clusterAPIPort, b64("ca.crt"), name, b64(name+".crt"), b64(name+".key"))
	path := filepath.Join(p.dir, name+".kubeconfig")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// nodeIP is the node's first global IPv4 address (kubelet refuses
// loopback as the node's address).
func nodeIP(t *testing.T) net.IP {
	t.Helper()
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 || strings.HasPrefix(i.Name, "hl") {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP
			}
		}
	}
	t.Fatal("the cluster test needs a non-loopback IPv4 address for the node")
	return nil
}

// component is one process of the cluster, its output kept for failures.
type component struct {
	name string
	cmd  *exec.Cmd
	log  *lockedBuffer
}

// run starts a cluster process that ends with the test.
func runComponent(t *testing.T, name string, args ...string) *component {
	t.Helper()
	c := &component{name: name, log: &lockedBuffer{}}
	c.cmd = exec.Command(kubeBinary(t, name), args...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			s := c.log.String()
			if len(s) > 12000 {
				s = s[len(s)-12000:]
			}
			t.Logf("%s log (tail):\n%s", name, s)
		}
	})
	return c
}

// kubectl runs kubectl against the cluster; stdin may be nil.
type kubectlFunc func(stdin string, args ...string) (string, error)

// TestCluster runs a real single-node cluster on loopback — etcd, the API
// server, controller manager and scheduler, kubelet on hyperlet, kube-proxy
// as a hostNetwork DaemonSet on the host runtime — and checks what a user
// of it does: a Deployment in VMs behind a Service reached from a pod and
// from the node, kubectl logs, exec -it and port-forward, a hostNetwork pod
// that sees the node's interfaces, RuntimeClasses for both runtimes, and a
// deleted Deployment leaving nothing behind.
func TestCluster(t *testing.T) {
	d, cd := startWithHostRuntime(t)
	ctx := testCtx(t, 20*time.Minute)
	before := d.hostState(t)
	chains := kubeChains()
	kubeProxy := kubeBinary(t, "kube-proxy")
	t.Cleanup(func() {
		exec.Command(kubeProxy, "--cleanup").Run()
		removeKubeChains(chains)
	})
	kubectlBin := kubeBinary(t, "kubectl")

	dir := filepath.Join(d.dir, "cluster")
	os.MkdirAll(dir, 0o755)
	ip := nodeIP(t)
	p := newPKI(t, dir)
	p.issue(t, "apiserver", "kube-apiserver", nil,
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1"), ip},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	p.issue(t, "admin", "admin", []string{"system:masters"}, nil, nil)
	p.issue(t, "kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	p.issue(t, "node", "system:node:"+kubeletNode, []string{"system:nodes"}, nil, nil)
	p.issue(t, "controller-manager", "system:kube-controller-manager", nil, nil, nil)
	p.issue(t, "scheduler", "system:kube-scheduler", nil, nil, nil)
	p.issue(t, "proxy", "system:kube-proxy", nil, nil, nil)
	saKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	saPub, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}), 0o600)
	os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}), 0o644)
	f := func(n string) string { return filepath.Join(dir, n) }
	admin := p.kubeconfig(t, "admin")

	runComponent(t, "etcd", "--data-dir", f("etcd"), "--name", "test",
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", clusterEtcdPort),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", clusterEtcdPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", clusterEtcdPort+10),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", clusterEtcdPort+10),
		"--initial-cluster", fmt.Sprintf("test=http://127.0.0.1:%d", clusterEtcdPort+10),
		"--log-level", "warn")
	runComponent(t, "kube-apiserver",
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", clusterEtcdPort),
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(clusterAPIPort), "--advertise-address", ip.String(),
		"--cert-dir", f("apiserver-certs"),
		"--tls-cert-file", f("apiserver.crt"), "--tls-private-key-file", f("apiserver.key"), "--client-ca-file", f("ca.crt"),
		"--service-account-key-file", f("sa.pub"), "--service-account-signing-key-file", f("sa.key"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range", clusterServiceCIDR, "--authorization-mode", "Node,RBAC", "--allow-privileged",
		"--kubelet-client-certificate", f("kubelet-client.crt"), "--kubelet-client-key", f("kubelet-client.key"),
		"--kubelet-preferred-address-types", "InternalIP", "--profiling=false", "--v", "1")
	kubectl := kubectlFunc(func(stdin string, args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, kubectlBin, append([]string{"--kubeconfig", admin}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	})
	poll := func(what string, fn func() (bool, string)) { t.Helper(); pollUntil(t, ctx, time.Second, what, fn) }
	poll("API server ready", func() (bool, string) {
		out, err := kubectl("", "get", "--raw", "/readyz")
		return err == nil && strings.TrimSpace(out) == "ok", out
	})
	runComponent(t, "kube-controller-manager", "--kubeconfig", p.kubeconfig(t, "controller-manager"),
		"--authentication-kubeconfig", f("controller-manager.kubeconfig"), "--authorization-kubeconfig", f("controller-manager.kubeconfig"),
		"--service-account-private-key-file", f("sa.key"), "--root-ca-file", f("ca.crt"), "--use-service-account-credentials",
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", "10297", "--v", "1")
	runComponent(t, "kube-scheduler", "--kubeconfig", p.kubeconfig(t, "scheduler"),
		"--authentication-kubeconfig", f("scheduler.kubeconfig"), "--authorization-kubeconfig", f("scheduler.kubeconfig"),
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", "10299", "--v", "1")

	// kubelet on hyperlet, as the node's only CRI.
	rootDir, podLogs := f("kubelet"), f("pod-logs")
	os.MkdirAll(rootDir, 0o755)
	os.MkdirAll(podLogs, 0o755)
	kcfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
makeIPTablesUtilChains: false
runtimeRequestTimeout: 5m
address: %s
port: %d
healthzBindAddress: 127.0.0.1
healthzPort: 10293
readOnlyPort: 0
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: %s}}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
syncFrequency: 5s
nodeStatusUpdateFrequency: 5s
evictionHard: {}
`, d.socket, podLogs, ip, clusterKubeletPort, f("ca.crt"))
	os.WriteFile(f("kubelet.yaml"), []byte(kcfg), 0o644)
	// kubelet bind-mounts its root directory onto itself; undone after
	// kubelet ends (cleanups run last first).
	t.Cleanup(func() { syscall.Unmount(rootDir, syscall.MNT_DETACH) })
	runComponent(t, "kubelet", "--config", f("kubelet.yaml"), "--kubeconfig", p.kubeconfig(t, "node"),
		"--root-dir", rootDir, "--hostname-override", kubeletNode, "--node-ip", ip.String(), "--v", "2")
	poll("node Ready", func() (bool, string) {
		out, _ := kubectl("", "get", "node", kubeletNode, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return out == "True", out
	})

	// kube-proxy: a hostNetwork DaemonSet, so it runs through the host
	// runtime. Its container runs the kube-proxy built for this test from
	// the node's filesystem, as node agents that install host binaries do.
	p.kubeconfig(t, "proxy")
	os.WriteFile(f("kube-proxy.yaml"), []byte(fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %s}
hostnameOverride: %s
mode: iptables
clusterCIDR: %s
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10349
healthzBindAddress: 127.0.0.1:10356
`, f("proxy.kubeconfig"), kubeletNode, testSubnet)), 0o644)
	apply := func(what, yaml string) {
		t.Helper()
		if out, err := kubectl(yaml, "apply", "-f", "-"); err != nil {
			t.Fatalf("kubectl apply %s: %v\n%s", what, err, out)
		}
	}
	apply("kube-proxy", fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-proxy, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kube-proxy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-proxier}
subjects: [{kind: User, name: system:kube-proxy}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: kube-proxy, namespace: kube-system}
spec:
  selector: {matchLabels: {app: kube-proxy}}
  template:
    metadata: {labels: {app: kube-proxy}}
    spec:
      hostNetwork: true
      serviceAccountName: kube-proxy
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 2
      containers:
      - name: kube-proxy
        image: %s
        command: ["chroot", "/host", "%s", "--config", "%s", "--v", "1"]
        env: [{name: PATH, value: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}]
        securityContext: {privileged: true}
        volumeMounts: [{name: host, mountPath: /host}]
      volumes: [{name: host, hostPath: {path: /}}]
`, testImage, kubeProxy, f("kube-proxy.yaml")))

	// The workload: two replicas in VMs behind a ClusterIP Service.
	start := time.Now()
	apply("web", fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: %s
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && echo serving $(hostname) && exec httpd -f -p 8080 -h /www"]
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`, testImage))
	poll("web replicas Ready", func() (bool, string) {
		out, _ := kubectl("", "get", "deployment", "web", "-o", "jsonpath={.status.readyReplicas}")
		return out == "2", out
	})
	t.Logf("kubectl apply to 2 of 2 replicas Ready: %v", time.Since(start).Round(100*time.Millisecond))

	type podInfo struct {
		Name string
		IP   string
		UID  string
	}
	pods := func(selector string) []podInfo {
		out, err := kubectl("", "get", "pods", "-A", "-l", selector, "-o", "json")
		if err != nil {
			t.Fatalf("kubectl get pods: %v\n%s", err, out)
		}
		var l struct {
			Items []struct {
				Metadata struct{ Name, UID string }
				Status   struct{ PodIP string }
			}
		}
		json.Unmarshal([]byte(out), &l)
		var ps []podInfo
		for _, i := range l.Items {
			ps = append(ps, podInfo{i.Metadata.Name, i.Status.PodIP, i.Metadata.UID})
		}
		slices.SortFunc(ps, func(a, b podInfo) int { return strings.Compare(a.Name, b.Name) })
		return ps
	}
	web := pods("app=web")
	if len(web) != 2 {
		t.Fatalf("web pods: %v", web)
	}
	// Both replicas are pod VMs.
	vmPods := func() map[string]string {
		l, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, s := range l.Items {
			if s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				m[s.Metadata.Uid] = s.Id
			}
		}
		return m
	}
	webIDs := map[string]string{}
	for _, w := range web {
		if !d.isVMPod(w.UID) {
			t.Fatalf("web pod %s is not a pod VM", w.Name)
		}
		webIDs[w.Name] = vmPods()[w.UID]
	}

	// kube-proxy runs on the host runtime and sees the node's interfaces.
	proxy := pods("app=kube-proxy")
	if len(proxy) != 1 {
		t.Fatalf("kube-proxy pods: %v", proxy)
	}
	if d.isVMPod(proxy[0].UID) {
		t.Fatal("the hostNetwork kube-proxy pod runs in a VM")
	}
	if proxy[0].IP != ip.String() {
		t.Errorf("kube-proxy pod IP %s, want the node's %s", proxy[0].IP, ip)
	}
	poll("kube-proxy programs the node", func() (bool, string) {
		out, _ := kubectl("", "-n", "kube-system", "get", "pod", proxy[0].Name, "-o", "jsonpath={.status.containerStatuses[0].ready}")
		rules, _ := exec.Command("iptables", "-t", "nat", "-S", "KUBE-SERVICES").Output()
		return out == "true" && len(rules) > 0, "ready " + out
	})
	if out, err := kubectl("", "-n", "kube-system", "exec", proxy[0].Name, "--", "cat", "/proc/net/dev"); err != nil {
		t.Errorf("exec in kube-proxy: %v\n%s", err, out)
	} else {
		ifs, _ := net.Interfaces()
		for _, i := range ifs {
			if !strings.Contains(out, i.Name+":") && !strings.HasPrefix(i.Name, "veth") {
				t.Errorf("the hostNetwork pod does not see the node's %s:\n%s", i.Name, out)
			}
		}
	}

	// The Service, from the node through kube-proxy's rules.
	poll("service endpoints", func() (bool, string) {
		out, _ := kubectl("", "get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}")
		return len(strings.Fields(out)) == 2, out
	})
	clusterIP, _ := kubectl("", "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
	seen := map[string]bool{}
	poll("both replicas through the ClusterIP from the node", func() (bool, string) {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + clusterIP + "/")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[strings.TrimSpace(string(b))] = true
		return seen[web[0].Name] && seen[web[1].Name], fmt.Sprint(seen)
	})

	// A third pod in a VM reaches the Service.
	apply("client", fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: %s, command: ["sleep", "3600"]}
`, testImage))
	poll("client ready", func() (bool, string) {
		out, _ := kubectl("", "get", "pod", "client", "-o", "jsonpath={.status.containerStatuses[0].ready}")
		return out == "true", out
	})
	poll("the Service from a pod", func() (bool, string) {
		out, err := kubectl("", "exec", "client", "--", "timeout", "5", "wget", "-q", "-O", "-", "http://"+clusterIP+"/") // busybox 1.35 wget -T crashes
		return err == nil && strings.HasPrefix(strings.TrimSpace(out), "web-"), out
	})

	// kubectl logs, exec -it with stdin on a terminal, port-forward.
	if out, err := kubectl("", "logs", web[0].Name); err != nil || !strings.Contains(out, "serving "+web[0].Name) {
		t.Errorf("kubectl logs: %v %q", err, out)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	term := exec.CommandContext(cctx, "script", "-qec", kubectlBin+" --kubeconfig "+admin+" exec -it client -- sh", "/dev/null")
	term.Stdin = strings.NewReader("tty -s && echo tty-$((1+1)); echo $((6*7)) from $(hostname)\nexit 3\n")
	out, err := term.CombinedOutput()
	cancel()
	if !strings.Contains(string(out), "tty-2") || !strings.Contains(string(out), "42 from client") {
		t.Errorf("kubectl exec -it: %v\n%q", err, out)
	}
	pf := exec.CommandContext(ctx, kubectlBin, "--kubeconfig", admin, "port-forward", "pod/"+web[1].Name, "18089:8080")
	var pfOut bytes.Buffer
	pf.Stdout, pf.Stderr = &pfOut, &pfOut
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	poll("kubectl port-forward", func() (bool, string) {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://127.0.0.1:18089/")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.TrimSpace(string(b)) == web[1].Name, string(b)
	})
	pf.Process.Kill()
	pf.Wait()

	// RuntimeClasses: hyperlet's VM handler and the host handler.
	apply("runtimeclasses", fmt.Sprintf(`apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: hyperlet}
handler: hyperlet
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: runc}
handler: runc
---
apiVersion: v1
kind: Pod
metadata: {name: in-vm, namespace: default, labels: {rc: "yes"}}
spec:
  runtimeClassName: hyperlet
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: %[1]s, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: on-host, namespace: default, labels: {rc: "yes"}}
spec:
  runtimeClassName: runc
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: %[1]s, command: ["sleep", "3600"]}
`, testImage))
	poll("RuntimeClass pods Running", func() (bool, string) {
		out, _ := kubectl("", "get", "pods", "-l", "rc=yes", "-o", "jsonpath={.items[*].status.phase}")
		return out == "Running Running", out
	})
	for _, rc := range pods("rc=yes") {
		if vm := d.isVMPod(rc.UID); vm != (rc.Name == "in-vm") {
			t.Errorf("pod %s: in a VM %v", rc.Name, vm)
		}
		if out, err := kubectl("", "exec", rc.Name, "--", "cat", "/proc/1/cmdline"); err != nil || !strings.Contains(out, "sleep") {
			t.Errorf("exec in %s: %v %q", rc.Name, err, out)
		}
	}
	if !cd.hasPod(t, ctx, "on-host") {
		t.Error("the runc RuntimeClass pod is not in containerd")
	}

	// Deleting the Deployment removes its pod VMs and what they held.
	if out, err := kubectl("", "delete", "deployment", "web", "--wait"); err != nil {
		t.Fatalf("delete deployment: %v\n%s", err, out)
	}
	poll("web pods gone", func() (bool, string) {
		left := 0
		for _, id := range webIDs {
			if _, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id}); err == nil {
				left++
			}
		}
		return left == 0 && len(pods("app=web")) == 0, fmt.Sprint(left)
	})
	for name, id := range webIDs {
		if _, err := os.Stat("/var/run/netns/hyperlet-" + id[:16]); !os.IsNotExist(err) {
			t.Errorf("%s: netns left: %v", name, err)
		}
	}
	// And so does everything else.
	if out, err := kubectl("", "delete", "daemonsets,pods", "--all", "-A", "--wait", "--grace-period", "1"); err != nil {
		t.Fatalf("delete everything: %v\n%s", err, out)
	}
	poll("every pod gone", func() (bool, string) {
		l, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		ready := 0
		for _, p := range l.GetItems() {
			if p.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				ready++
			}
		}
		return err == nil && ready == 0, fmt.Sprint(ready, err)
	})
	// kubelet keeps a removed pod's sandbox record for a while; what the
	// host holds is gone once the sandbox is stopped, but the records go
	// at removal: remove them as kubelet's garbage collector would.
	var left []string
	for _, s := range d.hostState(t).leftSince(before) {
		if !strings.HasPrefix(s, "mount "+rootDir) && !strings.HasPrefix(s, "file ") {
			left = append(left, s)
		}
	}
	if len(left) > 0 {
		t.Errorf("left on the host with every pod stopped:\n%s", strings.Join(left, "\n"))
	}
}

// isVMPod says whether hyperlet runs the pod of this UID in a VM.
func (d *criDaemon) isVMPod(uid string) bool {
	l, err := d.rs.ListPodSandbox(context.Background(), &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return false
	}
	for _, s := range l.Items {
		if s.Metadata.Uid == uid && s.State == runtimeapi.PodSandboxState_SANDBOX_READY && len(s.Id) >= 16 {
			// A pod VM's network namespace is hyperlet's.
			_, err := os.Stat("/var/run/netns/hyperlet-" + s.Id[:16])
			return err == nil
		}
	}
	return false
}

// hasPod says whether containerd runs a ready pod of this name.
func (c *hostContainerd) hasPod(t *testing.T, ctx context.Context, name string) bool {
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	l, err := runtimeapi.NewRuntimeServiceClient(conn).ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatalf("containerd ListPodSandbox: %v", err)
	}
	for _, s := range l.Items {
		if s.Metadata.Name == name && s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			return true
		}
	}
	return false
}
