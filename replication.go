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

	// ErrStaleEpoch reports a peer, or this primary, that belongs to an
	// older epoch than one already seen. A replica refuses to follow a
	// primary of an older epoch than the highest it has seen (the link
	// error wraps it, in [ReplicaInfo.LastError]); a primary that meets a
	// replica of a newer epoch has been superseded, and its writes return
	// it from then on. Promote returns it for a [WithEpoch] that is not
	// higher than every epoch seen.
	ErrStaleEpoch = errors.New("replmap: stale epoch")

	// ErrWouldLoseData reports a full sync that a replica refused because
	// it would throw away the data it holds: the primary's history is
	// unrelated to the replica's, behind it, and of no newer epoch (an
	// empty primary restarted without its data, say). The replica keeps
	// serving its data and retries; [WithAllowDataLoss] lets it accept.
	ErrWouldLoseData = errors.New("replmap: sync would lose data")

	// ErrNotSynced is returned by Promote on a replica that never
	// completed a sync, and reported to sub-replicas of such a replica.
	ErrNotSynced = errors.New("replmap: replica has not synced")

	// ErrNotEnoughReplicas is returned by a write on a primary configured
	// with [WithMinReplicas] when fewer replicas than required have
	// acknowledged within the lag allowed. Nothing is written.
	ErrNotEnoughReplicas = errors.New("replmap: not enough replicas")

	// ErrTypeMismatch reports a replica whose value type V differs from
	// its upstream's, found at the handshake: its values could not be
	// decoded. The replica keeps retrying, at its longest backoff.
	ErrTypeMismatch = errors.New("replmap: value type differs from the primary's")

	// ErrDuplicateName reports a replica refused because another replica
	// took over its name ([WithReplicaName]) and is still connected: names
	// must be unique among a primary's replicas.
	ErrDuplicateName = errors.New("replmap: another replica uses this name")

	// ErrLostState is returned by NewPrimary for a data directory whose
	// history record survives but whose data does not (deleted, or on a
	// volume that was not mounted): starting empty would wipe every
	// replica's data (valkey#579). Pass [WithAllowDataLoss] to start
	// empty anyway, in a new history of the same epoch.
	ErrLostState = errors.New("replmap: data directory lost its data")
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
	ReplID        string        // replication ID of this primary's history
	ReplID2       string        // the history this one continues ("" if none)
	ReplID2Offset uint64        // ReplID2's history is shared up to this offset
	Epoch         uint64        // fencing epoch of this history
	Stale         bool          // a replica of a newer epoch was seen: writes return ErrStaleEpoch
	Offset        uint64        // replication offset of the last write
	DurableOffset uint64        // the data directory holds the stream up to here (0 without one)
	FullSyncs     uint64        // full syncs served since start
	PartialSyncs  uint64        // partial resyncs served since start
	Expired       uint64        // keys deleted because their TTL ran out, since start
	DroppedSlow   uint64        // links dropped since start for falling past a replica buffer limit
	BacklogFirst  uint64        // oldest offset a replica can resume from
	BacklogBytes  int           // stream bytes the backlog holds now
	Keys          int           // number of keys in the store
	Replicas      []ReplicaLink // one per connected replica, in connection order
}

// ReplicaLink describes one connected replica, as the primary sees it.
type ReplicaLink struct {
	ID            string    // the replica's name (WithReplicaName), from its handshake
	Addr          string    // the replica's network address, as this end of the link sees it
	Listen        string    // the address the replica serves on, as it advertises it ("" if none)
	State         LinkState // where the link is in its lifecycle
	SentOffset    uint64    // stream offset written to the link so far
	AckOffset     uint64    // highest offset the replica acknowledged (0 before its first ACK)
	DurableOffset uint64    // highest offset the replica reported in its data directory (0 without one)
	Lag           uint64    // the primary's offset minus AckOffset
	LastAck       time.Time // when the last ACK arrived (zero before the first)
	ConnectedAt   time.Time // when the handshake completed
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
	State          ReplicaState  // connecting, syncing, streaming or closed
	ReplID         string        // replication ID of the data served ("" before the first sync)
	ReplID2        string        // the history ReplID continues ("" if none)
	ReplID2Offset  uint64        // ReplID2's history is shared up to this offset
	Epoch          uint64        // highest epoch seen
	Offset         uint64        // offset of the last write applied to the data served
	DurableOffset  uint64        // the data directory holds the stream up to here (0 without one)
	DiscardedBytes uint64        // stream bytes thrown away by full syncs from a primary behind this replica's related history (R3)
	Replicas       []ReplicaLink // sub-replicas served (see Replica.Serve)
	Primary        string        // the primary's address
	LinkUp         bool          // a connection to the primary is open
	LastIO         time.Time     // when the last frame arrived from the primary
	FullSyncs      uint64        // full syncs completed
	PartialSyncs   uint64        // partial resyncs accepted
	Connects       uint64        // connections made to the primary
	SyncKeys       int           // keys loaded so far by a full sync under way
	Keys           int           // number of keys served
	LastError      error         // why the last link or sync attempt failed (nil if none has)
}
