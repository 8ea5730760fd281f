package replmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "key:" + strconv.Itoa(i)
	}
	return keys
}

func BenchmarkSet(b *testing.B) {
	p, err := NewPrimary[[]byte]()
	require.NoError(b, err)
	defer p.Close()
	keys := benchKeys(100000)
	val := bytes.Repeat([]byte("v"), 100)
	b.ReportAllocs()
	b.SetBytes(100)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := p.Set(keys[i%len(keys)], val); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSetDurable is BenchmarkSet with a data directory, under each
// fsync policy (FsyncAlways with one writer pays a whole fsync per Set).
func BenchmarkSetDurable(b *testing.B) {
	for _, policy := range []FsyncPolicy{FsyncEverySecond, FsyncNever, FsyncAlways} {
		b.Run(policy.String(), func(b *testing.B) {
			p, err := NewPrimary[[]byte](WithDataDir(b.TempDir()), WithFsync(policy))
			require.NoError(b, err)
			defer p.Close()
			keys := benchKeys(100000)
			val := bytes.Repeat([]byte("v"), 100)
			b.ReportAllocs()
			b.SetBytes(100)
			for i := 0; b.Loop(); i++ {
				if err := p.Set(keys[i%len(keys)], val); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSetParallel(b *testing.B) {
	p, err := NewPrimary[[]byte]()
	require.NoError(b, err)
	defer p.Close()
	keys := benchKeys(100000)
	val := bytes.Repeat([]byte("v"), 100)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for i := 0; pb.Next(); i++ {
			if err := p.Set(keys[i%len(keys)], val); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGet(b *testing.B) {
	p, err := NewPrimary[[]byte]()
	require.NoError(b, err)
	defer p.Close()
	keys := benchKeys(100000)
	for _, k := range keys {
		require.NoError(b, p.Set(k, []byte("value")))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, ok := p.Get(keys[i%len(keys)]); !ok {
			b.Fatal("missing")
		}
	}
}

// BenchmarkSetWith2Replicas measures Set with two in-memory replicas
// attached, including the time for both to catch up at the end.
func BenchmarkSetWith2Replicas(b *testing.B) {
	net := transport.NewInmem()
	p := startPrimary[[]byte](b, net, "p")
	rs := []*Replica[[]byte]{startReplica[[]byte](b, net, "p"), startReplica[[]byte](b, net, "p")}
	for _, r := range rs {
		waitSynced(b, r)
	}
	keys := benchKeys(100000)
	val := bytes.Repeat([]byte("v"), 100)
	b.ReportAllocs()
	b.SetBytes(100)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := p.Set(keys[i%len(keys)], val); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := p.Wait(2, 0); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkWaitRoundTrip measures Set followed by Wait(1, 0) with one
// in-memory replica: one GETACK/ACK round trip per op.
func BenchmarkWaitRoundTrip(b *testing.B) {
	b.Run("inmem", func(b *testing.B) { benchWaitRoundTrip(b, transport.NewInmem(), "p") })
	b.Run("tcp", func(b *testing.B) { benchWaitRoundTrip(b, transport.NewTCP(), "127.0.0.1:0") })
}

func benchWaitRoundTrip(b *testing.B, tr transport.Transport, addr string) {
	p, addr := startPrimaryAddr[[]byte](b, tr, addr, WithLogger(nil))
	r := startReplica[[]byte](b, tr, addr, WithLogger(nil))
	waitSynced(b, r)
	val := []byte("value")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := p.Set("k", val); err != nil {
			b.Fatal(err)
		}
		if k, err := p.Wait(1, 0); err != nil || k != 1 {
			b.Fatal(k, err)
		}
	}
}

// BenchmarkFullSync100k measures a new replica's full sync of 100k keys
// with 100-byte values over Inmem, until WaitSynced returns.
func BenchmarkFullSync100k(b *testing.B) {
	net := transport.NewInmem()
	p := startPrimary[[]byte](b, net, "p")
	val := bytes.Repeat([]byte("v"), 100)
	for _, k := range benchKeys(100000) {
		require.NoError(b, p.Set(k, val))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r, err := NewReplica[[]byte](net, "p")
		if err != nil {
			b.Fatal(err)
		}
		if err := r.WaitSynced(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		r.Close()
		b.StartTimer()
	}
}

func BenchmarkFrameEncode(b *testing.B) {
	val := bytes.Repeat([]byte("v"), 100)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		buf, err = appendSetFrame(buf[:0], "key:12345", val, 0, DefaultMaxValueSize)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkFrameDecode(b *testing.B) {
	frame, err := appendSetFrame(nil, "key:12345", bytes.Repeat([]byte("v"), 100), 0, DefaultMaxValueSize)
	require.NoError(b, err)
	stream := bytes.Repeat(frame, 1000)
	rd := bytes.NewReader(stream)
	fr := newFrameReader(rd, DefaultMaxFrameSize)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if _, _, _, err := fr.next(); err == io.EOF {
			rd.Reset(stream)
			fr = newFrameReader(rd, DefaultMaxFrameSize)
		} else if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshot measures snapshot encoding and loading in MB/s.
func BenchmarkSnapshot(b *testing.B) {
	val := bytes.Repeat([]byte("v"), 100)
	keys := benchKeys(10000)
	var enc bytes.Buffer
	sw := snapshotWriter{w: &enc}
	for _, k := range keys {
		require.NoError(b, addEntry(&sw, k, val, 0))
	}
	require.NoError(b, sw.flush())
	snapshot := enc.Bytes()

	b.Run("write", func(b *testing.B) {
		b.SetBytes(int64(len(snapshot)))
		b.ReportAllocs()
		for b.Loop() {
			sw := snapshotWriter{w: io.Discard}
			for _, k := range keys {
				if err := addEntry(&sw, k, val, 0); err != nil {
					b.Fatal(err)
				}
			}
			if err := sw.flush(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read", func(b *testing.B) {
		b.SetBytes(int64(len(snapshot)))
		b.ReportAllocs()
		for b.Loop() {
			fr := newFrameReader(bytes.NewReader(snapshot), DefaultMaxFrameSize)
			loader := newSnapshotLoader[[]byte](DefaultMaxKeySize, DefaultMaxValueSize, 0, 0)
			for {
				_, payload, _, err := fr.next()
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				if err := loader.chunk(frameChunk, payload); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// BenchmarkSetString is BenchmarkSet with string values, which the store
// keeps as given: no allocation.
func BenchmarkSetString(b *testing.B) {
	p, err := NewPrimary[string]()
	require.NoError(b, err)
	defer p.Close()
	keys := benchKeys(100000)
	val := string(bytes.Repeat([]byte("v"), 100))
	b.ReportAllocs()
	b.SetBytes(100)
	for i := 0; b.Loop(); i++ {
		if err := p.Set(keys[i%len(keys)], val); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdate100 is one Update of 100 Sets, no replicas; the figure
// is per Update (divide by 100 for a key).
func BenchmarkUpdate100(b *testing.B) {
	p, err := NewPrimary[[]byte]()
	require.NoError(b, err)
	defer p.Close()
	keys := benchKeys(100000)
	val := bytes.Repeat([]byte("v"), 100)
	b.ReportAllocs()
	b.SetBytes(100 * 100)
	for i := 0; b.Loop(); i++ {
		_, err := p.Update(func(tx *Tx[[]byte]) error {
			for j := range 100 {
				if err := tx.Set(keys[(i*100+j)%len(keys)], val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyTx100 is a replica's work for one TX record of 100 Sets:
// parse, decode and apply under the shard locks.
func BenchmarkApplyTx100(b *testing.B) {
	st := newStore[[]byte]()
	keys := benchKeys(100000)
	val := bytes.Repeat([]byte("v"), 100)
	var payloads [][]byte
	for i := range 1000 {
		tx := binary.BigEndian.AppendUint32(nil, 100)
		for j := range 100 {
			tx = append(tx, byte(frameSet))
			tx = appendString(tx, keys[(i*100+j)%len(keys)])
			tx = appendString(tx, string(appendMsgpackBin(nil, val)))
		}
		payloads = append(payloads, tx)
	}
	var ops []op
	var ws []write[[]byte]
	b.ReportAllocs()
	b.SetBytes(100 * 100)
	for i := 0; b.Loop(); i++ {
		var err error
		if ops, err = parseOps(ops[:0], frameTx, payloads[i%len(payloads)], DefaultMaxKeySize, DefaultMaxValueSize); err != nil {
			b.Fatal(err)
		}
		if ws, err = applyOps(st, ops, ws); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExpiryChurn is the deadline index under W16's load: 1M keys
// with deadlines, and per op the earliest key of a shard expiring and a
// new key taking a later deadline.
func BenchmarkExpiryChurn(b *testing.B) {
	st := newStore[[]byte]()
	const n = 1 << 20
	val := []byte("v")
	base := int64(1) << 40
	keys := make([]string, 2*n)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	for i := range n {
		w := st.setWrite(keys[i], val, base+int64(i))
		st.apply(&w)
	}
	next := n
	var due []string
	for i := 0; b.Loop(); i++ {
		t := base + int64(next-n) + int64(n/2)
		due = st.dueKeys(i%shardCount, t, due[:0], 1)
		for _, k := range due {
			st.expire(k, t)
		}
		w := st.setWrite(keys[next%len(keys)], val, base+int64(next))
		st.apply(&w)
		next++
	}
}

// BenchmarkParseSet is a replica's parse of one SET record.
func BenchmarkParseSet(b *testing.B) {
	frame, err := appendSetFrame(nil, "key:12345", bytes.Repeat([]byte("v"), 100), 0, DefaultMaxValueSize)
	require.NoError(b, err)
	payload := frame[frameHeaderSize : len(frame)-frameCRCSize]
	var ops []op
	b.ReportAllocs()
	for b.Loop() {
		if ops, err = parseOps(ops[:0], frameSet, payload, DefaultMaxKeySize, DefaultMaxValueSize); err != nil {
			b.Fatal(err)
		}
	}
}
