package interop

// The deployment recipes of docs/deploy, checked as far as this machine
// can: the systemd unit by systemd-analyze, the Kubernetes manifests and
// the prometheus-adapter rule parsed as YAML and held to what herd does
// (the signal paths they rely on are exercised by the upgrade and shutdown
// tests), the Dockerfile read for what it promises.

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const deployDir = "../docs/deploy"

// TestSystemdUnit verifies the unit with systemd-analyze (with ExecStart
// pointing at a build of examples/http), which must print nothing, and
// checks that TimeoutStopSec leaves room for the graceful stop.
func TestSystemdUnit(t *testing.T) {
	analyze := tool(t, "systemd-analyze")
	unit, err := os.ReadFile(filepath.Join(deployDir, "herd-http.service"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := buildExample(t, "http")
	local := bytes.ReplaceAll(unit, []byte("/usr/local/bin/herd-http"), []byte(bin))
	path := filepath.Join(dir, "herd-http.service")
	if err := os.WriteFile(path, local, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	keys := unitKeys(unit)
	for k, want := range map[string]string{"Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID", "KillSignal": "SIGTERM"} {
		if keys[k] != want {
			t.Errorf("%s=%q, want %q", k, keys[k], want)
		}
	}
	stop := flagDuration(t, keys["ExecStart"], "-stop-timeout")
	grace := flagDuration(t, keys["ExecStart"], "-upgrade-grace")
	limit, err := time.ParseDuration(keys["TimeoutStopSec"])
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if limit < stop+2*time.Second {
		t.Errorf("TimeoutStopSec=%v leaves no room after -stop-timeout %v", limit, stop)
	}
	t.Logf("stop-timeout %v, upgrade-grace %v, TimeoutStopSec %v", stop, grace, limit)
}

// unitKeys reads a unit file's Key=Value lines (the last of a key wins).
func unitKeys(unit []byte) map[string]string {
	keys := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = v
		}
	}
	return keys
}

// flagDuration finds "-name value" in a command line.
func flagDuration(t *testing.T, cmdline, name string) time.Duration {
	f := strings.Fields(cmdline)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == name {
			d, err := time.ParseDuration(f[i+1])
			if err != nil {
				t.Fatalf("%s %q: %v", name, f[i+1], err)
			}
			return d
		}
	}
	t.Fatalf("no %s in %q", name, cmdline)
	return 0
}

// yamlDocs parses every document of a YAML file.
func yamlDocs(t *testing.T, name string) []map[string]any {
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		docs = append(docs, d)
	}
}

// at walks a parsed document: keys for maps, indices for lists.
func at(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok || m[k] == nil {
				t.Fatalf("no %q at %v", k, path)
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("no item %d at %v", k, path)
			}
			v = l[k]
		}
	}
	return v
}

// TestKubernetesManifests: the Deployment's probes hit the application's
// port, Prometheus scrapes the admin port (-admin), which the Service does
// not expose, the grace period covers the preStop sleep and herd's stop
// timeout, and the HPA scales on the metric the prometheus-adapter rule
// makes from the busy time the prometheus module exports.
func TestKubernetesManifests(t *testing.T) {
	kinds := map[string]map[string]any{}
	for _, d := range yamlDocs(t, "kubernetes.yaml") {
		kinds[at(t, d, "kind").(string)] = d
	}
	for _, k := range []string{"Deployment", "Service", "HorizontalPodAutoscaler"} {
		if kinds[k] == nil {
			t.Fatalf("no %s in kubernetes.yaml", k)
		}
	}
	dep := kinds["Deployment"]
	pod := at(t, dep, "spec", "template", "spec")
	c := at(t, pod, "containers", 0)
	for _, probe := range []string{"readinessProbe", "livenessProbe"} {
		if p, port := at(t, c, probe, "httpGet", "path"), at(t, c, probe, "httpGet", "port"); p != "/" || port != "http" {
			t.Errorf("%s on %v port %v, want / on http (a route of the application, served by its loops)", probe, p, port)
		}
	}
	var args []string
	for _, a := range at(t, c, "args").([]any) {
		args = append(args, a.(string))
	}
	ports := map[string]int{}
	for i := range at(t, c, "ports").([]any) {
		ports[at(t, c, "ports", i, "name").(string)] = at(t, c, "ports", i, "containerPort").(int)
	}
	admin := ""
	for i, a := range args {
		if a == "-admin" && i+1 < len(args) {
			admin = args[i+1]
		}
	}
	if !strings.HasSuffix(admin, ":"+strconv.Itoa(ports["admin"])) || ports["admin"] == 0 {
		t.Errorf("-admin %q is not the container's admin port %d", admin, ports["admin"])
	}
	if p := at(t, dep, "spec", "template", "metadata", "annotations", "prometheus.io/port"); p != strconv.Itoa(ports["admin"]) {
		t.Errorf("Prometheus scrapes port %v, not the admin port %d", p, ports["admin"])
	}
	for i := range at(t, kinds["Service"], "spec", "ports").([]any) {
		if tp := at(t, kinds["Service"], "spec", "ports", i, "targetPort"); tp == "admin" || tp == ports["admin"] {
			t.Errorf("the Service exposes the admin port (%v)", tp)
		}
	}
	stop := flagDuration(t, strings.Join(args, " "), "-stop-timeout")
	sleep := time.Duration(at(t, c, "lifecycle", "preStop", "sleep", "seconds").(int)) * time.Second
	grace := time.Duration(at(t, pod, "terminationGracePeriodSeconds").(int)) * time.Second
	if grace < sleep+stop+2*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v does not cover the preStop sleep %v and -stop-timeout %v", grace, sleep, stop)
	}
	if u := at(t, pod, "securityContext", "runAsNonRoot"); u != true {
		t.Errorf("runAsNonRoot %v", u)
	}

	hpa := kinds["HorizontalPodAutoscaler"]
	if v := at(t, hpa, "apiVersion"); v != "autoscaling/v2" {
		t.Errorf("HPA apiVersion %v", v)
	}
	if n := at(t, hpa, "spec", "scaleTargetRef", "name"); n != at(t, dep, "metadata", "name") {
		t.Errorf("the HPA scales %v, not the Deployment", n)
	}
	metric := at(t, hpa, "spec", "metrics", 0, "pods", "metric", "name").(string)

	adapter := yamlDocs(t, "prometheus-adapter.yaml")[0]
	var rules struct {
		Rules []struct {
			SeriesQuery string `yaml:"seriesQuery"`
			Name        struct {
				Matches string `yaml:"matches"`
				As      string `yaml:"as"`
			} `yaml:"name"`
			MetricsQuery string `yaml:"metricsQuery"`
		} `yaml:"rules"`
	}
	if err := yaml.Unmarshal([]byte(at(t, adapter, "data", "config.yaml").(string)), &rules); err != nil {
		t.Fatalf("the adapter's config.yaml: %v", err)
	}
	if len(rules.Rules) != 1 {
		t.Fatalf("%d adapter rules, want 1", len(rules.Rules))
	}
	r := rules.Rules[0]
	if r.Name.As != metric {
		t.Errorf("the adapter makes %q, the HPA reads %q", r.Name.As, metric)
	}
	series := regexp.MustCompile(`^[a-z_]+`).FindString(r.SeriesQuery)
	collector, err := os.ReadFile("../prometheus/collector.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(collector, []byte(strconv.Quote(series))) {
		t.Errorf("the adapter reads %q, which the prometheus module does not export", series)
	}
	if !strings.Contains(r.MetricsQuery, "rate(") {
		t.Errorf("metricsQuery %q takes no rate of the busy-seconds counter", r.MetricsQuery)
	}
}

// TestDockerfile: two stages, a non-root user, SIGTERM as the stop signal,
// an exec-form entrypoint (so the signal reaches herd, not a shell), and a
// build of a command that exists.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var from, user, stopSignal, entry, pkg, workdir string
	stages := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		rest := strings.TrimSpace(strings.TrimPrefix(line, f[0]))
		switch f[0] {
		case "FROM":
			stages++
			from = rest
		case "USER":
			user = rest
		case "STOPSIGNAL":
			stopSignal = rest
		case "ENTRYPOINT":
			entry = rest
		case "WORKDIR":
			workdir = rest
		case "RUN":
			if m := regexp.MustCompile(`go build .* (\./\S+)$`).FindStringSubmatch(rest); m != nil {
				pkg = filepath.Join(strings.TrimPrefix(workdir, "/src"), m[1])
			}
		}
	}
	if stages < 2 {
		t.Errorf("%d stages, want a build stage and a runtime stage", stages)
	}
	if user == "" || strings.HasPrefix(user, "root") || strings.HasPrefix(user, "0") {
		t.Errorf("USER %q: the image must run as a non-root user", user)
	}
	if stopSignal != "SIGTERM" {
		t.Errorf("STOPSIGNAL %q, want SIGTERM", stopSignal)
	}
	if !strings.HasPrefix(entry, "[") {
		t.Errorf("ENTRYPOINT %s is not in exec form: a shell would take the signals", entry)
	}
	if !strings.Contains(entry, `"-admin", "0.0.0.0:9091"`) {
		// The default, loopback, is the container's own: nothing outside
		// could scrape /metrics.
		t.Errorf("ENTRYPOINT %s does not put the admin pages on the container's network", entry)
	}
	if !strings.Contains(from, "nonroot") {
		t.Errorf("runtime stage %q", from)
	}
	if pkg == "" {
		t.Fatal("no go build of a command")
	}
	if _, err := os.Stat(filepath.Join("..", pkg, "main.go")); err != nil {
		t.Errorf("the Dockerfile builds %s: %v", pkg, err)
	}
}
