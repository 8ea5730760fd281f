package transport

// Internal limits, for the tests.
const (
	InmemBufferSize = inmemBufferSize
	AcceptBacklog   = acceptBacklog
)
