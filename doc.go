// Package replmap keeps exact copies of an in-memory map in sync across
// goroutines, processes and machines, with the primary–replica replication
// model that Redis made familiar, embedded in a Go program.
//
// A [Primary] owns the map. Writes ([Primary.Set], [Primary.Delete]) apply
// to it at once and are shipped to every connected [Replica] afterwards. A
// Replica is given the primary's address and a [transport.Transport]; it
// loads a snapshot, then applies the live stream of writes, and serves
// reads. Replicas are read-only.
//
//	p, _ := replmap.NewPrimary[string]()
//	net := transport.NewInmem()
//	l, _ := net.Listen("primary")
//	go p.Serve(l)
//
//	r, _ := replmap.NewReplica[string](net, "primary")
//	_ = r.WaitSynced(ctx)
//
//	_ = p.Set("greeting", "hello")
//	_ = r.WaitOffset(ctx, p.Offset()) // read your write on r
//	v, _ := r.Get("greeting")
//
// # Consistency model
//
// Replication is asynchronous: Set returns before any replica has the
// write, and a crash of the primary loses the writes its replicas had not
// received. [Primary.Wait] blocks until n replicas acknowledge every
// earlier write and reports how many did; it narrows that window but does
// not close it, and it does not make the system linearizable across a
// failover. [WithMinReplicas] refuses writes while too few replicas are
// in touch, which bounds how much an isolated primary can take that a
// failover would lose.
//
// Every write has an offset: the byte position of its record in the
// replication stream. A replica at offset o serves exactly the primary's
// state at o. Its reads are monotonic: once a write is visible, no older
// value of that key comes back, across reconnects and resyncs. After the
// primary stops writing and the links are up, every replica converges to
// the primary's exact data and offset.
//
// A replica that loses its link reconnects and asks to continue from its
// offset. While the primary's backlog ([WithBacklogSize]) still holds the
// stream from there, only the missing tail is sent (a partial resync);
// otherwise the replica receives a new snapshot (a full sync), loads it
// aside, and swaps it in atomically, serving its old data until then. The
// stream flows during the snapshot, so a replica that keeps up with the
// writes finishes its sync however long the snapshot takes. A replica that
// falls too far behind ([WithReplicaBufferLimit],
// [WithReplicaBufferSoftLimit]) is dropped and resyncs later, so it cannot
// exhaust the primary's memory.
//
// # Failover
//
// A history is a stream of writes named by a replication ID; offsets count
// on across promotions. [Replica.Promote] makes a replica a primary that
// continues its history in a new one (its old ID kept as ReplID2 up to
// its offset), so its siblings re-pointed with [Replica.Follow], and the
// old primary turned replica with [Primary.Demote], resume with a partial
// resync unless they were ahead of it. [Primary.Handover] does the planned
// version without losing a write: it pauses writes, lets the chosen
// replica catch up, promotes it, and follows it.
//
// Every history has an epoch, one more at each promotion (or set with
// [WithEpoch] by a coordinator). Replicas never follow a primary of an
// older epoch than one they have seen, and a primary that meets a replica
// of a newer epoch refuses writes with [ErrStaleEpoch]: a deposed primary
// that comes back cannot pull replicas back into its history. A replica
// holding data also refuses a full sync from an unrelated primary that is
// behind it ([ErrWouldLoseData]), so an empty primary restarted without
// its data does not wipe its replicas.
//
// A replica serves sub-replicas with [Replica.Serve] (chains): they get
// the same bytes, IDs and offsets, and a listener keeps being served
// across role changes. [Replica.WaitOffset] gives read-your-writes on a
// replica.
//
// # Durability
//
// With [WithDataDir] a node keeps its data and history on disk: snapshots
// taken in the background, and a log holding exactly the bytes of the
// stream, so that an offset on disk is the same offset on the wire.
// [WithFsync] says when writes reach the disk: [FsyncEverySecond] (the
// default), [FsyncAlways] (Set returns once the write is on disk,
// concurrent writers sharing an fsync) or [FsyncNever]. [Primary.Sync]
// makes every write so far durable, and [Primary.WaitDurable] waits until
// replicas hold them in their own directories.
//
// A Primary started on a directory that holds data keeps its data, offset
// and epoch, and continues its history in a new one, with its backlog
// refilled from the log: its replicas resume with a partial resync, even
// those that were behind. A Replica started on one serves its data at
// once and resumes partially. A torn tail (a write cut by a crash) is
// dropped; any other damage is an error wrapping [ErrChecksum], and
// nothing damaged is served. A directory whose data is gone is
// [ErrLostState]. A write or fsync that fails stops writes with an error,
// never retried: the kernel may have dropped the data it had accepted.
//
// # Map features
//
// [Primary.Update] runs a function under the write lock and applies the
// writes it makes through its [Tx] as one record at one offset: no reader,
// watcher or Wait, on the primary or on any replica, sees part of one,
// and a function that returns an error writes nothing. It gives atomic
// read-modify-write (counters, compare-and-swap) and is the fast path for
// bulk writes.
//
// [Primary.SetTTL] and [Tx.SetTTL] give a key a deadline, absolute and
// replicated with it (full syncs, the data directory and failovers keep
// it). No node returns a key past its deadline by its own clock; the
// primary deletes such keys in the background (and at once when a read
// meets one) and replicates each deletion. TTL reports the time left.
//
// [Primary.Watch] and [Replica.Watch] yield every write under a prefix
// after an offset, in order, with no gap and no duplicate, resumable from
// any event's offset, across reconnects, partial resyncs and promotions.
// [Primary.List] and [Replica.List] return a prefix's keys exactly as at
// one offset, to watch from: together they keep a copy of part of the
// map exact. A watcher reads the backlog and holds no memory of its own:
// one that falls behind the backlog, or asks for history the backlog no
// longer holds, ends with [ErrCompacted] and lists again.
//
// # Lifecycle
//
// NewPrimary returns a Primary with an empty map; Serve accepts replicas
// on a listener until Close. NewReplica starts syncing in the background
// at once and retries failed connections until Close; WaitSynced waits for
// the first sync. Close on either stops every goroutine it started before
// returning, and may be called more than once. Reads keep working after
// Close; writes and Wait return [ErrClosed].
//
// # Errors
//
// Errors are sentinel values ([ErrClosed], [ErrReadOnly], [ErrTooLarge],
// [ErrProtocol], [ErrChecksum], [ErrVersion], [ErrReplicaTooSlow],
// [ErrLinkTimeout], [ErrInvalidOption], [ErrStaleEpoch], [ErrLostState],
// [ErrWouldLoseData], [ErrNotSynced], [ErrNotEnoughReplicas],
// [ErrTypeMismatch], [ErrDuplicateName], [ErrNoReplica], [ErrCompacted],
// [ErrInvalidTTL]), usually wrapped
// with detail: test them with [errors.Is]. A write refused after a
// handover is a [*MovedError] naming the new primary. A link's failure is a [*LinkError]. Failures in
// the background, which no caller can receive, go to the [log/slog] logger
// given with [WithLogger] and show in [Primary.Info] and [Replica.Info].
//
// Bytes from the network are distrusted: every frame carries a CRC-32C,
// every declared length is checked against the limits and the bytes that
// really arrived before anything is allocated for it, and a snapshot is
// verified whole before it is served. Bad input drops the link with an
// error; the replica resyncs.
//
// # Concurrency
//
// Every method of Primary and Replica is safe for concurrent use. Values
// are shared, not copied: a value handed to Set, or returned by Get, must
// not be changed. ([]byte values are the exception on the way in: the
// store copies them, packing key and value into one allocation, which
// saves about 60 bytes a key. What Get returns is still shared.) Writes on a Primary are serialised in a short critical
// section; reads take a per-shard read lock and never wait for the
// network. A snapshot walk holds one shard's lock at a time, so it never
// stops writers.
package replmap
