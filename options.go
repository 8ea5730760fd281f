package replmap

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults for the options. Each option's documentation says what it
// governs.
const (
	// DefaultBacklogSize is 16 MiB. Redis defaults to 1 MiB and Valkey 8
	// raised it to 10 MiB because small backlogs turn short network blips
	// into full syncs. At 100k writes/s of ~100-byte records, 16 MiB covers
	// about 1.5 s of disconnection; the memory is taken only as the stream
	// grows, so an idle primary does not pay it.
	DefaultBacklogSize = 16 << 20

	// MinBacklogSize is the smallest backlog honoured (Redis's minimum);
	// smaller positive sizes are raised to it.
	MinBacklogSize = 16 << 10

	// DefaultReplicaBufferLimit is how far one replica may fall behind the
	// primary's stream (during a full sync or when it reads slowly) before
	// the primary drops it: 256 MiB, Redis's hard client-output-buffer-limit
	// for replicas.
	DefaultReplicaBufferLimit = 256 << 20

	// DefaultReplicaBufferSoftLimit and DefaultReplicaBufferSoftTime make
	// Redis's soft client-output-buffer-limit for replicas the default: a
	// replica more than 64 MiB behind for 60 s without a break is dropped.
	DefaultReplicaBufferSoftLimit = 64 << 20
	DefaultReplicaBufferSoftTime  = 60 * time.Second

	// DefaultMaxKeySize is the largest key accepted: 64 KiB.
	DefaultMaxKeySize = 64 << 10

	// DefaultMaxValueSize is the largest encoded value accepted: 16 MiB.
	DefaultMaxValueSize = 16 << 20

	// DefaultMaxFrameSize is the largest wire frame accepted: 32 MiB. It
	// must leave room for the largest key and value together.
	DefaultMaxFrameSize = 32 << 20

	// DefaultHeartbeat is how often an idle primary pings a replica and a
	// replica acknowledges its offset: 1 s, as Redis replicas ACK.
	DefaultHeartbeat = time.Second

	// DefaultLinkTimeout is how long either end waits for a silent peer
	// before dropping the link: 10 s.
	DefaultLinkTimeout = 10 * time.Second

	// DefaultReconnectMin and DefaultReconnectMax bound the replica's
	// jittered exponential reconnect backoff. The first retry waits at
	// most DefaultReconnectMin.
	DefaultReconnectMin = 50 * time.Millisecond
	DefaultReconnectMax = 5 * time.Second

	// DefaultMaxPendingHandshakes is how many accepted connections may be
	// in their handshake at once before more are refused: 64.
	DefaultMaxPendingHandshakes = 64
)

// An Option configures a Primary or a Replica. Options that concern only
// one role are ignored by the other.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	backlogSize  int
	bufferLimit  int
	softLimit    int
	softTime     time.Duration
	maxKeySize   int
	maxValueSize int
	maxFrameSize int
	heartbeat    time.Duration
	linkTimeout  time.Duration
	reconnectMin time.Duration
	reconnectMax time.Duration
	logger       *slog.Logger
	replicaName  string

	maxHandshakes  int
	epoch          uint64
	epochSet       bool
	allowDataLoss  bool
	minReplicas    int
	minReplicasLag time.Duration
	advertiseAddr  string
	maxSnapshot    int64

	dataDir       string
	fsync         FsyncPolicy
	fsys          fileSystem    // the data directory's file system (tests fault it)
	fsyncInterval time.Duration // FsyncEverySecond's bound on unsynced writes
	segmentSize   int64         // log segment rotation size
	snapshotMin   int64         // log bytes after a snapshot before the next one
	spareInline   bool          // prepare FsyncAlways's spare segments inline, not in the background (deterministic, for fault tests)
	loadWorkers   int           // goroutines filling a store loaded from disk (0: by GOMAXPROCS; <0: none)
}

func newConfig(opts []Option) (config, error) {
	c := config{
		backlogSize:  DefaultBacklogSize,
		bufferLimit:  DefaultReplicaBufferLimit,
		softLimit:    DefaultReplicaBufferSoftLimit,
		softTime:     DefaultReplicaBufferSoftTime,
		maxKeySize:   DefaultMaxKeySize,
		maxValueSize: DefaultMaxValueSize,
		maxFrameSize: DefaultMaxFrameSize,
		heartbeat:    DefaultHeartbeat,
		linkTimeout:  DefaultLinkTimeout,
		reconnectMin: DefaultReconnectMin,
		reconnectMax: DefaultReconnectMax,

		maxHandshakes: DefaultMaxPendingHandshakes,

		fsys:          osFS{},
		fsyncInterval: time.Second,
		segmentSize:   16 << 20, // removal after a snapshot is by whole segments: small ones keep less
		snapshotMin:   64 << 20,
	}
	for _, o := range opts {
		if o != nil {
			o.apply(&c)
		}
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	return c, c.validate()
}

// validate reports every problem at once.
func (c *config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...))
	}
	if c.backlogSize <= 0 {
		bad("backlog size %d is not positive", c.backlogSize)
	} else if c.backlogSize < MinBacklogSize {
		c.backlogSize = MinBacklogSize
	}
	if c.bufferLimit < c.backlogSize {
		bad("replica buffer limit %d is below the backlog size %d", c.bufferLimit, c.backlogSize)
	}
	if c.softLimit < 0 || c.softTime < 0 {
		bad("replica buffer soft limit %d for %v is negative", c.softLimit, c.softTime)
	}
	if c.maxKeySize <= 0 {
		bad("max key size %d is not positive", c.maxKeySize)
	}
	if c.maxValueSize <= 0 {
		bad("max value size %d is not positive", c.maxValueSize)
	}
	if need := c.maxKeySize + c.maxValueSize + maxRecordOverhead; c.maxFrameSize < need {
		bad("max frame size %d cannot hold the largest key and value (%d bytes)", c.maxFrameSize, need)
	}
	if c.heartbeat <= 0 {
		bad("heartbeat %v is not positive", c.heartbeat)
	}
	if c.linkTimeout < 3*c.heartbeat {
		bad("link timeout %v is shorter than three heartbeats (%v)", c.linkTimeout, 3*c.heartbeat)
	}
	if c.reconnectMin <= 0 || c.reconnectMax < c.reconnectMin {
		bad("reconnect backoff [%v, %v] is not a positive range", c.reconnectMin, c.reconnectMax)
	}
	if c.maxSnapshot < 0 {
		bad("max snapshot size %d is negative", c.maxSnapshot)
	}
	if c.maxHandshakes <= 0 {
		bad("pending handshake limit %d is not positive", c.maxHandshakes)
	}
	if c.fsync < FsyncEverySecond || c.fsync > FsyncNever {
		bad("fsync policy %d is not one of FsyncEverySecond, FsyncAlways, FsyncNever", int(c.fsync))
	}
	if c.minReplicas < 0 || (c.minReplicas > 0 && c.minReplicasLag <= 0) {
		bad("min replicas %d within %v: need n >= 0 and a positive lag", c.minReplicas, c.minReplicasLag)
	}
	return errors.Join(errs...)
}

// WithBacklogSize sets how many bytes of the most recent stream a node
// keeps so that a replica that lost its link can resume with a partial
// resync. Replicas keep one too, of the bytes they receive, so that their
// sub-replicas can resume from them and so that, once promoted, they can
// resume their siblings. Positive sizes below [MinBacklogSize] are raised
// to it; the default is [DefaultBacklogSize].
func WithBacklogSize(bytes int) Option {
	return optionFunc(func(c *config) { c.backlogSize = bytes })
}

// WithReplicaBufferLimit sets how many bytes of stream one replica may have
// outstanding (not yet written to its link) before the primary drops it with
// [ErrReplicaTooSlow]. A replica receiving a snapshot holds the stream
// written since the snapshot began, so this also bounds how much writing a
// full sync can absorb. It must be at least the backlog size; the default is
// [DefaultReplicaBufferLimit]. A record is judged from its start: one that
// is itself larger than the limit does not evict a replica that has read
// everything before it. For a primary, and a replica serving sub-replicas.
func WithReplicaBufferLimit(bytes int) Option {
	return optionFunc(func(c *config) { c.bufferLimit = bytes })
}

// WithReplicaBufferSoftLimit drops a replica that stays more than bytes
// behind the primary's stream for d without a break, like Redis's soft
// client-output-buffer-limit: a replica that cannot keep up for that long
// is better resynced than followed at ever greater cost. The primary
// checks as its stream grows, so it drops such a replica at the first
// write after d has passed. Zero bytes turns the soft limit off; the hard
// limit (WithReplicaBufferLimit) applies regardless. The defaults are
// [DefaultReplicaBufferSoftLimit] and [DefaultReplicaBufferSoftTime].
// Primary only.
func WithReplicaBufferSoftLimit(bytes int, d time.Duration) Option {
	return optionFunc(func(c *config) { c.softLimit, c.softTime = bytes, d })
}

// WithMaxKeySize sets the largest key, in bytes, that Set accepts and that a
// replica decodes. Default [DefaultMaxKeySize].
func WithMaxKeySize(bytes int) Option {
	return optionFunc(func(c *config) { c.maxKeySize = bytes })
}

// WithMaxValueSize sets the largest encoded value, in bytes, that Set
// accepts and that a replica decodes. Default [DefaultMaxValueSize].
func WithMaxValueSize(bytes int) Option {
	return optionFunc(func(c *config) { c.maxValueSize = bytes })
}

// WithMaxFrameSize sets the largest frame either end reads off the wire;
// a larger declared length drops the link before anything is allocated for
// it. Default [DefaultMaxFrameSize].
func WithMaxFrameSize(bytes int) Option {
	return optionFunc(func(c *config) { c.maxFrameSize = bytes })
}

// WithHeartbeat sets how often the primary pings an idle link and a replica
// acknowledges its offset. Default [DefaultHeartbeat].
func WithHeartbeat(d time.Duration) Option {
	return optionFunc(func(c *config) { c.heartbeat = d })
}

// WithLinkTimeout sets how long either end of a link waits for the peer
// (to send anything, or to accept bytes) before dropping the link; it also
// bounds the handshake and dialling. It must be at least three heartbeats:
// an idle link sees a frame at least every two.
// Default [DefaultLinkTimeout].
func WithLinkTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.linkTimeout = d })
}

// WithReconnectBackoff sets the range of the replica's reconnect delay: the
// first retry waits up to min, each further failure doubles the delay up to
// max, and every delay is jittered. Defaults [DefaultReconnectMin] and
// [DefaultReconnectMax]. Replica only.
func WithReconnectBackoff(min, max time.Duration) Option {
	return optionFunc(func(c *config) { c.reconnectMin, c.reconnectMax = min, max })
}

// WithLogger sets the logger for background events no caller can receive
// (links dropped, resyncs). Nil, the default, discards them.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) { c.logger = l })
}

// WithReplicaName sets the name a replica presents to the primary, shown
// in [ReplicaLink.ID] and used by [Primary.Handover] to pick it. A primary
// holds one link per name: a new connection with the same name replaces
// the old one (a replica that reconnects or restarts before its old link
// timed out is counted once by Wait), and the replica it replaced is
// refused with [ErrDuplicateName] if it comes back while the other is
// connected, so two replicas given one name do not take turns evicting
// each other. The default is random.
// Replica only.
func WithReplicaName(name string) Option {
	return optionFunc(func(c *config) { c.replicaName = name })
}

// WithMaxPendingHandshakes caps the connections a Primary, or a Replica
// serving sub-replicas, holds in their handshake at once; connections
// beyond it are closed at once, so a flood of idle connections costs
// little. Default [DefaultMaxPendingHandshakes].
func WithMaxPendingHandshakes(n int) Option {
	return optionFunc(func(c *config) { c.maxHandshakes = n })
}

// WithEpoch sets the fencing epoch of the history a primary starts:
// NewPrimary's (default 0) or Promote's (default one more than the highest
// epoch the replica has seen; a given epoch must be higher than that, or
// Promote returns ErrStaleEpoch). Replicas never follow a primary of an
// older epoch than one they have seen, and a primary that meets a replica
// of a newer epoch stops taking writes, so a coordinator that hands out
// increasing epochs fences off deposed primaries.
func WithEpoch(epoch uint64) Option {
	return optionFunc(func(c *config) { c.epoch, c.epochSet = epoch, true })
}

// WithAllowDataLoss lets a replica that holds data accept a full sync
// that throws it away: from a primary of an unrelated history that is
// behind it and of no newer epoch, which it otherwise refuses with
// [ErrWouldLoseData] (an empty primary restarted without its data would
// otherwise wipe every replica). Replica only.
func WithAllowDataLoss() Option {
	return optionFunc(func(c *config) { c.allowDataLoss = true })
}

// WithMinReplicas makes every write on a primary fail with
// [ErrNotEnoughReplicas], writing nothing, unless at least n replicas
// have acknowledged within maxLag (Redis's min-replicas-to-write and
// min-replicas-max-lag). Replicas acknowledge every heartbeat
// ([WithHeartbeat]), so maxLag should be a few heartbeats. It bounds how
// long a primary cut off from its replicas keeps taking writes that a
// failover would lose. Given to Promote, it applies to the new primary.
// Primary only.
func WithMinReplicas(n int, maxLag time.Duration) Option {
	return optionFunc(func(c *config) { c.minReplicas, c.minReplicasLag = n, maxLag })
}

// WithAdvertiseAddr sets the address a replica tells its primary it can be
// reached at, shown in [ReplicaLink.Listen]: where a handover
// ([Primary.Handover]) sends the old primary to follow it, and where
// others re-point to it after a promotion. By default it is the address of
// the first listener given to [Replica.Serve], which is wrong for a
// listener on a wildcard address ("0.0.0.0:7070") or behind NAT. Replica
// only.
func WithAdvertiseAddr(addr string) Option {
	return optionFunc(func(c *config) { c.advertiseAddr = addr })
}

// WithMaxSnapshotSize caps the snapshot a replica accepts in a full sync,
// counted in the bytes of its entries as they arrive: a larger one fails
// the sync with [ErrTooLarge] before more is loaded, and the replica keeps
// serving the data it had (and retries, at its backoff). It bounds the
// memory a primary, or anything that can pose as one, can make a replica
// load. Zero, the default, sets no cap. Replica only.
func WithMaxSnapshotSize(bytes int64) Option {
	return optionFunc(func(c *config) { c.maxSnapshot = bytes })
}

// WithDataDir makes a Primary or Replica keep its data and history in dir,
// created if missing, so that it survives a restart (see the package
// documentation, "Durability", and docs/datadir.md for the layout). A
// Primary or Replica started on a directory that holds data loads it and
// continues where it stopped: a primary in a new history that continues
// the old one (so its replicas resume with a partial resync), a replica in
// its old history. Only one process may use a directory at a time. The
// directory stays with the node through role changes (Promote, Demote,
// Handover); given to those, it is ignored.
func WithDataDir(dir string) Option {
	return optionFunc(func(c *config) { c.dataDir = dir })
}

// WithFsync sets when writes to the data directory reach the disk:
// [FsyncEverySecond] (the default), [FsyncAlways] or [FsyncNever]. It has
// no effect without [WithDataDir].
func WithFsync(p FsyncPolicy) Option {
	return optionFunc(func(c *config) { c.fsync = p })
}

// FsyncPolicy says when writes to a data directory are made durable with
// fsync.
type FsyncPolicy int

const (
	// FsyncEverySecond fsyncs in the background, so a crash of the
	// machine loses at most about the last second of writes (a crash of
	// the process alone loses none that reached the kernel; writes are
	// handed to it within that second). A write never waits for the disk,
	// unless the disk falls behind: once the oldest write not yet on disk
	// is a second old, writes block until it is, rather than let the loss
	// window grow (Redis's everysec can lose two seconds, and more on a
	// stalled disk).
	FsyncEverySecond FsyncPolicy = iota

	// FsyncAlways makes Set, Delete and every write return only once the
	// write is on disk. Concurrent writers share an fsync (group
	// commit), so throughput grows with the number of writers.
	FsyncAlways

	// FsyncNever leaves flushing to the operating system: a crash of the
	// process loses at most the writes still in replmap's 64 KiB buffer,
	// a crash of the machine whatever the kernel had not written. Sync
	// and Close still fsync.
	FsyncNever
)

// String returns the policy's name as Redis's appendfsync spells it:
// "everysec", "always" or "never".
func (p FsyncPolicy) String() string {
	switch p {
	case FsyncEverySecond:
		return "everysec"
	case FsyncAlways:
		return "always"
	case FsyncNever:
		return "never"
	}
	return fmt.Sprintf("FsyncPolicy(%d)", int(p))
}
