//go:build darwin || freebsd

package poll

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// wakeIdent is the EVFILT_USER identifier used for wake-ups.
const wakeIdent = 0

// Poller is a kqueue with an EVFILT_USER event for wake-ups.
type Poller struct {
	kq      int
	waking  atomic.Bool
	closeMu sync.Mutex // Wake never uses a closed (maybe reused) descriptor
	closed  bool
	events  []unix.Kevent_t
}

// New makes a poller whose Wait returns at most maxEvents events a call.
func New(maxEvents int) (*Poller, error) {
	kq, err := unix.Kqueue()
	if err != nil {
		return nil, fmt.Errorf("kqueue: %w", err)
	}
	unix.CloseOnExec(kq)
	p := &Poller{kq: kq, events: make([]unix.Kevent_t, maxEvents)}
	if err := p.change(unix.Kevent_t{Ident: wakeIdent, Filter: unix.EVFILT_USER, Flags: unix.EV_ADD | unix.EV_CLEAR}); err != nil {
		unix.Close(kq)
		return nil, err
	}
	return p, nil
}

func (p *Poller) change(changes ...unix.Kevent_t) error {
	if _, err := unix.Kevent(p.kq, changes, nil, nil); err != nil {
		return fmt.Errorf("kevent: %w", err)
	}
	return nil
}

func ev(fd int, filter int16, flags uint16) unix.Kevent_t {
	var k unix.Kevent_t
	unix.SetKevent(&k, fd, int(filter), int(flags))
	return k
}

// AddListener registers a listening socket. kqueue has no exclusive wake-up:
// every poller sharing the socket is told of each connection.
func (p *Poller) AddListener(fd int, exclusive bool) error {
	return p.change(ev(fd, unix.EVFILT_READ, unix.EV_ADD))
}

// EdgeTriggered is false: a connection is reported for as long as it is
// ready for what it is watched for, and Modify changes what that is.
const EdgeTriggered = false

// Add registers a connection; its write filter starts disabled.
func (p *Poller) Add(fd int, read bool) error {
	rflag := uint16(unix.EV_ADD)
	if !read {
		rflag |= unix.EV_DISABLE
	}
	return p.change(ev(fd, unix.EVFILT_READ, rflag), ev(fd, unix.EVFILT_WRITE, unix.EV_ADD|unix.EV_DISABLE))
}

// AddConnecting registers a socket being connected, for write readiness
// only: the connect's end.
func (p *Poller) AddConnecting(fd int) error {
	return p.change(ev(fd, unix.EVFILT_READ, unix.EV_ADD|unix.EV_DISABLE), ev(fd, unix.EVFILT_WRITE, unix.EV_ADD))
}

// Modify sets which of read and write readiness fd is watched for.
func (p *Poller) Modify(fd int, read, write bool) error {
	onoff := func(on bool) uint16 {
		if on {
			return unix.EV_ENABLE
		}
		return unix.EV_DISABLE
	}
	return p.change(ev(fd, unix.EVFILT_READ, onoff(read)), ev(fd, unix.EVFILT_WRITE, onoff(write)))
}

// Delete stops watching fd: both filters of a connection (one that moves
// to another loop must not leave a write filter firing here), the read
// filter of a listener (which has no write filter: that error is ignored).
func (p *Poller) Delete(fd int) error {
	err := p.change(ev(fd, unix.EVFILT_READ, unix.EV_DELETE))
	p.change(ev(fd, unix.EVFILT_WRITE, unix.EV_DELETE))
	return err
}

// Wait blocks for at most msec milliseconds (-1: no limit).
func (p *Poller) Wait(msec int, out []Event) ([]Event, error) {
	out = out[:0]
	var ts *unix.Timespec
	if msec >= 0 {
		t := unix.NsecToTimespec(int64(msec) * 1e6)
		ts = &t
	}
	n, err := unix.Kevent(p.kq, nil, p.events, ts)
	if err != nil {
		if err == unix.EINTR {
			return out, nil
		}
		return out, fmt.Errorf("kevent wait: %w", err)
	}
	for i := 0; i < n; i++ {
		e := &p.events[i]
		if e.Filter == unix.EVFILT_USER {
			p.waking.Store(false)
			out = append(out, Event{Wake: true})
			continue
		}
		failed := e.Flags&(unix.EV_EOF|unix.EV_ERROR) != 0
		out = append(out, Event{
			Fd:       int(e.Ident),
			Readable: e.Filter == unix.EVFILT_READ || failed,
			Writable: e.Filter == unix.EVFILT_WRITE || failed,
			Failed:   e.Flags&unix.EV_ERROR != 0,
			PeerEnd:  e.Filter == unix.EVFILT_READ && e.Flags&unix.EV_EOF != 0,
		})
	}
	return out, nil
}

// Wake makes the current or next Wait return. Safe from any goroutine.
func (p *Poller) Wake() error {
	if !p.waking.CompareAndSwap(false, true) {
		return nil
	}
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return nil
	}
	return p.change(unix.Kevent_t{Ident: wakeIdent, Filter: unix.EVFILT_USER, Fflags: unix.NOTE_TRIGGER})
}

// Close releases the poller.
func (p *Poller) Close() error {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	return unix.Close(p.kq)
}
