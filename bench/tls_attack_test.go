//go:build linux

package bench

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkTLSUnderAttack: honest clients of herd's HTTPS server and of
// net/http with crypto/tls (children as in BenchmarkTLS, default
// settings) while unauthenticated clients attack: 1,000 connections that
// send nothing, 100 that send a valid record header and then garbage as
// fast as they can (reconnecting when closed), and 100 that send a whole
// ClientHello and then nothing. Meanwhile 50 honest clients, one after the
// other, connect, handshake and get one response: reported are their p50
// and p99 latency and the server's resident memory, its growth under
// attack (the largest of the samples taken after each honest client) and
// what is left of it once the attack is over.
//
//	go test -run '^$' -bench TLSUnderAttack -benchtime 1x -count 3
func BenchmarkTLSUnderAttack(b *testing.B) {
	const silent, flooders, stalled, honest = 1000, 100, 100, 50
	for _, kind := range []string{"herd", "net-http"} {
		b.Run(kind, func(b *testing.B) {
			child := startTLSChild(b, kind)
			before := child.rss()

			conns, failed, err := openMany(silent, func() (net.Conn, error) { return net.Dial("tcp", child.addr) })
			if failed > 0 {
				b.Fatalf("%d silent connections failed: %v", failed, err)
			}
			stop := make(chan struct{})
			var attackers sync.WaitGroup
			for range flooders {
				attackers.Add(1)
				go func() {
					defer attackers.Done()
					floodUntil(child.addr, stop)
				}()
			}
			for range stalled {
				raw, err := net.Dial("tcp", child.addr)
				if err != nil {
					b.Fatal(err)
				}
				conns = append(conns, raw)
				attackers.Add(1)
				go func() {
					defer attackers.Done()
					tls.Client(stalledConn{raw, stop}, tlsClientConfig()).Handshake()
				}()
			}
			time.Sleep(500 * time.Millisecond) // the attack under way

			var took []time.Duration
			peak := child.rss()
			for range honest {
				start := time.Now()
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", child.addr, tlsClientConfig())
				if err != nil {
					b.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(30 * time.Second))
				err = get(c, bufio.NewReader(c), "/")
				c.Close()
				if err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(start))
				peak = max(peak, child.rss())
			}
			close(stop)
			for _, c := range conns {
				c.Close()
			}
			attackers.Wait()
			time.Sleep(500 * time.Millisecond)
			gc, err := tls.Dial("tcp", child.addr, tlsClientConfig())
			if err != nil {
				b.Fatal(err)
			}
			get(gc, bufio.NewReader(gc), "/gc")
			gc.Close()
			time.Sleep(200 * time.Millisecond)
			after := child.rss()

			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(before)/(1<<20), "rss-before-MB")
			b.ReportMetric(float64(peak-before)/(1<<20), "rss-growth-MB")
			b.ReportMetric(float64(after-before)/(1<<20), "rss-after-MB")
			for range b.N {
			}
		})
	}
}

// floodUntil connects, sends a valid handshake record header and then
// garbage until the server closes the connection, and again, until stop.
func floodUntil(addr string, stop <-chan struct{}) {
	junk := make([]byte, 32<<10)
	for i := range junk {
		junk[i] = byte(i*7 + 1)
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		c.Write([]byte{22, 3, 1, 0x40, 0x00}) // a handshake record of 16 KiB
	writing:
		for {
			select {
			case <-stop:
				break writing
			default:
			}
			c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(junk); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
		}
		c.Close()
	}
}

// stalledConn's reads wait for stop: a TLS client over it sends its
// ClientHello and never its next flight.
type stalledConn struct {
	net.Conn
	stop <-chan struct{}
}

func (s stalledConn) Read([]byte) (int, error) {
	<-s.stop
	return 0, io.EOF
}
