// Package transport makes the byte-stream connections between a replmap
// primary and its replicas.
//
// [Transport] is the whole contract: a primary listens, a replica dials.
// Two implementations are provided:
//
//   - [TCP], for real deployments, optionally with TLS ([WithTLS]).
//   - [Inmem], an in-process network for tests and examples. Any non-empty
//     string is an address. Its connections are buffered pipes with full
//     [net.Conn] semantics, deadlines included, and it can inject faults:
//     cut every connection of a listener ([Inmem.Cut]), refuse dials
//     ([Inmem.Refuse]) and hold back the bytes flowing in one direction
//     ([Inmem.Stall]). It blocks only on channels and timers and starts no
//     goroutines, so it works inside testing/synctest bubbles.
//
// Errors wrap the sentinels [ErrConnRefused], [ErrAddrInUse] and
// [ErrConnReset] where they apply; test for them with [errors.Is].
//
// This package does not depend on the replmap package: any code that needs
// a pluggable stream network can use it.
package transport
