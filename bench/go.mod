module github.com/seed358e4494/herd/bench

go 1.26.0

replace (
	github.com/seed358e4494/herd => ../
	github.com/seed358e4494/herd/redis => ../redis
)

require (
	github.com/panjf2000/gnet/v2 v2.9.4
	github.com/redis/go-redis/v9 v9.23.0
	github.com/redis/rueidis v1.0.79
	github.com/seed358e4494/herd v0.0.0-00010101000000-000000000000
	github.com/seed358e4494/herd/redis v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.48.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/panjf2000/ants/v2 v2.11.3 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.27.0 // indirect
	golang.org/x/sync v0.11.0 // indirect
	gopkg.in/natefinch/lumberjack.v2 v2.2.1 // indirect
)
