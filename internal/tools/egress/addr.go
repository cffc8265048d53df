package egress

import (
	"net/netip"
	"strings"
)

// Block reasons. The caller reports them as "ssrf_block.<reason>".
const (
	ReasonInvalidURL       = "invalid_url"
	ReasonSchemeNotAllowed = "scheme_not_allowed"
	ReasonLoopback         = "loopback"
	ReasonPrivate          = "private"
	ReasonLinkLocal        = "link_local"
	ReasonCGNAT            = "cgnat"
	ReasonMetadata         = "metadata"
	ReasonUnspecified      = "unspecified"
	ReasonMulticast        = "multicast"
	ReasonReserved         = "reserved"
	ReasonHostNotAllowed   = "host_not_allowed"
	ReasonTooManyRedirects = "too_many_redirects"
	ReasonDNSFailure       = "dns_failure"
)

// blockRule is one blocked range. Order matters: the first matching rule names the reason,
// so the metadata addresses come before the link-local and private ranges that contain them.
type blockRule struct {
	prefix netip.Prefix
	reason string
}

// blockRules returns a fresh rule table; a function keeps it out of mutable package state.
func blockRules() []blockRule {
	r := func(p, reason string) blockRule { return blockRule{netip.MustParsePrefix(p), reason} }
	return []blockRule{
		// Cloud metadata endpoints (AWS/GCP/Azure/OCI IPv4, AWS IPv6, Alibaba).
		r("169.254.169.254/32", ReasonMetadata),
		r("fd00:ec2::254/128", ReasonMetadata),
		r("100.100.100.200/32", ReasonMetadata),

		r("0.0.0.0/8", ReasonUnspecified), // "this network"; 0.0.0.0 dials the local host
		r("::/128", ReasonUnspecified),

		r("127.0.0.0/8", ReasonLoopback),
		r("::1/128", ReasonLoopback),

		r("10.0.0.0/8", ReasonPrivate),
		r("172.16.0.0/12", ReasonPrivate),
		r("192.168.0.0/16", ReasonPrivate),
		r("fc00::/7", ReasonPrivate),

		r("169.254.0.0/16", ReasonLinkLocal),
		r("fe80::/10", ReasonLinkLocal),

		r("100.64.0.0/10", ReasonCGNAT),

		r("224.0.0.0/4", ReasonMulticast),
		r("ff00::/8", ReasonMulticast),

		r("240.0.0.0/4", ReasonReserved), // includes 255.255.255.255 broadcast
		r("fec0::/10", ReasonReserved),   // deprecated site-local, still routed internally by some stacks
	}
}

// embeddedIPv4 returns the IPv4 address carried inside an IPv6 address in the forms that
// reach an IPv4 host: IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64
// well-known prefix (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::/48).
func embeddedIPv4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() {
		return netip.Addr{}, false
	}
	if a.Is4In6() {
		return a.Unmap(), true
	}
	b := a.As16()
	isZero := func(s []byte) bool {
		for _, x := range s {
			if x != 0 {
				return false
			}
		}
		return true
	}
	v4 := func(s []byte) netip.Addr { return netip.AddrFrom4([4]byte{s[0], s[1], s[2], s[3]}) }
	switch {
	case isZero(b[:12]):
		// ::/96 compatible form; :: and ::1 are handled as IPv6 themselves.
		if a == netip.IPv6Unspecified() || a == netip.IPv6Loopback() {
			return netip.Addr{}, false
		}
		return v4(b[12:]), true
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && isZero(b[4:12]):
		return v4(b[12:]), true
	case b[0] == 0x20 && b[1] == 0x02:
		return v4(b[2:6]), true
	}
	return netip.Addr{}, false
}

// CheckAddr returns the block reason for an address, or "" when the address may be dialled.
// IPv6 forms that embed an IPv4 address are judged by the embedded address too.
func CheckAddr(a netip.Addr) string {
	if !a.IsValid() {
		return ReasonInvalidURL
	}
	a = a.WithZone("")
	rules := blockRules()
	for _, c := range candidates(a) {
		for _, rule := range rules {
			if rule.prefix.Contains(c) {
				return rule.reason
			}
		}
	}
	return ""
}

func candidates(a netip.Addr) []netip.Addr {
	if v4, ok := embeddedIPv4(a); ok {
		return []netip.Addr{v4, a}
	}
	return []netip.Addr{a}
}

// metadataHost reports host names that always mean a metadata service, whatever they resolve to.
func metadataHost(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	switch h {
	case "metadata", "metadata.google.internal", "metadata.goog", "metadata.aliyun.internal",
		"instance-data", "instance-data.ec2.internal":
		return true
	}
	return false
}

// Reasons lists every block reason this package can return, so metric label sets can be
// derived from the source of truth instead of copied.
func Reasons() []string {
	return []string{
		ReasonInvalidURL, ReasonSchemeNotAllowed, ReasonLoopback, ReasonPrivate, ReasonLinkLocal,
		ReasonCGNAT, ReasonMetadata, ReasonUnspecified, ReasonMulticast, ReasonReserved,
		ReasonHostNotAllowed, ReasonTooManyRedirects, ReasonDNSFailure,
	}
}
