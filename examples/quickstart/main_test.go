package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRun(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out))
	s := out.String()
	assert.Contains(t, s, "writes acknowledged by 2 of 2 replicas")
	assert.Contains(t, s, "replica 0: user:2 = {Name:Grace Email:grace@example.com Score:85} (found true), user:1 found false, 1 key(s)")
	assert.Contains(t, s, "replica 1: write rejected: replmap: replica is read-only")
	assert.Contains(t, s, "2 full sync(s)")
}
