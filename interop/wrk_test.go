package interop

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// pipelineScript makes wrk send 16 requests per write and count each
// response (wrk's pipeline.lua, the standard way to pipeline with wrk).
const pipelineScript = `
init = function(args)
   local r = {}
   for i = 1, 16 do r[i] = wrk.format(nil, "/") end
   req = table.concat(r)
end
request = function() return req end
`

// TestWrk drives examples/http with wrk for two seconds per case: keep-alive,
// 16-deep pipelining, and one request per connection. Every response must
// be a 2xx and no socket error may occur.
func TestWrk(t *testing.T) {
	wrk := tool(t, "wrk")
	addr, _ := startHTTPExample(t)
	script := filepath.Join(t.TempDir(), "pipeline.lua")
	if err := os.WriteFile(script, []byte(pipelineScript), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"keep-alive", nil},
		{"pipelined-16", []string{"-s", script}},
		{"connection-close", []string{"-H", "Connection: close"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-t", "2", "-c", "50", "-d", "2s", "--timeout", "5s"}, tc.args...)
			out, err := exec.CommandContext(testContext(t, 60e9), wrk, append(args, "http://"+addr+"/")...).CombinedOutput()
			t.Logf("wrk %v\n%s", args, out)
			if err != nil {
				t.Fatalf("wrk: %v", err)
			}
			m := regexp.MustCompile(`(\d+) requests in`).FindSubmatch(out)
			if m == nil {
				t.Fatal("no request count in wrk's output")
			}
			if n, _ := strconv.Atoi(string(m[1])); n < 100 {
				t.Errorf("only %d requests completed", n)
			}
			if regexp.MustCompile(`Socket errors|Non-2xx`).Match(out) {
				t.Error("wrk saw socket errors or non-2xx responses")
			}
		})
	}
}
