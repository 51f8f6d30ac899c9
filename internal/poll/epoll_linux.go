//go:build linux

package poll

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Poller is an epoll instance with an eventfd for wake-ups.
type Poller struct {
	epfd    int
	wakefd  int
	waking  atomic.Bool // a wake-up is pending: spare the eventfd write
	closeMu sync.Mutex  // Wake never writes to a closed (maybe reused) descriptor
	closed  bool
	events  []unix.EpollEvent
	wakebuf [8]byte
}

// New makes a poller whose Wait returns at most maxEvents events a call.
func New(maxEvents int) (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	p := &Poller{epfd: epfd, wakefd: wakefd, events: make([]unix.EpollEvent, maxEvents)}
	if err := p.ctl(unix.EPOLL_CTL_ADD, wakefd, unix.EPOLLIN); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Poller) ctl(op, fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(p.epfd, op, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl(%d, fd %d): %w", op, fd, err)
	}
	return nil
}

// AddListener registers a listening socket. With exclusive set, the kernel
// wakes only one of the pollers sharing the socket per connection
// (EPOLLEXCLUSIVE, Linux 4.5+) instead of all of them.
func (p *Poller) AddListener(fd int, exclusive bool) error {
	ev := uint32(unix.EPOLLIN)
	if exclusive {
		ev |= unix.EPOLLEXCLUSIVE
	}
	return p.ctl(unix.EPOLL_CTL_ADD, fd, ev)
}

// EdgeTriggered says connections are registered edge-triggered: each is
// reported once per change of its readiness, not while it lasts. Its
// watcher must read until a read comes up short (or keep track of what
// it left), and need not tell the poller when it pauses reading or has
// something to write: a connection is registered once, for reads, writes
// and the peer's end, and needs no epoll_ctl after that but a Modify when
// its reading resumes. (Each epoll_ctl is a system call: a proxied short
// connection made four, registered level-triggered; HAProxy makes three.)
const EdgeTriggered = true

const connMask = unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLRDHUP | unix.EPOLLOUT | unix.EPOLLET

// Add registers a connection.
func (p *Poller) Add(fd int, read bool) error {
	return p.ctl(unix.EPOLL_CTL_ADD, fd, connMask)
}

// AddConnecting registers a socket being connected; the connect's end is
// reported as write readiness.
func (p *Poller) AddConnecting(fd int) error {
	return p.ctl(unix.EPOLL_CTL_ADD, fd, connMask)
}

// Modify makes fd reported again if it is ready now: for a connection
// whose reading resumes, whose readiness may have been reported (and
// passed over) while it was paused.
func (p *Poller) Modify(fd int, read, write bool) error {
	return p.ctl(unix.EPOLL_CTL_MOD, fd, connMask)
}

// Delete stops watching fd. Closing fd does the same for a connection; a
// listener shared by several pollers must be deleted from each.
func (p *Poller) Delete(fd int) error {
	return p.ctl(unix.EPOLL_CTL_DEL, fd, 0)
}

// Wait blocks for at most msec milliseconds (-1: no limit) and returns the
// events in out, reusing its storage.
func (p *Poller) Wait(msec int, out []Event) ([]Event, error) {
	out = out[:0]
	var n int
	var err error
	if msec == 0 {
		n, err = p.poll()
	} else {
		n, err = unix.EpollWait(p.epfd, p.events, msec)
	}
	if err != nil {
		if err == unix.EINTR {
			return out, nil
		}
		return out, fmt.Errorf("epoll_wait: %w", err)
	}
	for i := 0; i < n; i++ {
		e := &p.events[i]
		fd := int(e.Fd)
		if fd == p.wakefd {
			// Drain, then clear the pending flag. A Wake before the clear
			// finds the flag set and writes nothing, but what it announced
			// is visible to the caller, which looks after Wait returns; a
			// Wake after the clear writes and is seen on the next Wait.
			// (Clearing first let a racing Wake's write be drained here
			// while its flag stayed set: every later Wake was skipped.)
			unix.Read(p.wakefd, p.wakebuf[:])
			p.waking.Store(false)
			out = append(out, Event{Wake: true})
			continue
		}
		const failed = unix.EPOLLERR | unix.EPOLLHUP
		out = append(out, Event{
			Fd:       fd,
			Readable: e.Events&(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP|failed) != 0,
			Writable: e.Events&(unix.EPOLLOUT|failed) != 0,
			Failed:   e.Events&failed != 0,
			PeerEnd:  e.Events&unix.EPOLLRDHUP != 0,
			Urgent:   e.Events&unix.EPOLLPRI != 0,
		})
	}
	return out, nil
}

// poll takes the events ready now, without sleeping. It cannot block, so
// it spares the Go scheduler's bookkeeping of a system call that might.
// epoll_pwait with no signal mask is epoll_wait, and exists on every Linux
// architecture (arm64, riscv64 and loong64 have no epoll_wait).
func (p *Poller) poll() (int, error) {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(p.epfd), uintptr(unsafe.Pointer(&p.events[0])), uintptr(len(p.events)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
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
	one := uint64(1)
	_, err := unix.Write(p.wakefd, (*[8]byte)(unsafe.Pointer(&one))[:])
	if err != nil && err != unix.EAGAIN {
		return fmt.Errorf("eventfd write: %w", err)
	}
	return nil
}

// Close releases the poller.
func (p *Poller) Close() error {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	unix.Close(p.wakefd)
	return unix.Close(p.epfd)
}
