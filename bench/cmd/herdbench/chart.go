package main

import (
	"fmt"
	"math"
	"strings"
)

// chart draws, by hand, two panels: the per-loop share of work for each
// loop-based server at 4 loops in each case (a dashed line marks the even
// share), and for each case the throughput and server CPU per op of the
// 2-loop servers, the C floor and the standard-library peer.
func chart(sums []summary) string {
	var cases []string
	seen := map[string]bool{}
	for _, s := range sums {
		if !seen[s.Case] {
			seen[s.Case] = true
			cases = append(cases, s.Case)
		}
	}
	distServers := []string{"herd-reuseport-4", "herd-shared-4", "herd-leastconns-4", "gnet-reuseport-4", "gnet-noreuse-4"}
	peerServers := []string{"herd-reuseport-2", "herd-shared-2", "herd-leastconns-2", "gnet-reuseport-2", "gnet-noreuse-2", "cfloor-reuseport-2", "stdnet", "nethttp"}
	colors := map[string]string{"herd": "#2b6cb0", "gnet": "#dd6b20", "cfloor": "#2f855a", "stdnet": "#718096", "nethttp": "#718096"}
	color := func(server string) string {
		return colors[strings.SplitN(server, "-", 2)[0]]
	}

	const (
		left   = 150
		cellW  = 130
		cellH  = 70
		pad    = 12
		barGap = 4
	)
	var b strings.Builder
	width := left + len(cases)*cellW + 20
	y := 40
	// Panel 1 height
	p1 := y + 30 + len(distServers)*(cellH+pad)
	// Panel 2: one block per case
	blockH := 22 + len(peerServers)*14
	p2 := p1 + 50 + len(cases)*(blockH+pad)
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", max(width, 900), p2+20)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="15" font-weight="bold">herd reuseport on/off study: per-loop share of work, 4 loops (reads; accepted connections for http-close)</text>`+"\n")
	for j, c := range cases {
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" font-size="10">%s</text>`+"\n", left+j*cellW+cellW/2, y+15, c)
	}
	y += 25
	for i, srv := range distServers {
		top := y + i*(cellH+pad)
		fmt.Fprintf(&b, `<text x="10" y="%d" fill="%s">%s</text>`+"\n", top+cellH/2, color(srv), srv)
		for j, c := range cases {
			x0 := left + j*cellW
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="#f7fafc" stroke="#e2e8f0"/>`+"\n", x0, top, cellW-10, cellH)
			s, ok := find(sums, c, srv)
			if !ok || len(s.Shares) == 0 {
				fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#a0aec0">–</text>`+"\n", x0+(cellW-10)/2, top+cellH/2)
				continue
			}
			n := len(s.Shares)
			bw := (cellW - 10 - barGap*(n+1)) / n
			for k, share := range s.Shares {
				h := int(math.Round(share * float64(cellH-14)))
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"><title>%s %s loop %d: %.1f%%</title></rect>`+"\n",
					x0+barGap+k*(bw+barGap), top+cellH-h, bw, h, color(srv), srv, c, k, share*100)
			}
			even := top + cellH - int(math.Round(float64(cellH-14)/float64(n)))
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="black" stroke-dasharray="3,2" stroke-width="0.7"/>`+"\n", x0, x0+cellW-10, even, even)
			fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="9" fill="#4a5568">J=%s</text>`+"\n", x0+3, top+10, f(s.Jain, 2))
		}
	}

	y = p1 + 10
	fmt.Fprintf(&b, `<text x="10" y="%d" font-size="15" font-weight="bold">Throughput (ops/s, client-bound) and server CPU per op (µs, lower is better), 2 loops (4 for longlived-4conns) vs peers</text>`+"\n", y)
	y += 20
	const (
		labelW = 130
		barMax = 300
	)
	for i, c := range cases {
		top := y + i*(blockH+pad)
		fmt.Fprintf(&b, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", top+12, c)
		// longlived-4conns runs 4 loops only: show those.
		servers := peerServers
		if c == "longlived-4conns" {
			servers = nil
			for _, srv := range peerServers {
				servers = append(servers, strings.Replace(srv, "-2", "-4", 1))
			}
		}
		var maxOps, maxCPU float64
		for _, srv := range servers {
			if s, ok := find(sums, c, srv); ok {
				maxOps = math.Max(maxOps, s.OpsPerSec)
				maxCPU = math.Max(maxCPU, s.CPU)
			}
		}
		row := 0
		for _, srv := range servers {
			s, ok := find(sums, c, srv)
			if !ok {
				continue
			}
			ry := top + 18 + row*14
			row++
			fmt.Fprintf(&b, `<text x="20" y="%d" fill="%s">%s</text>`+"\n", ry+9, color(srv), srv)
			w1 := int(s.OpsPerSec / maxOps * barMax)
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="10" fill="%s" opacity="0.55"/>`+"\n", labelW+10, ry, w1, color(srv))
			fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="9">%.0f/s</text>`+"\n", labelW+14+w1, ry+9, s.OpsPerSec)
			x2 := labelW + barMax + 90
			w2 := int(s.CPU / maxCPU * barMax)
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="10" fill="%s"/>`+"\n", x2, ry, w2, color(srv))
			fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="9">%.2f µs</text>`+"\n", x2+4+w2, ry+9, s.CPU)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}
