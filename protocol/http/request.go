package herdhttp

import (
	"bytes"
	"crypto/tls"
	"iter"
	"net"
	"net/url"

	"github.com/seed358e4494/herd"
)

// Request is a parsed request. It and every slice its methods return are
// views of the connection's buffers, valid only until the handler returns
// (also after Async): copy what you keep, or use the String helpers.
type Request struct {
	cs                          *conn
	b                           []byte
	method, target, path, query span
	authority                   span
	major, minor                int
	fields                      []field
	body                        span
	chunked                     bool
	wantClose                   bool
	keepAlive                   bool
}

func (r *Request) set(cs *conn, b []byte) {
	p := &cs.p
	*r = Request{
		cs:        cs,
		b:         b,
		method:    p.method,
		target:    p.target,
		path:      p.path,
		query:     p.query,
		authority: p.authority,
		major:     p.major,
		minor:     p.minor,
		fields:    p.fields,
		body:      span{int32(p.head), int32(p.bodyEnd)},
		chunked:   p.chunked,
		wantClose: p.wantClose,
		keepAlive: p.keepAlive,
	}
}

// Method is the request method, such as GET.
func (r *Request) Method() []byte { return r.method.of(r.b) }

// Target is the request-target as sent (RequestURI in net/http terms).
func (r *Request) Target() []byte { return r.target.of(r.b) }

// Path is the path of the target, still percent-encoded ("*" for
// "OPTIONS *", empty for CONNECT, "/" for an absolute-form target with no
// path, such as http://example.com).
func (r *Request) Path() []byte {
	if r.path.s == r.path.e && r.authority.s != r.authority.e {
		return slash
	}
	return r.path.of(r.b)
}

var slash = []byte("/")

// RawQuery is the query of the target without "?", still encoded.
func (r *Request) RawQuery() []byte { return r.query.of(r.b) }

// Query returns the raw (still encoded) value of the first query
// parameter named name, and whether there is one. The name is compared as
// sent.
func (r *Request) Query(name string) ([]byte, bool) {
	q := r.RawQuery()
	for len(q) > 0 {
		var pair []byte
		if i := bytes.IndexByte(q, '&'); i >= 0 {
			pair, q = q[:i], q[i+1:]
		} else {
			pair, q = q, nil
		}
		k, v := pair, []byte(nil)
		if i := bytes.IndexByte(pair, '='); i >= 0 {
			k, v = pair[:i], pair[i+1:]
		}
		if string(k) == name {
			if v == nil {
				v = pair[len(pair):]
			}
			return v, true
		}
	}
	return nil, false
}

// QueryString returns the decoded value of the first query parameter
// named name, or "" (a copy, valid after the handler returns).
func (r *Request) QueryString(name string) string {
	v, ok := r.Query(name)
	if !ok {
		return ""
	}
	s, err := url.QueryUnescape(string(v))
	if err != nil {
		return string(v)
	}
	return s
}

// Proto is the protocol version as sent, such as "HTTP/1.1".
func (r *Request) Proto() []byte {
	s := int(r.target.e) + 1
	return r.b[s : s+8 : s+8]
}

// ProtoMajor and ProtoMinor are the version's numbers.
func (r *Request) ProtoMajor() int { return r.major }

// ProtoMinor is the minor version number.
func (r *Request) ProtoMinor() int { return r.minor }

// ProtoAtLeast reports whether the request's version is at least
// major.minor.
func (r *Request) ProtoAtLeast(major, minor int) bool {
	return r.major > major || (r.major == major && r.minor >= minor)
}

// Header returns the value of the first field named name (case does not
// matter), with surrounding whitespace removed, or nil if there is none.
func (r *Request) Header(name string) []byte {
	for _, f := range r.fields {
		if equalFoldAny(f.name.of(r.b), name) {
			return f.value.of(r.b)
		}
	}
	return nil
}

// HeaderValues yields the value of every field named name, in order.
func (r *Request) HeaderValues(name string) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for _, f := range r.fields {
			if equalFoldAny(f.name.of(r.b), name) {
				if !yield(f.value.of(r.b)) {
					return
				}
			}
		}
	}
}

// Headers yields every field's name (as sent) and value, in order.
func (r *Request) Headers() iter.Seq2[[]byte, []byte] {
	return func(yield func(name, value []byte) bool) {
		for _, f := range r.fields {
			if !yield(f.name.of(r.b), f.value.of(r.b)) {
				return
			}
		}
	}
}

// NumHeaders is the number of header fields.
func (r *Request) NumHeaders() int { return len(r.fields) }

// HasToken reports whether any field named name holds token in its
// comma-separated list, ignoring case (as in "Connection: keep-alive,
// Upgrade").
func (r *Request) HasToken(name, token string) bool {
	found := false
	for _, f := range r.fields {
		if !equalFoldAny(f.name.of(r.b), name) {
			continue
		}
		forElements(f.value.of(r.b), func(t []byte) {
			if equalFoldAny(t, token) {
				found = true
			}
		})
		if found {
			return true
		}
	}
	return false
}

// Host is the host the request is for: the authority of an absolute-form
// target (GET http://example.com/ HTTP/1.1), else the Host field (nil if
// absent).
func (r *Request) Host() []byte {
	if r.authority.s != r.authority.e {
		// RFC 9112, 3.2.2: an absolute-form target's authority
		// overrides the Host field.
		return r.authority.of(r.b)
	}
	return r.Header("Host")
}

// Body is the whole request body, decoded if it came chunked (trailer
// fields are checked and dropped).
func (r *Request) Body() []byte { return r.body.of(r.b) }

// Chunked reports whether the body came with Transfer-Encoding: chunked.
func (r *Request) Chunked() bool { return r.chunked }

// Close reports whether the connection closes after this request (the
// client asked for it, or HTTP/1.0 without keep-alive).
func (r *Request) Close() bool { return r.wantClose }

// Conn is the connection the request came on (nil in tests that run the
// parser without a network).
func (r *Request) Conn() *herd.Conn { return r.cs.herdConn() }

// TLS is the state of the connection's TLS session, as net/http's
// Request.TLS: version, cipher suite, the server name the client asked for
// (SNI), the protocol ALPN chose, and the client's certificates
// (PeerCertificates, and VerifiedChains when the worker's tls.Config
// verified them: ClientAuth VerifyClientCertIfGiven or
// RequireAndVerifyClientCert, with ClientCAs). It is nil on a connection
// without TLS, so "r.TLS() == nil" tells plain HTTP from HTTPS (the
// request's target rarely names a scheme). The state is made once per
// connection, on first use, and shared by its requests: read it, do not
// modify it. r.Conn().TLS() gives the same, as a new copy on each call.
func (r *Request) TLS() *tls.ConnectionState { return r.cs.tlsState() }

// tlsState is the connection's TLS state, made on first use, from any
// goroutine (a handler may hold its request past the loop).
func (cs *conn) tlsState() *tls.ConnectionState {
	if cs == nil {
		return nil
	}
	if st := cs.tls.Load(); st != nil {
		return st
	}
	hc := cs.herdConn()
	if hc == nil {
		return nil
	}
	st := hc.TLS() // nil at once without TLS
	if st == nil || cs.tls.CompareAndSwap(nil, st) {
		return st
	}
	return cs.tls.Load()
}

// RemoteAddr is the client's address, or nil.
func (r *Request) RemoteAddr() net.Addr { return r.cs.remote() }

func (cs *conn) remote() net.Addr { return cs.c.RemoteAddr() }

// MethodString is Method as a string (a copy).
func (r *Request) MethodString() string { return string(r.Method()) }

// PathString is Path as a string (a copy).
func (r *Request) PathString() string { return string(r.Path()) }

// TargetString is Target as a string (a copy).
func (r *Request) TargetString() string { return string(r.Target()) }

// HeaderString is Header as a string (a copy).
func (r *Request) HeaderString(name string) string { return string(r.Header(name)) }

// BodyString is Body as a string (a copy).
func (r *Request) BodyString() string { return string(r.Body()) }
