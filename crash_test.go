package replmap

// The crash suite (D1, D2, D4): a child process runs a Primary on a data
// directory with several writers and is killed with SIGKILL at a moment
// drawn from a seed, many rounds on the same directory. After a kill the
// directory is reopened, in this process or by the next child, and the
// suite checks:
//
//   - no write is lost that must survive: with FsyncAlways every write
//     whose Set or Delete returned, with FsyncEverySecond and FsyncNever
//     every write that returned before a Sync that returned;
//   - no value is wrong, and nothing appears that was not written;
//   - each writer's writes survive as a prefix of the writes it made
//     (its keys are its own, so the prefix is exact);
//   - the offset never goes back below what the child saw durable, and a
//     clean restart continues exactly where the last Close left off;
//   - the data of earlier rounds (and the deletion of older ones) is kept.
//
// The child is this test binary, run with -test.run=^TestCrashChild$ and
// its round in REPLMAP_CRASH_CHILD; it reports on file descriptor 3, one
// line per event, which the parent reads to the end after the kill (a pipe
// keeps what was written to it):
//
//	O <offset>                     opened, at this offset
//	A <writer> <op> <durable>      the writer's op returned; the directory
//	                               was durable up to <durable> after it
//	S <durable> <op0> <op1> ...    Sync returned: each writer's ops up to
//	                               <opN> (returned before it began) are on
//	                               disk, and the stream up to <durable>
//
// CI runs a few rounds per policy. More, from the environment:
//
//	REPLMAP_CRASH_ROUNDS=500 go test -run 'TestCrash$' .   # rounds per policy
//	REPLMAP_CRASH_SEED=7 go test -run 'TestCrash$' -v .     # another schedule
//
// A seed replays the schedule (where each kill falls, by count or delay),
// not the timing of the processes.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const (
	crashChildEnv = "REPLMAP_CRASH_CHILD"
	crashWriters  = 4
	crashKeep     = 3 // rounds whose keys stay; older ones the parent deletes
)

// crashOpts are the options of every open of the crash directory: small
// snapshots, so snapshots and the removal of old segments happen within a
// few rounds. Small segments rotate often, at frame boundaries; segments
// larger than the log's 64 KiB buffer let it flush part of a frame, which
// a kill then leaves torn.
func crashOpts(dir string, policy FsyncPolicy, segment int64, log *slog.Logger) []Option {
	return []Option{
		WithDataDir(dir), WithFsync(policy), WithLogger(log), WithBacklogSize(MinBacklogSize),
		optionFunc(func(c *config) {
			c.segmentSize, c.snapshotMin, c.fsyncInterval = segment, 32<<10, 20*time.Millisecond
		}),
	}
}

// crashChild is what a child is told.
type crashChild struct {
	Dir     string
	Policy  FsyncPolicy
	Round   int
	Writers int
	Segment int64  // segment size
	Seed    uint64 // for the child's Sync pauses
}

// crashKey and crashValue name the keys and values of a round's writers.
// Values vary in length, some span several 4 KiB segments, so that a kill
// can cut a frame anywhere.
func crashKey(round, w, i int) string { return fmt.Sprintf("r%05d/w%d/%07d", round, w, i) }

func crashValue(round, w, i int) string {
	n := (i * 37) % 61
	if i%97 == 13 {
		n = 9000
	}
	return fmt.Sprintf("%d.%d.%d:", round, w, i) + strings.Repeat(string(rune('a'+i%26)), n)
}

// crashOp is op i of writer w in a round: a Set of a new key, or, for some
// writers, a Delete of an earlier key or an overwrite of one. No op leaves
// the writer's keys as an earlier op left them (keys are never set again
// once deleted, and every value is new), so the state a writer's keys are
// in names the op they end at.
func crashOp(round, w, i int) (key, value string, del bool) {
	switch w % 4 {
	case 1:
		if i%4 == 3 {
			return crashKey(round, w, i-2), "", true
		}
	case 2:
		if i%4 == 3 {
			return crashKey(round, w, i-3), "over " + crashValue(round, w, i), false
		}
	case 3:
		switch i % 6 {
		case 5:
			return crashKey(round, w, i-1), "", true
		case 2:
			return crashKey(round, w, i-2), "over " + crashValue(round, w, i), false
		}
	}
	return crashKey(round, w, i), crashValue(round, w, i), false
}

// TestCrashChild is the child process of TestCrash; run directly, it skips.
func TestCrashChild(t *testing.T) {
	var c crashChild
	out := crashChildSetUp(t, crashChildEnv, "TestCrash", &c)
	report := func(line string) {
		if _, err := out.WriteString(line + "\n"); err != nil {
			crashChildFail("report", err)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := NewPrimary[string](crashOpts(c.Dir, c.Policy, c.Segment, log)...)
	if err != nil {
		crashChildFail("open", err)
	}
	report("O " + strconv.FormatUint(p.Offset(), 10))

	done := make([]atomic.Int64, c.Writers) // each writer's last op that returned
	for w := range c.Writers {
		done[w].Store(-1)
		go func() {
			for i := 0; ; i++ {
				key, value, del := crashOp(c.Round, w, i)
				var err error
				if del {
					err = p.Delete(key)
				} else {
					err = p.Set(key, value)
				}
				if err != nil {
					crashChildFail(fmt.Sprintf("writer %d op %d", w, i), err)
				}
				report(fmt.Sprintf("A %d %d %d", w, i, p.n.durable()))
				done[w].Store(int64(i))
			}
		}()
	}
	rng := rand.New(rand.NewPCG(c.Seed, uint64(c.Round)))
	for {
		line := make([]string, 0, 2+c.Writers)
		line = append(line, "S", "")
		for w := range done {
			line = append(line, strconv.FormatInt(done[w].Load(), 10))
		}
		if err := p.Sync(); err != nil {
			crashChildFail("sync", err)
		}
		// Not the Offset before Sync: that may count a write whose Set
		// has not returned, which Sync need not cover.
		line[1] = strconv.FormatUint(p.n.durable(), 10)
		report(strings.Join(line, " "))
		time.Sleep(time.Duration(rng.IntN(5000)) * time.Microsecond) // a pause between Syncs, not a synchronisation
	}
}

// crashChildFail ends the child at once, as a kill would, saying why: the
// parent fails the round on any exit it did not cause.
func crashChildFail(what string, err error) {
	fmt.Fprintf(os.Stderr, "crash child: %s: %v\n", what, err)
	os.Exit(3)
}

// crashRound is what the parent learnt from one child.
type crashRound struct {
	round    int
	opened   bool
	start    uint64 // the offset the child opened at
	acked    []int  // per writer, the last op that returned (-1: none)
	synced   []int  // per writer, the last op a Sync covered
	durable  uint64 // the highest offset the child saw durable
	killedBy string // how the kill was scheduled, for messages
	events   int    // lines read
	stderr   *bytes.Buffer
}

// crashStats are the figures of a run.
type crashStats struct {
	rounds, verified, childOpens  int
	acked, required, survived     int             // acked ops, ops that had to survive, ops that did
	tornTails, tornHeaders, temps int             // what the reopens found
	snapshots                     map[string]bool // snapshot files seen on disk after kills
}

func TestCrash(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("in a crash child")
	}
	rounds := envInt(t, "REPLMAP_CRASH_ROUNDS", 10)
	seed := uint64(envInt(t, "REPLMAP_CRASH_SEED", 1))
	for _, policy := range []FsyncPolicy{FsyncAlways, FsyncEverySecond, FsyncNever} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			st := runCrash(t, policy, seed, rounds)
			t.Logf("seed %d, %s: %d rounds (%d verified by a reopen here, %d children opened the directory), %d acked ops, %d required to survive, %d survived; reopens dropped %d torn tails and %d torn segment headers, found %d temporary files and %d snapshots; %v",
				seed, policy, st.rounds, st.verified, st.childOpens, st.acked, st.required, st.survived, st.tornTails, st.tornHeaders, st.temps, len(st.snapshots), time.Since(start).Round(time.Millisecond))
		})
	}
}

// runCrash runs the rounds of one policy on one directory.
func runCrash(t *testing.T, policy FsyncPolicy, seed uint64, rounds int) crashStats {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, uint64(policy)))
	st := crashStats{snapshots: map[string]bool{}}
	want := map[string]string{} // the keys of verified rounds still kept
	var pending []*crashRound   // killed rounds not yet verified
	var lastClean uint64        // the offset of the parent's last Close
	clean := false              // the last open of the directory was the parent's, closed
	for round := range rounds {
		cr := runCrashChild(t, dir, policy, seed, round, rng)
		st.rounds++
		st.tornTails += strings.Count(cr.stderr.String(), "dropped a torn tail")
		st.tornHeaders += strings.Count(cr.stderr.String(), "dropped a segment whose header was torn")
		where := fmt.Sprintf("seed %d, %s, round %d (%s)", seed, policy, round, cr.killedBy)
		if cr.opened {
			st.childOpens++
			if clean {
				require.Equal(t, lastClean, cr.start, "%s: the child did not open where the last Close left off", where)
			}
			require.GreaterOrEqual(t, cr.start, lastClean, "%s: the child opened behind the last verified offset", where)
			for _, prev := range pending {
				require.GreaterOrEqual(t, cr.start, prev.durable, "%s: the child opened behind what round %d saw durable", where, prev.round)
			}
			clean = false
		}
		t.Logf("round %d: killed %s; opened at %d: %v, last ops returned %v, synced %v, durable %d", round, cr.killedBy, cr.start, cr.opened, cr.acked, cr.synced, cr.durable)
		pending = append(pending, cr)
		// Most kills are checked at once; the others are recovered by the
		// next child, which may itself be killed while it recovers.
		if round < rounds-1 && rng.IntN(4) == 0 {
			continue
		}
		lastClean = verifyCrash(t, dir, policy, where, pending, want, &st)
		pending, clean = nil, true
		st.verified++
	}
	return st
}

// runCrashChild starts a child on dir for round, kills it at a moment
// drawn from rng and returns what it reported.
func runCrashChild(t *testing.T, dir string, policy FsyncPolicy, seed uint64, round int, rng *rand.Rand) *crashRound {
	t.Helper()
	segment := int64(4 << 10)
	if rng.IntN(2) == 0 {
		segment = 1 << 20
	}
	cfg, err := json.Marshal(crashChild{Dir: dir, Policy: policy, Round: round, Writers: crashWriters, Segment: segment, Seed: seed})
	require.NoError(t, err)
	cr := &crashRound{round: round, stderr: &bytes.Buffer{}}
	proc := startCrashProc(t, "TestCrashChild", crashChildEnv, cfg, cr.stderr)
	defer proc.events.Close()
	started := time.Now()

	// The schedule: a kill after some ops returned, or after a delay
	// from the open, or from the start (often while the child recovers
	// the last kill).
	killAt, delay, fromOpen := -1, time.Duration(0), false
	switch x := rng.IntN(20); {
	case x < 2:
		delay = time.Duration(rng.IntN(50)) * time.Millisecond
		cr.killedBy = fmt.Sprintf("%v after start", delay)
	case x < 11:
		killAt = rng.IntN(1000)
		cr.killedBy = fmt.Sprintf("after %d acks", killAt)
	default:
		delay, fromOpen = time.Duration(rng.IntN(50_000))*time.Microsecond, true
		cr.killedBy = fmt.Sprintf("%v after open", delay)
	}

	cr.acked, cr.synced = make([]int, crashWriters), make([]int, crashWriters)
	for w := range crashWriters {
		cr.acked[w], cr.synced[w] = -1, -1
	}
	opened, reached := make(chan struct{}), make(chan struct{})
	read := make(chan error, 1)
	go func() { read <- readCrashEvents(proc.events, cr, killAt, opened, reached) }()
	proc.kill(t, fmt.Sprintf("round %d (%s)", round, cr.killedBy), reached, opened, killAt < 0, fromOpen, delay,
		func() string { return fmt.Sprintf("%d events in %v", cr.events, time.Since(started)) })
	require.NoError(t, <-read, "round %d", round)
	require.NotContains(t, cr.stderr.String(), "DATA RACE", "round %d", round)
	return cr
}

// readCrashEvents reads the child's reports to the end, into cr. It closes
// opened at the O line and reached once killAt ops have returned.
func readCrashEvents(r io.Reader, cr *crashRound, killAt int, opened, reached chan struct{}) error {
	acks := 0
	if killAt == 0 {
		close(reached)
	}
	return scanCrashEvents(r, &cr.events, func(line, kind string, n []uint64) error {
		switch {
		case kind == "O" && len(n) == 1:
			cr.opened, cr.start = true, n[0]
			cr.durable = max(cr.durable, n[0])
			close(opened)
		case kind == "A" && len(n) == 3:
			w, i := int(n[0]), int(n[1])
			if w >= len(cr.acked) || i != cr.acked[w]+1 {
				return fmt.Errorf("event %q out of order", line)
			}
			cr.acked[w] = i
			cr.durable = max(cr.durable, n[2])
			if acks++; acks == killAt {
				close(reached)
			}
		case kind == "S" && len(n) == 1+len(cr.synced):
			cr.durable = max(cr.durable, n[0])
			for w := range cr.synced {
				cr.synced[w] = max(cr.synced[w], int(int64(n[w+1])))
			}
		default:
			return fmt.Errorf("bad event %q", line)
		}
		return nil
	})
}

// scanCrashEvents reads a crash child's reports to the end, counting them
// in events and handing each to each: the line, its kind (the first
// field) and its numbers. A number is unsigned (an offset, a digest) or
// -1 (an S line's "none synced yet"), which reads as math.MaxUint64:
// int(int64(n)) gives it back.
func scanCrashEvents(r io.Reader, events *int, each func(line, kind string, n []uint64) error) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		*events++
		f := strings.Fields(sc.Text())
		n := make([]uint64, len(f)-1)
		for i := range n {
			v, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				s, serr := strconv.ParseInt(f[i+1], 10, 64)
				if serr != nil {
					return fmt.Errorf("bad event %q: %w", sc.Text(), err)
				}
				v = uint64(s)
			}
			n[i] = v
		}
		if err := each(sc.Text(), f[0], n); err != nil {
			return err
		}
	}
	return sc.Err()
}

// verifyCrash reopens dir after the kills of pending and checks it, then
// deletes the keys of rounds older than crashKeep and closes it. It
// returns the offset it closed at.
func verifyCrash(t *testing.T, dir string, policy FsyncPolicy, where string, pending []*crashRound, want map[string]string, st *crashStats) uint64 {
	t.Helper()
	st.temps += countCrashFiles(t, dir, func(name string) bool { return strings.HasSuffix(name, tempSuffix) })
	countCrashFiles(t, dir, func(name string) bool {
		if _, ok := parseSnapshotName(name); ok {
			st.snapshots[name] = true
		}
		return false
	})
	logs := &countingHandler{}
	p, err := NewPrimary[string](crashOpts(dir, FsyncNever, 4<<10, slog.New(logs))...)
	require.NoError(t, err, "%s: reopen", where)
	st.tornTails += int(logs.count("dropped a torn tail"))
	st.tornHeaders += int(logs.count("dropped a segment whose header was torn"))

	off := p.Offset()
	for _, cr := range pending {
		require.GreaterOrEqual(t, off, cr.durable, "%s: the offset went back below what round %d saw durable", where, cr.round)
		if cr.opened {
			require.GreaterOrEqual(t, off, cr.start, "%s: the offset went back below where round %d opened", where, cr.round)
		}
	}

	// Sort the keys: earlier rounds must be exactly as verified, pending
	// rounds are checked writer by writer.
	got := map[int][]map[string]string{}
	for _, cr := range pending {
		got[cr.round] = make([]map[string]string, crashWriters)
		for w := range crashWriters {
			got[cr.round][w] = map[string]string{}
		}
	}
	seen := 0
	for k, v := range p.All() {
		var round, w, i int
		if _, err := fmt.Sscanf(k, "r%05d/w%d/%07d", &round, &w, &i); err != nil || k != crashKey(round, w, i) || w >= crashWriters {
			require.FailNow(t, "a key nobody wrote", "%s: %q", where, k)
		}
		if g, ok := got[round]; ok {
			g[w][k] = v
			continue
		}
		wv, ok := want[k]
		require.True(t, ok, "%s: key %q of an earlier round is back, or was never written", where, k)
		require.Equal(t, wv, v, "%s: key %q of an earlier round has a wrong value", where, k)
		seen++
	}
	require.Equal(t, len(want), seen, "%s: keys of earlier rounds are missing", where)

	for _, cr := range pending {
		for w := range crashWriters {
			required := cr.synced[w]
			if policy == FsyncAlways {
				required = cr.acked[w]
			}
			last := checkCrashPrefix(t, where, cr, w, required, got[cr.round][w])
			st.acked += cr.acked[w] + 1
			st.required += required + 1
			st.survived += last + 1
			for k, v := range got[cr.round][w] {
				want[k] = v
			}
		}
	}

	// Keep the directory small: the oldest kept round goes.
	newest := pending[len(pending)-1].round
	for k := range want {
		var round int
		if _, err := fmt.Sscanf(k, "r%05d/", &round); err == nil && round <= newest-crashKeep {
			require.NoError(t, p.Delete(k))
			delete(want, k)
		}
	}
	off = p.Offset()
	require.NoError(t, p.Close(), "%s: close", where)
	return off
}

// checkCrashPrefix checks that got, writer w's keys in round cr, are what
// the writer's ops 0..k left for some k from required to one past its last
// acknowledged op (which may have been written before the kill), and
// returns k. It replays the ops one by one, counting the keys in which the
// state differs from got.
func checkCrashPrefix(t *testing.T, where string, cr *crashRound, w, required int, got map[string]string) int {
	t.Helper()
	state := map[string]string{}
	differ := len(got)
	same := func(k string) bool {
		a, okA := state[k]
		b, okB := got[k]
		return okA == okB && a == b
	}
	for k := -1; k <= cr.acked[w]+1; k++ {
		if k >= 0 {
			key, value, del := crashOp(cr.round, w, k)
			before := same(key)
			if del {
				delete(state, key)
			} else {
				state[key] = value
			}
			switch after := same(key); {
			case before && !after:
				differ++
			case !before && after:
				differ--
			}
		}
		if differ == 0 && k >= required {
			return k
		}
	}
	// Say where it goes wrong: how the keys differ from what the ops
	// that had to survive left.
	state = map[string]string{}
	for k := 0; k <= required; k++ {
		key, value, del := crashOp(cr.round, w, k)
		if del {
			delete(state, key)
		} else {
			state[key] = value
		}
	}
	var diffs []string
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if v, ok := state[k]; !ok || v != got[k] {
			diffs = append(diffs, fmt.Sprintf("%s = %.30q, want %.30q (present %v)", k, got[k], v, ok))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(state)) {
		if _, ok := got[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing", k))
		}
	}
	require.FailNow(t, "a writer's keys are not what a prefix of its ops that holds every op that had to survive left",
		"%s: writer %d of round %d (killed %s): ops 0..%d had to survive, %d returned; %d keys left; against ops 0..%d: %d differences, the first %q",
		where, w, cr.round, cr.killedBy, required, cr.acked[w], len(got), required, len(diffs), diffs[:min(len(diffs), 5)])
	return 0
}

// countCrashFiles counts the files under dir whose names match.
func countCrashFiles(t *testing.T, dir string, match func(string) bool) int {
	n := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && match(d.Name()) {
			n++
		}
		return err
	})
	require.NoError(t, err)
	return n
}

// countingHandler is a slog.Handler that counts messages.
type countingHandler struct {
	mu sync.Mutex
	n  map[string]int64
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]int64{}
	}
	h.n[r.Message]++
	return nil
}

func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func (h *countingHandler) count(msg string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[msg]
}

// crashProc is a child process of a crash test: the test binary run again
// with its config in env, reporting on file descriptor 3 (events), killed
// with SIGKILL.
type crashProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser // held open: the child exits when it closes
	events *os.File
	stderr *bytes.Buffer
	exited chan error
}

// startCrashProc starts the test named test as a child, with cfg in the
// environment variable env.
func startCrashProc(t *testing.T, test, env string, cfg []byte, stderr *bytes.Buffer) *crashProc {
	t.Helper()
	events, eventsW, err := os.Pipe()
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+string(cfg))
	cmd.ExtraFiles = []*os.File{eventsW}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	require.NoError(t, cmd.Start())
	eventsW.Close()
	p := &crashProc{cmd: cmd, stdin: stdin, events: events, stderr: stderr, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	return p
}

// kill waits for the moment drawn for the round, kills the child and
// checks that the kill is what ended it. The moment is reached closing,
// or, if timed, delay after event closes (fromEvent) or after now. A
// child that exits by itself, or does not reach its moment within a
// minute, fails the test; progress says how far it got.
func (p *crashProc) kill(t *testing.T, round string, reached, event <-chan struct{}, timed, fromEvent bool, delay time.Duration, progress func() string) {
	t.Helper()
	var timer <-chan time.Time
	if timed && !fromEvent {
		timer = time.After(delay)
	}
	wait := time.NewTimer(time.Minute)
	defer wait.Stop()
	for killed := false; !killed; {
		select {
		case <-event:
			event = nil
			if timed && fromEvent {
				timer = time.After(delay)
			}
		case <-timer:
			killed = true
		case <-reached:
			killed = true
		case err := <-p.exited:
			p.stdin.Close()
			require.FailNow(t, "the crash child exited by itself", "%s: %v\n%s", round, err, p.stderr)
		case <-wait.C:
			_ = p.cmd.Process.Kill()
			<-p.exited
			require.FailNow(t, "the crash child did not reach its kill", "%s, %s\n%s", round, progress(), p.stderr)
		}
	}
	_ = p.cmd.Process.Kill() // if it had exited by itself, its status says so
	err := <-p.exited
	p.stdin.Close()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, round)
	require.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal(), "%s: the child ended otherwise: %v\n%s", round, err, p.stderr)
}

// crashChildSetUp is the start of a crash test's child: it reads its
// config from env into cfg (skipping when env is unset: run directly),
// exits when the parent goes away, and returns the file it reports on.
func crashChildSetUp(t *testing.T, env, parent string, cfg any) *os.File {
	raw := os.Getenv(env)
	if raw == "" {
		t.Skip("runs only as the child of " + parent)
	}
	if err := json.Unmarshal([]byte(raw), cfg); err != nil {
		crashChildFail("config", err)
	}
	// The parent holds our stdin open: if it dies, so do we.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		crashChildFail("stdin", errors.New("the parent went away"))
	}()
	return os.NewFile(3, "events")
}
