package app

import (
	"time"

	"github.com/oaruntime/oaruntime/internal/tools"
)

// defaultTools are the built-in tools every node offers.
func defaultTools() *tools.Registry {
	return tools.NewRegistry(tools.Echo{}, tools.Sleep{Max: 5 * time.Minute})
}
