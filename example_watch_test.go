package replmap_test

import (
	"context"
	"fmt"

	"github.com/replmap/replmap"
)

// A cache of the keys under a prefix that stays exact: List returns them
// as of one offset, and Watch from that offset yields every change after
// it, with no gap and no duplicate.
func ExamplePrimary_Watch() {
	p, err := replmap.NewPrimary[string]()
	if err != nil {
		panic(err)
	}
	defer p.Close()
	_ = p.Set("flags/dark-mode", "on")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	flags, offset, err := p.List(ctx, "flags/")
	if err != nil {
		panic(err)
	}
	fmt.Println("listed:", flags)

	go func() {
		_ = p.Set("flags/beta", "off")
		_ = p.Set("users/1", "Ada") // not under the prefix
		_ = p.Delete("flags/dark-mode")
	}()
	seen := 0
	for ev, err := range p.Watch(ctx, "flags/", offset) {
		if err != nil { // ErrCompacted: list again and watch from its offset
			panic(err)
		}
		if ev.Deleted {
			delete(flags, ev.Key)
		} else {
			flags[ev.Key] = ev.Value
		}
		if seen++; seen == 2 {
			break
		}
	}
	fmt.Println("now:", flags)
	// Output:
	// listed: map[flags/dark-mode:on]
	// now: map[flags/beta:off]
}
