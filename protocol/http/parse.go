package herdhttp

import (
	"bytes"
)

// The parser reads one request at a time from a byte slice that always
// starts at the request's first byte and grows as input arrives. All its
// positions are offsets from that start, so the same state is valid whether
// the bytes sit in the loop's read buffer or in the connection's own buffer.
//
// Chunked bodies are decoded in place: chunk data is moved down over the
// chunk framing, so the bytes look like [head][decoded body][gap][raw input
// not yet decoded]. compact removes the gap before the tail is kept.

// Parser phases.
const (
	phHead      = iota // request line and header fields
	phBody             // Content-Length body
	phChunkSize        // a chunk-size line
	phChunkData        // chunk data
	phChunkCRLF        // the CRLF after chunk data
	phTrailers         // the trailer section after the last chunk
)

// Results of advance besides an HTTP status code.
const (
	needMore = 0
	complete = 1
	headDone = 2 // internal: the header section is read
)

// maxChunkSizeDigits bounds a chunk-size's hex digits, as Go's
// net/http/internal chunked reader does.
const maxChunkSizeDigits = 16

// maxChunkLine bounds a chunk-size line with its extensions.
const maxChunkLine = 4096

// span is a range of offsets [s, e) into the request bytes.
type span struct{ s, e int32 }

func (sp span) of(b []byte) []byte { return b[sp.s:sp.e:sp.e] }

// field is one header field line: name and value (OWS trimmed).
type field struct{ name, value span }

type parser struct {
	phase   int
	started bool // a byte of this request has arrived
	line    int  // start of the line being read
	scan    int  // no LF in [line, scan)
	reqLine bool // the request line has been read

	method, target, path, query span
	authority                   span // the host of an absolute-form target
	major, minor                int
	fields                      []field
	fieldBuf                    [8]field // fields' first array: no allocation for most requests
	head                        int      // end of the header section

	clen      int64 // Content-Length, or -1
	chunked   bool
	wantClose bool // Connection: close, or HTTP/1.0 without keep-alive
	keepAlive bool // HTTP/1.0 with Connection: keep-alive
	expect100 bool
	sent100   bool

	raw      int   // next raw byte of a chunked body
	bodyEnd  int   // end of the decoded body
	left     int64 // bytes left in the current chunk
	trailers int   // start of the trailer section
	consumed int   // bytes of input the complete request took
}

func (p *parser) reset() {
	fields := p.fields[:0]
	if fields == nil || cap(fields) > 64 {
		// A rare request with many fields: do not keep its array.
		fields = p.fieldBuf[:0]
	}
	*p = parser{fields: fields, clen: -1}
}

// limits are a Server's resolved limits.
type limits struct {
	header      int
	body        int64
	headerTime  int64 // nanoseconds; 0: none
	readTime    int64
	idleTime    int64
	maxInFlight int
}

// advance parses as far as b allows. It returns needMore, complete (then
// p.consumed is the request's length in b), or an HTTP status code for a
// request that must be rejected (the connection is then closed).
func (p *parser) advance(b []byte, lim *limits) int {
	for {
		switch p.phase {
		case phHead:
			if st := p.readHead(b, lim); st != headDone {
				return st
			}
		case phBody:
			end := int64(p.head) + p.clen
			if int64(len(b)) < end {
				return needMore
			}
			p.bodyEnd = int(end)
			p.consumed = int(end)
			return complete
		case phChunkSize:
			lf := p.findLF(b)
			if lf < 0 {
				if len(b)-p.raw > maxChunkLine {
					return 400
				}
				return needMore
			}
			if lf-p.raw > maxChunkLine {
				return 400
			}
			if lf == p.raw || b[lf-1] != '\r' {
				return 400 // bare LF
			}
			size, ok := parseChunkLine(b[p.raw : lf-1])
			if !ok {
				return 400
			}
			p.raw = lf + 1
			p.line, p.scan = p.raw, p.raw
			if size == 0 {
				p.trailers = p.raw
				p.phase = phTrailers
				continue
			}
			if size > lim.body-int64(p.bodyEnd-p.head) {
				return 413
			}
			p.left = size
			p.phase = phChunkData
		case phChunkData:
			n := len(b) - p.raw
			if int64(n) > p.left {
				n = int(p.left)
			}
			if p.bodyEnd != p.raw {
				copy(b[p.bodyEnd:], b[p.raw:p.raw+n])
			}
			p.bodyEnd += n
			p.raw += n
			p.left -= int64(n)
			if p.left > 0 {
				return needMore
			}
			p.phase = phChunkCRLF
		case phChunkCRLF:
			switch len(b) - p.raw {
			case 0:
				return needMore
			case 1:
				if b[p.raw] != '\r' {
					return 400
				}
				return needMore
			}
			if b[p.raw] != '\r' || b[p.raw+1] != '\n' {
				return 400
			}
			p.raw += 2
			p.line, p.scan = p.raw, p.raw
			p.phase = phChunkSize
		case phTrailers:
			for {
				lf := p.findLF(b)
				if lf < 0 {
					if len(b)-p.trailers > lim.header {
						return 431
					}
					return needMore
				}
				if lf+1-p.trailers > lim.header {
					return 431
				}
				if lf == p.line || b[lf-1] != '\r' {
					return 400
				}
				line := b[p.line : lf-1]
				p.line, p.scan = lf+1, lf+1
				p.raw = lf + 1
				if len(line) == 0 {
					p.consumed = lf + 1
					return complete
				}
				if _, ok := parseField(line); !ok {
					return 400
				}
			}
		}
	}
}

// findLF finds the next LF at or after p.line, scanning only bytes not
// scanned before. It returns -1 (and remembers how far it looked) if none.
func (p *parser) findLF(b []byte) int {
	if p.scan < p.line {
		p.scan = p.line
	}
	if i := bytes.IndexByte(b[p.scan:], '\n'); i >= 0 {
		return p.scan + i
	}
	p.scan = len(b)
	return -1
}

// readHead reads the request line and the header fields. It returns
// headDone once the header section is read and the framing decided.
func (p *parser) readHead(b []byte, lim *limits) int {
	for {
		if p.reqLine && p.scan <= p.line {
			// Header lines not looked at before: one pass over each.
			if st := p.scanFields(b, lim); st != needMore {
				return st
			}
		}
		lf := p.findLF(b)
		if lf < 0 {
			if len(b) > lim.header {
				return 431
			}
			return needMore
		}
		if lf+1 > lim.header {
			return 431
		}
		if lf == p.line || b[lf-1] != '\r' {
			return 400 // bare LF
		}
		start := p.line
		line := b[start : lf-1]
		p.line = lf + 1
		if !p.reqLine {
			if len(line) == 0 {
				continue // an empty line before the request line is ignored
			}
			if st := p.parseRequestLine(b, start, lf-1); st != 0 {
				return st
			}
			p.reqLine = true
			continue
		}
		if len(line) == 0 {
			p.head = lf + 1
			return p.framing(b, lim)
		}
		f, ok := parseField(line)
		if !ok {
			return 400
		}
		f.name.s += int32(start)
		f.name.e += int32(start)
		f.value.s += int32(start)
		f.value.e += int32(start)
		p.fields = append(p.fields, f)
	}
}

// scanFields is the fast path of readHead for the header field lines: it
// reads, in a single pass over their bytes, the lines from p.line on that
// are complete and valid, and the empty line that ends the section. It
// stops (returning needMore) at the first line it cannot accept that way,
// leaving it to the general path of readHead, which decides about it as it
// would have without this one: incomplete, bare LF, bad name or value,
// obs-fold. A line accepted here is one the general path accepts, with
// the same spans; the limit is checked as it checks it, once the LF is
// found.
func (p *parser) scanFields(b []byte, lim *limits) int {
	for {
		s := p.line
		i := s
		for i < len(b) && isToken[b[i]] {
			i++
		}
		if i == s {
			if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
				// The empty line: the end of the header section.
				if i+2 > lim.header {
					return 431
				}
				p.line = i + 2
				p.head = i + 2
				return p.framing(b, lim)
			}
			return needMore
		}
		if i >= len(b) || b[i] != ':' {
			return needMore
		}
		ne := i
		i++
		for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
			i++
		}
		vs := i
		for i < len(b) && isFieldByte[b[i]] {
			i++
		}
		if i+1 >= len(b) || b[i] != '\r' || b[i+1] != '\n' {
			return needMore
		}
		ve := i
		for ve > vs && (b[ve-1] == ' ' || b[ve-1] == '\t') {
			ve--
		}
		if i+2 > lim.header {
			return 431
		}
		p.fields = append(p.fields, field{span{int32(s), int32(ne)}, span{int32(vs), int32(ve)}})
		p.line = i + 2
	}
}

// parseRequestLine parses method SP request-target SP HTTP-version, found
// at b[s:e].
func (p *parser) parseRequestLine(b []byte, s, e int) int {
	line := b[s:e]
	// The method: tokens up to the first SP.
	sp1 := 0
	for sp1 < len(line) && isToken[line[sp1]] {
		sp1++
	}
	if sp1 == 0 || sp1 == len(line) || line[sp1] != ' ' {
		return 400
	}
	// The target: visible ASCII up to the next SP. Any other byte before
	// that SP is in the target, and rejected.
	rest := line[sp1+1:]
	sp2 := 0
	for sp2 < len(rest) && rest[sp2] > ' ' && rest[sp2] < 0x7f {
		sp2++
	}
	if sp2 == 0 || sp2 == len(rest) || rest[sp2] != ' ' {
		return 400
	}
	target := rest[:sp2]
	version := rest[sp2+1:]
	if len(version) != 8 || string(version[:5]) != "HTTP/" || !isDigit(version[5]) || version[6] != '.' || !isDigit(version[7]) {
		return 400
	}
	p.major, p.minor = int(version[5]-'0'), int(version[7]-'0')
	if p.major != 1 {
		return 505
	}
	p.method = span{int32(s), int32(s + sp1)}
	ts := s + sp1 + 1
	p.target = span{int32(ts), int32(ts + sp2)}
	method := line[:sp1]
	// The path: origin-form, absolute-form, authority-form (CONNECT only),
	// asterisk-form (OPTIONS only).
	var ps int
	switch {
	case string(method) == "CONNECT":
		if target[0] == '/' || bytes.ContainsAny(target, "/?#@") {
			return 400
		}
		p.path = span{int32(ts), int32(ts)}
		p.query = p.path
		return 0
	case target[0] == '/':
		ps = 0
	case len(target) == 1 && target[0] == '*':
		if string(method) != "OPTIONS" {
			return 400
		}
		p.path = p.target
		p.query = span{p.target.e, p.target.e}
		return 0
	default:
		i := bytes.Index(target, []byte("://"))
		if i <= 0 || !isAlpha(target[0]) {
			return 400
		}
		for _, c := range target[:i] {
			if !isAlpha(c) && !isDigit(c) && c != '+' && c != '-' && c != '.' {
				return 400
			}
		}
		auth := i + 3
		j := bytes.IndexAny(target[auth:], "/?#")
		if j < 0 {
			ps = len(target)
		} else {
			ps = auth + j
		}
		if auth == ps {
			return 400 // no host
		}
		host := target[auth:ps]
		if k := bytes.LastIndexByte(host, '@'); k >= 0 {
			host = host[k+1:] // userinfo is not part of the host
		}
		if len(host) == 0 {
			return 400
		}
		p.authority = span{int32(ts + ps - len(host)), int32(ts + ps)}
	}
	pe := len(target)
	if i := bytes.IndexByte(target[ps:], '#'); i >= 0 {
		return 400 // a fragment is never sent
	}
	qs, qe := pe, pe
	if i := bytes.IndexByte(target[ps:], '?'); i >= 0 {
		pe = ps + i
		qs = pe + 1
	}
	p.path = span{int32(ts + ps), int32(ts + pe)}
	p.query = span{int32(ts + qs), int32(ts + qe)}
	return 0
}

// framing reads the fields that decide the message's framing and
// connection handling, and moves on to the body.
func (p *parser) framing(b []byte, lim *limits) int {
	var (
		hosts   int
		haveCL  bool
		codings int  // Transfer-Encoding codings
		chunks  int  // how many of them are chunked
		last    bool // the last one is chunked
		close   bool
		keep    bool
		expect  int // 0 none, 1 100-continue, 2 other
	)
	p.clen = -1
	for _, f := range p.fields {
		name, value := f.name.of(b), f.value.of(b)
		switch len(name) {
		case 4:
			if equalFold(name, "host") {
				hosts++
				if !validHost(value) {
					return 400
				}
			}
		case 6:
			if equalFold(name, "expect") {
				if equalFold(value, "100-continue") {
					if expect == 0 {
						expect = 1
					}
				} else {
					expect = 2
				}
			}
		case 10:
			if equalFold(name, "connection") {
				forElements(value, func(t []byte) {
					if equalFold(t, "close") {
						close = true
					} else if equalFold(t, "keep-alive") {
						keep = true
					}
				})
			}
		case 14:
			if equalFold(name, "content-length") {
				n, ok := parseContentLength(value)
				if !ok || (haveCL && n != p.clen) {
					return 400
				}
				haveCL = true
				p.clen = n
			}
		case 17:
			if equalFold(name, "transfer-encoding") {
				// The codings of all Transfer-Encoding fields form one list.
				n := codings
				forElements(value, func(t []byte) {
					codings++
					last = equalFold(t, "chunked")
					if last {
						chunks++
					}
				})
				if codings == n {
					return 400 // an empty Transfer-Encoding
				}
			}
		}
	}
	http11 := p.minor >= 1
	switch {
	case p.major == 1 && p.minor >= 1 && hosts != 1:
		return 400
	case hosts > 1:
		return 400
	}
	if http11 {
		p.wantClose = close
	} else {
		p.wantClose = close || !keep
		p.keepAlive = keep && !close
	}
	if codings > 0 {
		switch {
		case haveCL:
			return 400 // both: the classic smuggling vector
		case !http11:
			return 400 // Transfer-Encoding in HTTP/1.0 is faulty framing
		case !last || chunks > 1:
			return 400 // the length cannot be known
		case codings > 1:
			return 501 // other codings before chunked: not implemented
		}
		p.chunked = true
	}
	if expect == 2 {
		return 417
	}
	p.expect100 = expect == 1 && http11
	if p.chunked {
		p.raw, p.bodyEnd = p.head, p.head
		p.line, p.scan = p.head, p.head
		p.phase = phChunkSize
		return headDone
	}
	if p.clen < 0 {
		p.clen = 0
	}
	if p.clen > lim.body {
		return 413
	}
	p.phase = phBody
	return headDone
}

// compact removes the gap a chunked body leaves between the decoded data
// and the raw input not yet decoded, and returns the new length of b.
func (p *parser) compact(b []byte) int {
	if p.phase < phChunkSize || p.raw == p.bodyEnd {
		return len(b)
	}
	shift := p.raw - p.bodyEnd
	n := copy(b[p.bodyEnd:], b[p.raw:])
	p.raw -= shift
	p.line -= shift
	p.scan -= shift
	if p.phase == phTrailers {
		p.trailers -= shift
	}
	return p.bodyEnd + n
}

// whole is the length of the request being read once it is known (a
// Content-Length body), or 0: its input buffer grows to that and no more.
func (p *parser) whole() int {
	if p.phase == phBody && !p.chunked {
		return p.head + int(p.clen)
	}
	return 0
}

// bodyStarted reports whether bytes of the body have arrived (or the body
// is empty).
func (p *parser) bodyStarted(n int) bool { return n > p.head }

// parseField checks one field line ("name: value") and returns the spans of
// the name and of the value with surrounding whitespace removed. Rejected:
// obs-fold (leading whitespace), whitespace or any non-token byte in the
// name, an empty name, control characters (other than HTAB) in the value.
func parseField(line []byte) (field, bool) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return field{}, false
	}
	for _, c := range line[:colon] {
		if !isToken[c] {
			return field{}, false
		}
	}
	vs, ve := colon+1, len(line)
	for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
		vs++
	}
	for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
		ve--
	}
	for _, c := range line[vs:ve] {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return field{}, false
		}
	}
	return field{span{0, int32(colon)}, span{int32(vs), int32(ve)}}, true
}

// parseContentLength parses a Content-Length value: digits, or a comma
// list whose elements are all the same number.
func parseContentLength(v []byte) (int64, bool) {
	n := int64(-1)
	ok := true
	count := 0
	forElementsAll(v, func(t []byte) {
		count++
		m, good := parseDigits(t)
		if !good || (n >= 0 && m != n) {
			ok = false
			return
		}
		n = m
	})
	return n, ok && count > 0 && n >= 0
}

// parseDigits parses 1*DIGIT into a non-negative int64.
func parseDigits(t []byte) (int64, bool) {
	if len(t) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range t {
		if !isDigit(c) {
			return 0, false
		}
		d := int64(c - '0')
		if n > (1<<63-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// parseChunkLine parses chunk-size [chunk-ext]:
//
//	chunk-size = 1*HEXDIG
//	chunk-ext  = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
//	ext-val    = token / quoted-string
//
// A chunk-size of more than 16 digits is refused even if its value is
// small (leading zeros): as Go's own chunked reader refuses it, so that a
// proxy in front and herd never disagree on where a body ends.
func parseChunkLine(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		d, ok := unhex(line[i])
		if !ok {
			break
		}
		if i == maxChunkSizeDigits || n > (1<<63-1)>>4 {
			return 0, false // too long, or overflow
		}
		n = n<<4 | int64(d)
	}
	if i == 0 {
		return 0, false
	}
	for i < len(line) {
		i = skipWS(line, i)
		if i == len(line) || line[i] != ';' {
			return 0, false
		}
		i = skipWS(line, i+1)
		j := i
		for j < len(line) && isToken[line[j]] {
			j++
		}
		if j == i {
			return 0, false
		}
		i = skipWS(line, j)
		if i == len(line) || line[i] != '=' {
			if i < len(line) && line[i] != ';' {
				return 0, false
			}
			continue
		}
		i = skipWS(line, i+1)
		if i == len(line) {
			return 0, false
		}
		if line[i] == '"' {
			i++
			for {
				if i == len(line) {
					return 0, false
				}
				c := line[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' {
					i++
					if i == len(line) || !isQuotedPairChar(line[i]) {
						return 0, false
					}
				} else if !isQdtext(c) {
					return 0, false
				}
				i++
			}
		} else {
			j := i
			for j < len(line) && isToken[line[j]] {
				j++
			}
			if j == i {
				return 0, false
			}
			i = j
		}
	}
	return n, true
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	return i
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isQdtext(c byte) bool {
	return c == '\t' || c == ' ' || c == 0x21 || (0x23 <= c && c <= 0x5b) || (0x5d <= c && c <= 0x7e) || c >= 0x80
}

func isQuotedPairChar(c byte) bool { return c == '\t' || (c >= ' ' && c != 0x7f) }

// validHost reports whether v is a Host value: uri-host [":" port] (RFC
// 9110, 7.2), where uri-host is an IP-literal ("[" hex digits, ":" and "."
// "]"), or an IPv4 address or reg-name (unreserved, pct-encoded and
// sub-delims characters), and port is digits. Empty is allowed (a target
// without authority).
func validHost(v []byte) bool {
	i := 0
	if len(v) > 0 && v[0] == '[' {
		for i = 1; i < len(v) && v[i] != ']'; i++ {
			if _, hex := unhex(v[i]); !hex && v[i] != ':' && v[i] != '.' {
				return false
			}
		}
		if i == len(v) || i == 1 {
			return false // unclosed, or empty
		}
		i++
	} else {
		for ; i < len(v); i++ {
			c := v[i]
			if isRegName[c] {
				continue
			}
			if c != '%' {
				break // ':' or a byte that is not allowed: decided below
			}
			if i+2 >= len(v) {
				return false
			}
			_, h1 := unhex(v[i+1])
			_, h2 := unhex(v[i+2])
			if !h1 || !h2 {
				return false
			}
			i += 2
		}
	}
	if i == len(v) {
		return true
	}
	if v[i] != ':' {
		return false
	}
	for _, c := range v[i+1:] {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlpha(c byte) bool { return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') }

// isToken reports the tchar of RFC 9110.
// isRegName: the unreserved and sub-delims characters of RFC 3986.
var isRegName = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = isAlpha(byte(c)) || isDigit(byte(c))
	}
	for _, c := range "-._~!$&'()*+,;=" {
		t[c] = true
	}
	return t
}()

// isFieldByte: the bytes of a field value (field-vchar, SP and HTAB).
var isFieldByte = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = c == '\t' || (c >= ' ' && c != 0x7f)
	}
	return t
}()

var isToken = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return
}()

// equalFold compares b with the lower-case ASCII s, ignoring case.
func equalFold[B ~[]byte | ~string](b B, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// equalFoldAny compares two ASCII strings ignoring case.
func equalFoldAny[B ~[]byte | ~string](b B, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// forElements calls f for each non-empty element of a comma-separated list,
// with surrounding whitespace trimmed.
func forElements(v []byte, f func([]byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var e []byte
		if i < 0 {
			e, v = v, nil
		} else {
			e, v = v[:i], v[i+1:]
		}
		e = trimOWS(e)
		if len(e) > 0 {
			f(e)
		}
	}
}

// forElementsAll is forElements that also reports empty elements.
func forElementsAll(v []byte, f func([]byte)) {
	for {
		i := bytes.IndexByte(v, ',')
		if i < 0 {
			f(trimOWS(v))
			return
		}
		f(trimOWS(v[:i]))
		v = v[i+1:]
	}
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
