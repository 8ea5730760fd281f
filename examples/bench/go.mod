module github.com/replmap/replmap/examples/bench

go 1.26.0

require (
	github.com/redis/go-redis/v9 v9.23.0
	github.com/replmap/replmap v0.0.0
	github.com/stretchr/testify v1.12.1
	go.uber.org/goleak v1.3.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/hashicorp/go-msgpack/v2 v2.1.5 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/sync v0.17.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)

replace github.com/replmap/replmap => ../..
