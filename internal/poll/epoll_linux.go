//go:build linux

package poll

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
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

	// A Wait that may sleep parks the goroutine in Go's own poller,
	// which watches epfd (an epoll instance is readable while it has
	// events), instead of blocking its thread in epoll_wait. A thread
	// blocked in a system call holds its P: when every P is held so,
	// the runtime's sysmon takes one away after 20µs and then looks
	// again every 20µs, a nanosleep and a scheduler round each time
	// (measured: 1.5 of them per proxied short connection). nil when
	// the runtime cannot watch epfd, or after BlockThread.
	file     *os.File
	raw      syscall.RawConn
	deadline time.Time
	pollOnce func(uintptr) bool // polls into ready and pollErr: made once, not per park
	ready    int
	pollErr  error
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
	p.watchInRuntime()
	return p, nil
}

// watchInRuntime hands epfd to Go's poller, for Wait to park on. If the
// runtime cannot watch it, Wait blocks its thread instead.
func (p *Poller) watchInRuntime() {
	if unix.SetNonblock(p.epfd, true) != nil {
		return
	}
	p.file = os.NewFile(uintptr(p.epfd), "epoll") // closes epfd from now on
	if raw, err := p.file.SyscallConn(); err == nil && p.file.SetReadDeadline(time.Time{}) == nil {
		p.raw = raw
		p.pollOnce = func(uintptr) bool {
			p.ready, p.pollErr = p.poll()
			return p.ready > 0 || p.pollErr != nil
		}
	}
}

// BlockThread makes Wait block its thread in epoll_wait rather than park
// its goroutine: for a loop locked to its thread (LockOSThread), which
// would otherwise hand its P over at each sleep and wait for it back.
// Call it before the first Wait.
func (p *Poller) BlockThread() { p.raw = nil }

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
// and the peer's end, and on Linux needs no epoll_ctl after that but
// Rearm. (Each epoll_ctl is a system call: a proxied short connection
// made four, registered level-triggered, and HAProxy three.)
const EdgeTriggered = true

const connMask = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLOUT | unix.EPOLLET

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
	switch {
	case msec == 0:
		n, err = p.poll()
	case p.raw != nil:
		n, err = p.park(msec)
	default:
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
			Readable: e.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|failed) != 0,
			Writable: e.Events&(unix.EPOLLOUT|failed) != 0,
			Failed:   e.Events&failed != 0,
			PeerEnd:  e.Events&unix.EPOLLRDHUP != 0,
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

// park polls, and while nothing is ready parks the goroutine in Go's
// poller until epfd is readable or msec milliseconds (-1: no limit) have
// passed.
func (p *Poller) park(msec int) (int, error) {
	var deadline time.Time
	if msec > 0 {
		deadline = time.Now().Add(time.Duration(msec) * time.Millisecond)
	}
	if !deadline.Equal(p.deadline) {
		if err := p.file.SetReadDeadline(deadline); err != nil {
			return 0, err
		}
		p.deadline = deadline
	}
	p.ready, p.pollErr = 0, nil
	if err := p.raw.Read(p.pollOnce); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, err
	}
	return p.ready, p.pollErr
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
	if p.file != nil {
		return p.file.Close()
	}
	return unix.Close(p.epfd)
}
