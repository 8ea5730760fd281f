package replmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// The history record of a data directory: which history its data belongs
// to, so that a restarted node continues it (a primary in a new history
// whose ReplID2 is this one, a replica in this one), and which generation
// directory holds that data. It is small and replaced whole with
// writeFileAtomic, which makes it the directory's commit point.
//
//	magic   8 bytes "RMHIST1\n"
//	payload str replID, str replID2, u64 replID2 offset, u64 epoch,
//	        u64 generation
//	crc     u32 CRC-32C of magic and payload
const historyFileName = "history"

var historyMagic = []byte("RMHIST1\n")

// maxHistoryFile bounds what readHistory reads: two IDs of at most
// maxIDLen bytes and the fixed fields.
const maxHistoryFile = 8 + 2*(binary.MaxVarintLen64+maxIDLen) + 24 + 4

// dirRecord is what the history record holds.
type dirRecord struct {
	hist history
	gen  uint64 // the generation directory holding the data
}

func encodeHistory(r dirRecord) []byte {
	h := r.hist
	b := append([]byte(nil), historyMagic...)
	b = appendString(b, h.replID)
	b = appendString(b, h.replID2)
	b = binary.BigEndian.AppendUint64(b, h.replID2Offset)
	b = binary.BigEndian.AppendUint64(b, h.epoch)
	b = binary.BigEndian.AppendUint64(b, r.gen)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeHistory(b []byte) (dirRecord, error) {
	if len(b) < len(historyMagic)+4 || !bytes.Equal(b[:len(historyMagic)], historyMagic) {
		return dirRecord{}, fmt.Errorf("%w: not a history record", ErrChecksum)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return dirRecord{}, fmt.Errorf("%w: history record", ErrChecksum)
	}
	p := parser{b: body[len(historyMagic):]}
	h := history{
		replID:        string(p.bytes("history replication ID", maxIDLen)),
		replID2:       string(p.bytes("history replication ID 2", maxIDLen)),
		replID2Offset: p.u64("history replication ID 2 offset"),
		epoch:         p.u64("history epoch"),
	}
	gen := p.u64("history generation")
	if err := p.end("history record"); err != nil {
		// The CRC matched, so this is not damage but a record this code
		// does not understand.
		return dirRecord{}, fmt.Errorf("%w: history record: %w", ErrChecksum, err)
	}
	return dirRecord{hist: h, gen: gen}, nil
}

// writeHistory makes h the directory's history record, durably.
func writeHistory(fsys fileSystem, dir string, r dirRecord) error {
	if err := writeFileAtomic(fsys, dir, historyFileName, encodeHistory(r)); err != nil {
		return fmt.Errorf("replmap: writing %s: %w", filepath.Join(dir, historyFileName), err)
	}
	return nil
}

// readHistory returns the directory's history record; ok is false if it
// has none. A damaged record is an error wrapping ErrChecksum that names
// the file.
func readHistory(fsys fileSystem, dir string) (r dirRecord, ok bool, err error) {
	name := filepath.Join(dir, historyFileName)
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return dirRecord{}, false, nil
	}
	if err != nil {
		return dirRecord{}, false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxHistoryFile+1))
	if err != nil {
		return dirRecord{}, false, fmt.Errorf("replmap: reading %s: %w", name, err)
	}
	if len(b) > maxHistoryFile {
		return dirRecord{}, false, fmt.Errorf("%w: %s is larger than a history record", ErrChecksum, name)
	}
	if r, err = decodeHistory(b); err != nil {
		return dirRecord{}, false, fmt.Errorf("%s: %w", name, err)
	}
	return r, true, nil
}
