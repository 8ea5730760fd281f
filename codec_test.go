package replmap

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValueCodecRoundTrip(t *testing.T) {
	for _, s := range []string{"", "x", string(bytes.Repeat([]byte("y"), 31)), string(bytes.Repeat([]byte("z"), 300)), string(bytes.Repeat([]byte("w"), 70000))} {
		b, err := appendValue(nil, s)
		require.NoError(t, err)
		got, err := decodeValue[string](b)
		require.NoError(t, err)
		assert.Equal(t, s, got)
		// The fast path writes what the reflective codec reads.
		var viaCodec any
		viaCodec, err = decodeValue[any](b)
		require.NoError(t, err)
		assert.Equal(t, s, viaCodec)
	}
	for _, n := range []int{0, 1, 255, 256, 65535, 65536, 1 << 20} {
		in := bytes.Repeat([]byte{0xab}, n)
		b, err := appendValue(nil, in)
		require.NoError(t, err)
		got, err := decodeValue[[]byte](b)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(in, got), "len %d", n)
	}
	b, err := appendValue[[]byte](nil, nil)
	require.NoError(t, err)
	got, err := decodeValue[[]byte](b)
	require.NoError(t, err)
	assert.Nil(t, got)
	_, err = decodeValue[[]byte]([]byte{0xc4, 5, 1})
	assert.ErrorIs(t, err, ErrProtocol)
}

// TestCheckMsgpack: every value the encoder produces passes the length
// check, and lengths that claim more than the bytes present fail it.
func TestCheckMsgpack(t *testing.T) {
	type inner struct {
		B []byte
		F float32
	}
	type outer struct {
		S   string
		I   int64
		U   uint16
		N   *int
		M   map[string]inner
		A   []any
		T   time.Time
		Big []byte
	}
	values := []any{
		nil, true, false, 0, -1, 127, 128, -33, 1 << 40, -1 << 40, 3.5, float32(1.25),
		"", "short", string(bytes.Repeat([]byte("s"), 300)), string(bytes.Repeat([]byte("s"), 70000)),
		[]byte{}, bytes.Repeat([]byte{1}, 70000), []int{1, 2, 3}, make([]int, 20), make([]int, 70000),
		map[string]int{"a": 1}, map[int]string{1: "x", 2: "y"},
		outer{S: "x", I: -5, U: 9, M: map[string]inner{"k": {B: []byte("v"), F: 2}}, A: []any{1, "two", []byte{3}, nil},
			T: time.Unix(1700000000, 5).UTC(), Big: make([]byte, 1<<20)},
	}
	for i, v := range values {
		b, err := appendValue(nil, v)
		require.NoError(t, err, "value %d", i)
		assert.NoError(t, checkMsgpack(b), "value %d (%T)", i, v)
	}
	for name, b := range map[string][]byte{
		"empty":                 {},
		"never-used byte":       {0xc1},
		"two values":            {0x01, 0x02},
		"str8 beyond end":       {0xd9, 10, 'a'},
		"bin32 of 4 GiB":        {0xc6, 0xff, 0xff, 0xff, 0xff},
		"array32 of 800M":       {0xdd, '0', '0', '0', '0', 0xdd, '0', '0', '0', '0'},
		"map16 beyond bytes":    {0xde, 0x00, 0x05, 1, 2},
		"truncated float64":     {0xcb, 0, 0},
		"fixext16 truncated":    {0xd8, 1, 2},
		"ext32 length overflow": {0xc9, 0xff, 0xff, 0xff, 0xff, 1},
	} {
		assert.ErrorIs(t, checkMsgpack(b), ErrProtocol, name)
	}
}
