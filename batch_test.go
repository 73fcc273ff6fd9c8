package wsnotify

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestBatchGroupsNotesByPartition(t *testing.T) {
	b := &batcher{single: redis.NewScript("return 1"), many: redis.NewScript("return 2"), sharded: "0"}
	note := func(p int) *call { return &call{note: &notifyRequest{partition: p, maxLen: 10}} }
	publish := &call{cmd: redis.NewIntCmd(context.Background(), "publish", "c", "x")}
	batch := []*call{note(1), publish, note(0), note(1)}
	for range maxNotes {
		batch = append(batch, note(2))
	}
	batch = append(batch, note(2))

	entries := b.entries(context.Background(), batch)
	want := []struct {
		script *redis.Script
		notes  []*call
	}{
		{nil, nil},                               // the PUBLISH, as it came
		{b.many, []*call{batch[0], batch[3]}},    // partition 1, in order
		{b.many, []*call{batch[2]}},              // partition 0
		{b.many, batch[4 : 4+maxNotes]},          // partition 2, one full script...
		{b.many, batch[4+maxNotes : 5+maxNotes]}, // ...and the rest
	}
	if len(entries) != len(want) {
		t.Fatalf("%d entries, want %d", len(entries), len(want))
	}
	for i, w := range want {
		e := entries[i]
		if e.script != w.script || len(e.notes) != len(w.notes) {
			t.Fatalf("entry %d: script %v with %d notes, want %v with %d", i, e.script, len(e.notes), w.script, len(w.notes))
		}
		for j := range w.notes {
			if e.notes[j] != w.notes[j] {
				t.Fatalf("entry %d note %d is out of place", i, j)
			}
		}
		if w.notes != nil && len(e.cmd.Args()) != 3+4*len(w.notes)+3 {
			t.Fatalf("entry %d: %d args for %d notes", i, len(e.cmd.Args()), len(w.notes))
		}
	}
	if entries[0].cmd != publish.cmd {
		t.Fatal("the plain command was not kept")
	}
}
