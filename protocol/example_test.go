package protocol_test

import (
	"fmt"

	"github.com/seed358e4494/herd/protocol"
)

// A Frame packet is a 4-byte big-endian length that counts the whole packet,
// header included, then the message: Workerman's pack('N', 4 + strlen($msg)) . $msg.
func ExampleFrame() {
	var f protocol.Frame
	wire := f.Encode(nil, []byte("hello"))
	fmt.Printf("% x\n", wire)

	// Reading it back: Input gives the packet's length, Decode the message.
	n, err := f.Input(wire)
	fmt.Println(n, err, string(f.Decode(wire[:n])))

	// An empty message is just a header.
	fmt.Printf("% x\n", f.Encode(nil, nil))
	// Output:
	// 00 00 00 09 68 65 6c 6c 6f
	// 9 <nil> hello
	// 00 00 00 04
}

// A Text packet is a line: Encode appends "\n", Decode strips "\n" or "\r\n".
func ExampleText() {
	var t protocol.Text
	fmt.Printf("%q\n", t.Encode(nil, []byte("hello")))

	buf := []byte("ping\r\npong\nhalf a li")
	for {
		n, _ := t.Input(buf)
		if n == 0 || n > len(buf) {
			break
		}
		fmt.Printf("%q\n", t.Decode(buf[:n]))
		buf = buf[n:]
	}
	fmt.Printf("waiting for the rest of %q\n", buf)
	// Output:
	// "hello\n"
	// "ping"
	// "pong"
	// waiting for the rest of "half a li"
}
