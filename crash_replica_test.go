package replmap

// The replica crash suite (D1, D2, D4 for a Replica's data directory): the
// parent runs a Primary in this process, serving on TCP loopback, with one
// writer whose every op it records with the offset after it; a child
// process runs a Replica of it on a data directory and is killed with
// SIGKILL at a moment drawn from a seed, many rounds on the same
// directory. The suite checks:
//
//   - what a directory serves when it is opened, before any connection,
//     is exactly the primary's state at the offset it serves (a prefix of
//     the primary's stream, never anything else), of the primary's ReplID;
//   - that offset is at least every DurableOffset a killed child reported
//     (with FsyncAlways and FsyncEverySecond alike: a DurableOffset says
//     the stream up to there is on disk);
//   - a child that opens a directory the primary's backlog still covers
//     resumes it with a partial resync.
//
// Each child first opens the directory with a dead primary address,
// reports what it serves, closes it and opens it again following the
// primary; some kills are also checked by a reopen in this process. The
// child reports on file descriptor 3, one line per event:
//
//	O <offset> <keys> <digest>      the directory serves this, opened
//	D <offset> <durable> <partial> <full>   Info, now and then
//	W <offset> <durable> <partial> <full>   Info, after WaitSynced
//
// CI runs a few rounds per policy. More, from the environment:
//
//	REPLMAP_CRASH_ROUNDS=200 go test -run 'TestCrashReplica$' .
//	REPLMAP_CRASH_SEED=7 go test -run 'TestCrashReplica$' -v .

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replmap/replmap/transport"
	"github.com/stretchr/testify/require"
)

const crashReplicaChildEnv = "REPLMAP_CRASH_REPLICA_CHILD"

// crashReplicaConfig is what a replica child is told.
type crashReplicaConfig struct {
	Dir      string
	Primary  string // the primary's address
	Dead     string // an address nobody listens on
	Policy   FsyncPolicy
	Segment  int64
	Seed     uint64
	Round    int
	Interval time.Duration // between D reports
}

// crashReplicaOpts are the options of every open of the replica's
// directory: small segments and snapshots, as crashOpts.
func crashReplicaOpts(dir string, policy FsyncPolicy, segment int64, log *slog.Logger) []Option {
	return append(crashOpts(dir, policy, segment, log),
		WithReplicaName("r"), WithReconnectBackoff(time.Millisecond, 20*time.Millisecond))
}

// crashReplicaOp is the primary writer's op i: sets and overwrites over a
// few hundred keys, and deletes. Some values span several 4 KiB segments.
func crashReplicaOp(i int) (key, value string, del bool) {
	key = fmt.Sprintf("k%03d", (i*37)%400)
	if i%11 == 5 {
		return key, "", true
	}
	n := (i * 13) % 80
	if i%211 == 7 {
		n = 9000
	}
	return key, strconv.Itoa(i) + ":" + strings.Repeat(string(rune('a'+i%26)), n), false
}

// crashEntryHash is an entry's share of a state's digest, the sum of its
// entries' hashes, which a writer keeps up to date op by op.
func crashEntryHash(k, v string) uint64 {
	h := fnv.New64a()
	_, _ = io.WriteString(h, k)
	_, _ = h.Write([]byte{0})
	_, _ = io.WriteString(h, v)
	return h.Sum64()
}

// crashDigest is the digest of what r serves, and its number of keys.
func crashDigest(r *Replica[string]) (uint64, int) {
	var sum uint64
	n := 0
	for k, v := range r.All() {
		sum += crashEntryHash(k, v)
		n++
	}
	return sum, n
}

// crashStream is the primary's stream as its writer recorded it: the
// offset, digest and size of the state after each op.
type crashStream struct {
	mu      sync.Mutex
	offsets []uint64 // strictly increasing
	digests []uint64
	keys    []int
}

// at returns the digest and size of the state at offset, and false if no
// op ended there.
func (s *crashStream) at(offset uint64) (uint64, int, bool) {
	if offset == 0 {
		return 0, 0, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i, found := slices.BinarySearch(s.offsets, offset)
	if !found {
		return 0, 0, false
	}
	return s.digests[i], s.keys[i], true
}

// runCrashWriter writes to p until stop is closed, recording into s. It
// writes in bursts, so that the stream grows at a pace the backlog holds
// across a child's restart.
func runCrashWriter(p *Primary[string], s *crashStream, stop <-chan struct{}) error {
	state := map[string]string{}
	var digest uint64
	for i := 0; ; i++ {
		if i%20 == 0 {
			select {
			case <-stop:
				return nil
			case <-time.After(time.Millisecond): // pacing, not a synchronisation
			}
		}
		key, value, del := crashReplicaOp(i)
		var err error
		if del {
			err = p.Delete(key)
		} else {
			err = p.Set(key, value)
		}
		if err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		off := p.Offset()
		if old, ok := state[key]; ok {
			digest -= crashEntryHash(key, old)
			delete(state, key)
		}
		if !del {
			state[key] = value
			digest += crashEntryHash(key, value)
		}
		s.mu.Lock()
		if n := len(s.offsets); n > 0 && s.offsets[n-1] == off { // a delete of nothing
			s.mu.Unlock()
			continue
		}
		s.offsets = append(s.offsets, off)
		s.digests = append(s.digests, digest)
		s.keys = append(s.keys, len(state))
		s.mu.Unlock()
	}
}

// TestCrashReplicaChild is the child process of TestCrashReplica; run
// directly, it skips.
func TestCrashReplicaChild(t *testing.T) {
	var c crashReplicaConfig
	out := crashChildSetUp(t, crashReplicaChildEnv, "TestCrashReplica", &c)
	var mu sync.Mutex
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := fmt.Fprintf(out, format+"\n", args...); err != nil {
			crashChildFail("report", err)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tr := transport.NewTCP()

	// What the directory serves, before any connection.
	r, err := NewReplica[string](tr, c.Dead, crashReplicaOpts(c.Dir, c.Policy, c.Segment, log)...)
	if err != nil {
		crashChildFail("open", err)
	}
	digest, keys := crashDigest(r)
	report("O %d %d %d", r.Offset(), keys, digest)
	if err := r.Close(); err != nil {
		crashChildFail("close", err)
	}

	r, err = NewReplica[string](tr, c.Primary, crashReplicaOpts(c.Dir, c.Policy, c.Segment, log)...)
	if err != nil {
		crashChildFail("reopen", err)
	}
	info := func(what string) {
		in := r.Info()
		report("%s %d %d %d %d", what, in.Offset, in.DurableOffset, in.PartialSyncs, in.FullSyncs)
	}
	go func() {
		if err := r.WaitSynced(context.Background()); err != nil {
			crashChildFail("wait synced", err)
		}
		info("W")
	}()
	for {
		info("D")
		time.Sleep(c.Interval) // a pause between reports, not a synchronisation
	}
}

// crashReplicaRound is what the parent learnt from one replica child.
type crashReplicaRound struct {
	round    int
	opened   bool
	start    uint64 // the offset the directory served, opened
	synced   bool   // WaitSynced returned
	partial  bool   // the first sync was a partial resync
	syncs    int    // syncs the child completed
	durable  uint64 // the highest DurableOffset reported
	applied  uint64 // the highest Offset reported
	killedBy string
	events   int
	stderr   *bytes.Buffer
}

type crashReplicaStats struct {
	rounds, verified, opens        int
	partial, full, empty, unsynced int // first syncs of children after a kill (empty: a full sync of an empty directory); children killed before one
	tornTails, tornHeaders, behind int // behind: opens below the highest applied offset reported
}

func TestCrashReplica(t *testing.T) {
	if os.Getenv(crashReplicaChildEnv) != "" || os.Getenv(crashChildEnv) != "" {
		t.Skip("in a crash child")
	}
	rounds := envInt(t, "REPLMAP_CRASH_ROUNDS", 10)
	seed := uint64(envInt(t, "REPLMAP_CRASH_SEED", 1))
	for _, policy := range []FsyncPolicy{FsyncAlways, FsyncEverySecond} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			st := runCrashReplica(t, policy, seed, rounds)
			t.Logf("seed %d, %s: %d rounds (%d verified by a reopen here, %d children opened the directory); first syncs after a kill: %d partial, %d full, %d full of an empty directory, %d children killed before it; %d opens behind what a child had applied; reopens dropped %d torn tails and %d torn segment headers; %v",
				seed, policy, st.rounds, st.verified, st.opens, st.partial, st.full, st.empty, st.unsynced, st.behind, st.tornTails, st.tornHeaders, time.Since(start).Round(time.Millisecond))
		})
	}
}

func runCrashReplica(t *testing.T, policy FsyncPolicy, seed uint64, rounds int) crashReplicaStats {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, 100+uint64(policy)))

	// The primary, and its writer.
	p, err := NewPrimary[string](WithLogger(testLogger(t)), WithBacklogSize(4<<20))
	require.NoError(t, err)
	l, err := transport.NewTCP().Listen("127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	stream := &crashStream{}
	stop, written := make(chan struct{}), make(chan error, 1)
	go func() { written <- runCrashWriter(p, stream, stop) }()
	defer func() {
		close(stop)
		require.NoError(t, <-written)
		require.NoError(t, p.Close())
		require.ErrorIs(t, <-served, ErrClosed)
	}()
	dead := deadAddr(t)

	st := crashReplicaStats{}
	var pending []*crashReplicaRound // killed rounds not checked by a reopen here
	for round := range rounds {
		cr := runCrashReplicaChild(t, crashReplicaConfig{
			Dir: dir, Primary: l.Addr().String(), Dead: dead, Policy: policy, Seed: seed, Round: round,
			Segment:  []int64{4 << 10, 1 << 20}[rng.IntN(2)],
			Interval: time.Duration(200+rng.IntN(2000)) * time.Microsecond,
		}, stream, rng)
		where := fmt.Sprintf("seed %d, %s, round %d (%s)", seed, policy, round, cr.killedBy)
		st.rounds++
		st.tornTails += strings.Count(cr.stderr.String(), "dropped a torn tail")
		st.tornHeaders += strings.Count(cr.stderr.String(), "dropped a segment whose header was torn")
		t.Logf("round %d: killed %s; opened %v at %d, synced %v (partial %v), applied %d, durable %d", round, cr.killedBy, cr.opened, cr.start, cr.synced, cr.partial, cr.applied, cr.durable)
		if cr.opened {
			st.opens++
			checkCrashReplicaOpen(t, where, cr.start, pending, &st)
			pending = nil
			if round > 0 {
				switch {
				case !cr.synced:
					st.unsynced++
				case cr.partial:
					st.partial++
				case cr.start == 0:
					st.empty++
				default:
					st.full++
					// The primary's backlog only moves forward: if it
					// covers the directory now, it covered it then.
					if cr.start >= p.Info().BacklogFirst {
						require.FailNow(t, "a full sync where the backlog covered the directory", "%s: opened at %d, backlog from %d", where, cr.start, p.Info().BacklogFirst)
					}
				}
			}
		}
		pending = append(pending, cr)
		if round == rounds-1 || rng.IntN(3) == 0 {
			verifyCrashReplica(t, dir, dead, policy, where, p.ReplID(), stream, pending, &st)
			pending = nil
			st.verified++
		}
	}
	return st
}

// checkCrashReplicaOpen checks the offset a directory opened at against the
// rounds killed since the last check.
func checkCrashReplicaOpen(t *testing.T, where string, start uint64, pending []*crashReplicaRound, st *crashReplicaStats) {
	t.Helper()
	for _, prev := range pending {
		require.GreaterOrEqual(t, start, prev.durable, "%s: the directory opened below what round %d reported durable", where, prev.round)
		if start < prev.applied {
			st.behind++
		}
	}
}

// checkCrashReplicaState checks that offset, digest and keys are the
// primary's state at offset.
func checkCrashReplicaState(t *testing.T, where string, stream *crashStream, offset, digest uint64, keys int) {
	t.Helper()
	wd, wk, ok := stream.at(offset)
	require.True(t, ok, "%s: the directory serves offset %d, where no write of the primary ends", where, offset)
	require.Equal(t, wk, keys, "%s: the directory serves %d keys at offset %d, the primary had %d", where, keys, offset, wk)
	require.Equal(t, wd, digest, "%s: the directory serves another state than the primary's at offset %d", where, offset)
}

// verifyCrashReplica reopens dir here, following a dead address, and
// checks what it serves at once.
func verifyCrashReplica(t *testing.T, dir, dead string, policy FsyncPolicy, where, replID string, stream *crashStream, pending []*crashReplicaRound, st *crashReplicaStats) {
	t.Helper()
	logs := &countingHandler{}
	r, err := NewReplica[string](transport.NewTCP(), dead, crashReplicaOpts(dir, policy, 4<<10, slog.New(logs))...)
	require.NoError(t, err, "%s: reopen", where)
	st.tornTails += int(logs.count("dropped a torn tail"))
	st.tornHeaders += int(logs.count("dropped a segment whose header was torn"))
	off := r.Offset()
	digest, keys := crashDigest(r)
	if off > 0 {
		require.Equal(t, replID, r.Info().ReplID, "%s: the directory serves another history", where)
	}
	require.NoError(t, r.Close(), "%s: close", where)
	checkCrashReplicaOpen(t, where, off, pending, st)
	checkCrashReplicaState(t, where+", reopened here", stream, off, digest, keys)
}

// deadAddr returns a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// runCrashReplicaChild starts a replica child, kills it at a moment drawn
// from rng and returns what it reported; it checks what the child's
// directory served at its open.
func runCrashReplicaChild(t *testing.T, c crashReplicaConfig, stream *crashStream, rng *rand.Rand) *crashReplicaRound {
	t.Helper()
	cfg, err := json.Marshal(c)
	require.NoError(t, err)
	cr := &crashReplicaRound{round: c.Round, stderr: &bytes.Buffer{}}
	proc := startCrashProc(t, "TestCrashReplicaChild", crashReplicaChildEnv, cfg, cr.stderr)
	defer proc.events.Close()

	// The schedule: after a delay from the start (often while the child
	// loads or syncs), after some reports, or after a delay from the
	// first sync.
	killAt, delay, from := -1, time.Duration(0), ""
	switch x := rng.IntN(10); {
	case x < 3:
		delay = time.Duration(rng.IntN(100_000)) * time.Microsecond
		cr.killedBy = fmt.Sprintf("%v after start", delay)
	case x < 6:
		killAt = rng.IntN(60)
		cr.killedBy = fmt.Sprintf("after %d reports", killAt)
	default:
		delay, from = time.Duration(rng.IntN(30_000))*time.Microsecond, "sync"
		cr.killedBy = fmt.Sprintf("%v after the first sync", delay)
	}
	var digest uint64
	var keys int
	synced, reached := make(chan struct{}), make(chan struct{})
	read := make(chan error, 1)
	go func() { read <- readCrashReplicaEvents(proc.events, cr, killAt, &digest, &keys, synced, reached) }()
	proc.kill(t, fmt.Sprintf("round %d (%s)", c.Round, cr.killedBy), reached, synced, killAt < 0, from == "sync", delay,
		func() string { return fmt.Sprintf("%d events", cr.events) })
	require.NoError(t, <-read, "round %d", c.Round)
	require.NotContains(t, cr.stderr.String(), "DATA RACE", "round %d", c.Round)
	if cr.opened {
		checkCrashReplicaState(t, fmt.Sprintf("%s, round %d (%s), opened by the child", c.Policy, c.Round, cr.killedBy), stream, cr.start, digest, keys)
	}
	return cr
}

// readCrashReplicaEvents reads the child's reports to the end, into cr and
// the digest and keys of its O line. It closes synced at the W line and
// reached once killAt D lines have come.
func readCrashReplicaEvents(r io.Reader, cr *crashReplicaRound, killAt int, digest *uint64, keys *int, synced, reached chan struct{}) error {
	reports := 0
	if killAt == 0 {
		close(reached)
	}
	return scanCrashEvents(r, &cr.events, func(line, kind string, n []uint64) error {
		switch {
		case kind == "O" && len(n) == 3 && !cr.opened:
			cr.opened, cr.start, *keys, *digest = true, n[0], int(n[1]), n[2]
		case (kind == "D" || kind == "W") && len(n) == 4 && cr.opened:
			cr.applied = max(cr.applied, n[0])
			cr.durable = max(cr.durable, n[1])
			if kind == "W" {
				cr.synced, cr.partial = true, n[2] > 0
				close(synced)
			}
			cr.syncs = int(n[2] + n[3])
			if kind == "D" {
				if reports++; reports == killAt {
					close(reached)
				}
			}
		default:
			return fmt.Errorf("bad event %q", line)
		}
		return nil
	})
}
