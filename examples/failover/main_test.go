package main

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestFailover runs the walk-through at a small scale: every replica
// resumes partially, after the failover and after the handover.
func TestFailover(t *testing.T) {
	var out strings.Builder
	require.NoError(t, run(context.Background(), []string{"-keys", "2000"}, &out))
	text := out.String()
	t.Log(text)
	assert.Equal(t, 2, strings.Count(text, "primary killed")+strings.Count(text, "handed over"))
	assert.Equal(t, 4, strings.Count(text, "resumed with a partial resync"), "two replicas switch each time")
	assert.NotContains(t, text, "full sync")
	assert.Equal(t, 2, strings.Count(text, "  all at offset"))
}
