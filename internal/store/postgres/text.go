package postgres

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// storable reports whether a PostgreSQL text column can hold s: valid UTF-8
// without NUL (SQLite would store either). A value that cannot be stored
// cannot name an existing row, so lookups answer ErrNotFound for it instead
// of surfacing the server's encoding error.
func storable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// checkText rejects unstorable values of writes, naming the field.
// pairs is name, value, name, value, ...
func checkText(pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if !storable(pairs[i+1]) {
			return fmt.Errorf("%s contains NUL or invalid UTF-8", pairs[i])
		}
	}
	return nil
}
