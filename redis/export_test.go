//go:build linux || darwin || freebsd

package redis

// Channel is the Redis name of a gateway channel, for the tests.
func (b *Broker) Channel(c string) string { return b.channel(c) }
