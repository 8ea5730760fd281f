package replmap

import (
	"hash/fnv"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// typeFingerprint returns a hash of V's shape as msgpack encodes it: kinds,
// element types, and struct fields by their encoded names. It ignores type
// names, so the same struct declared in two packages matches, while a
// replica of another V is refused at the handshake with ErrTypeMismatch
// instead of failing on every record it cannot decode.
func typeFingerprint[V any]() uint64 {
	t := reflect.TypeFor[V]()
	if fp, ok := fingerprints.Load(t); ok {
		return fp.(uint64)
	}
	var b strings.Builder
	describeType(&b, t, map[reflect.Type]int{})
	h := fnv.New64a()
	h.Write([]byte(b.String()))
	fp := h.Sum64()
	fingerprints.Store(t, fp)
	return fp
}

var fingerprints sync.Map // reflect.Type -> uint64

// describeType writes t's shape to b. seen numbers the struct types on
// the current path, so a recursive type ends in a back reference.
func describeType(b *strings.Builder, t reflect.Type, seen map[reflect.Type]int) {
	switch t.Kind() {
	case reflect.Pointer:
		b.WriteString("*")
		describeType(b, t.Elem(), seen)
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			b.WriteString("bytes")
			return
		}
		b.WriteString("[]")
		describeType(b, t.Elem(), seen)
	case reflect.Array:
		b.WriteString("[" + strconv.Itoa(t.Len()) + "]")
		describeType(b, t.Elem(), seen)
	case reflect.Map:
		b.WriteString("map[")
		describeType(b, t.Key(), seen)
		b.WriteString("]")
		describeType(b, t.Elem(), seen)
	case reflect.Struct:
		if i, ok := seen[t]; ok {
			b.WriteString("@" + strconv.Itoa(i))
			return
		}
		seen[t] = len(seen)
		defer delete(seen, t)
		b.WriteString("{")
		for i := range t.NumField() {
			f := t.Field(i)
			name := f.Name
			if tag, ok := f.Tag.Lookup("codec"); ok {
				name, _, _ = strings.Cut(tag, ",")
			}
			if !f.IsExported() || name == "-" {
				continue
			}
			b.WriteString(name + ":")
			describeType(b, f.Type, seen)
			b.WriteString(";")
		}
		b.WriteString("}")
	default:
		// Basic kinds, interfaces, and kinds msgpack cannot encode (which
		// fail at Set before any replica sees them).
		b.WriteString(t.Kind().String())
	}
}
