module github.com/workpool-dev/workpool/tests/go-dead-letters

go 1.24

require github.com/workpool-dev/workpool/clients/go v0.0.0

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/dgryski/go-rendezvous v0.0.0-20200823014737-9f7001d12a5f // indirect
	github.com/redis/go-redis/v9 v9.17.3 // indirect
)

// The client of this repository.
replace github.com/workpool-dev/workpool/clients/go => ../../clients/go
