package replmap

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"
)

// Errors returned by this package. Compare them with [errors.Is]: most are
// wrapped with the detail of what went wrong.
var (
	// ErrClosed is returned by calls on a closed Primary or Replica, by
	// Serve after Close, and by a Wait that Close interrupted.
	ErrClosed = errors.New("replmap: closed")

	// ErrReadOnly is returned by every write on a Replica.
	ErrReadOnly = errors.New("replmap: replica is read-only")

	// ErrTooLarge is returned when a key, a value or a frame exceeds the
	// configured limit ([WithMaxKeySize], [WithMaxValueSize], [WithMaxFrameSize]).
	ErrTooLarge = errors.New("replmap: size limit exceeded")

	// ErrProtocol reports bytes from the peer that break the wire protocol:
	// a malformed, truncated or unexpected frame, or an ACK for data that
	// was never sent. The link is dropped and the replica resyncs.
	ErrProtocol = errors.New("replmap: protocol error")

	// ErrChecksum reports a frame or snapshot whose CRC-32C does not match
	// its bytes. Nothing from it is applied; the link is dropped.
	ErrChecksum = errors.New("replmap: checksum mismatch")

	// ErrVersion reports a peer that speaks another protocol version.
	ErrVersion = errors.New("replmap: unsupported protocol version")

	// ErrReplicaTooSlow is the reason a primary drops a replica whose
	// unsent stream grew past [WithReplicaBufferLimit]. The replica
	// reconnects and, since the backlog no longer covers it, full-syncs.
	ErrReplicaTooSlow = errors.New("replmap: replica fell too far behind")

	// ErrLinkTimeout reports a link that stayed silent longer than
	// [WithLinkTimeout].
	ErrLinkTimeout = errors.New("replmap: link timed out")

	// ErrInvalidOption is wrapped by the error NewPrimary and NewReplica
	// return for options out of range.
	ErrInvalidOption = errors.New("replmap: invalid option")
)

// LinkError describes the failure of one replication link, on either end.
// It wraps the cause, so errors.Is(err, ErrProtocol) and the like work.
type LinkError struct {
	Op   string // what the link was doing: "dial", "handshake", "sync", "stream"
	Addr string // the peer's address
	Err  error  // the cause
}

func (e *LinkError) Error() string {
	return "replmap: " + e.Op + " " + e.Addr + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *LinkError) Unwrap() error { return e.Err }

// newReplID returns a fresh replication ID: 40 random hex digits, as Redis
// uses. A primary takes a new one every time it starts, so a replica can
// tell that the history it holds is not this primary's.
func newReplID() string {
	var b [20]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// PrimaryInfo is a point-in-time view of a Primary, returned by
// [Primary.Info].
type PrimaryInfo struct {
	ReplID       string        // replication ID of this primary's history
	Offset       uint64        // replication offset of the last write
	FullSyncs    uint64        // full syncs served since start
	PartialSyncs uint64        // partial resyncs served since start
	DroppedSlow  uint64        // links dropped since start for falling past a replica buffer limit
	BacklogFirst uint64        // oldest offset a replica can resume from
	BacklogBytes int           // stream bytes the backlog holds now
	Keys         int           // number of keys in the store
	Replicas     []ReplicaLink // one per connected replica, in connection order
}

// ReplicaLink describes one connected replica, as the primary sees it.
type ReplicaLink struct {
	ID          string    // the replica's self-chosen ID, from its handshake
	Addr        string    // the replica's network address
	State       LinkState // where the link is in its lifecycle
	SentOffset  uint64    // stream offset written to the link so far
	AckOffset   uint64    // highest offset the replica acknowledged (0 before its first ACK)
	Lag         uint64    // the primary's offset minus AckOffset
	LastAck     time.Time // when the last ACK arrived (zero before the first)
	ConnectedAt time.Time // when the handshake completed
}

// LinkState is the state of a replica link on the primary.
type LinkState string

// Link states, in the order a link goes through them.
const (
	LinkSyncing   LinkState = "syncing"   // sending a snapshot
	LinkStreaming LinkState = "streaming" // sending the live stream
)

// ReplicaState is the state of a Replica, reported by [Replica.Info].
type ReplicaState string

// Replica states. A replica starts "connecting", reports "syncing" from the
// moment a full sync starts until the new data is swapped in, "streaming"
// while it applies the live stream, and "closed" after Close.
const (
	StateConnecting ReplicaState = "connecting"
	StateSyncing    ReplicaState = "syncing"
	StateStreaming  ReplicaState = "streaming"
	StateClosed     ReplicaState = "closed"
)

// ReplicaInfo is a point-in-time view of a Replica, returned by
// [Replica.Info].
type ReplicaInfo struct {
	State        ReplicaState // connecting, syncing, streaming or closed
	ReplID       string       // replication ID of the data served ("" before the first sync)
	Offset       uint64       // offset of the last write applied to the data served
	Primary      string       // the primary's address
	LinkUp       bool         // a connection to the primary is open
	LastIO       time.Time    // when the last frame arrived from the primary
	FullSyncs    uint64       // full syncs completed
	PartialSyncs uint64       // partial resyncs accepted
	Connects     uint64       // connections made to the primary
	SyncKeys     int          // keys loaded so far by a full sync under way
	Keys         int          // number of keys served
	LastError    error        // why the last link ended (nil if none has)
}
