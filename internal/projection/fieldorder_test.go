package projection

import (
	"reflect"
	"strings"
	"testing"
)

// json.Marshal writes struct fields in declaration order; declared in the
// byte order of their JSON names, the documents come out canonical and
// canonicalizing them takes the fast path (runs.CanonicalizeRaw) instead
// of a decode and re-encode per write.
func TestDocumentFieldsInCanonicalOrder(t *testing.T) {
	for _, v := range []any{RunSummary{}, RuntimeSource{}, WorkerSummary{}, WorkerEventDocument{}} {
		typ := reflect.TypeOf(v)
		prev := ""
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if i > 0 && name <= prev {
				t.Errorf("%s: field %q comes after %q", typ.Name(), name, prev)
			}
			prev = name
		}
	}
}
