/* IPv4 addresses and ranges: the syntax of E2B's egress rules (an address or a CIDR), lists
 * of ranges kept sorted and merged (what nftables interval sets accept without overlaps), the
 * destinations sandboxes never reach, and the address plan of a daemon's sandbox network.
 *
 * Pure functions over host-order integers: no I/O, no allocation. Used by the front end (to
 * validate and normalise rules) and by the spawner (to check them again and to build its
 * nftables table), so both compute the same addresses from the same uid slot. */
#ifndef SBX_BASE_IP4_H
#define SBX_BASE_IP4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SBX_IP4_STR_MAX 16 /* "255.255.255.255" and its NUL */

/* An inclusive range of addresses, host byte order. */
struct sbx_ip4_range {
    uint32_t first, last;
};

/* "a.b.c.d", decimal, exactly four parts (no inet_aton shorthands such as "10.1"). */
bool sbx_ip4_parse(const char *s, uint32_t *out);
void sbx_ip4_format(uint32_t a, char out[SBX_IP4_STR_MAX]);
/* "a.b.c.d" or "a.b.c.d/n" (0 <= n <= 32; host bits are masked away, as Go's ParsePrefix
 * callers do). *prefix gets n (32 for a bare address). */
bool sbx_ip4_parse_cidr(const char *s, struct sbx_ip4_range *out, int *prefix);
/* Whether s looks like an IPv6 address or prefix (has a ':'): sandboxes have no IPv6. */
bool sbx_ip6_like(const char *s);

/* Sorts r and merges overlapping and adjacent ranges; returns the new count. */
size_t sbx_ip4_ranges_normalize(struct sbx_ip4_range *r, size_t n);
/* Whether r is what normalize returns: sorted, first <= last, neither overlapping nor
 * adjacent. */
bool sbx_ip4_ranges_are_normal(const struct sbx_ip4_range *r, size_t n);
/* out = a minus b, both normalised; returns the count, or -1 if more than cap. */
int sbx_ip4_ranges_subtract(const struct sbx_ip4_range *a, size_t na, const struct sbx_ip4_range *b,
                            size_t nb, struct sbx_ip4_range *out, size_t cap);
bool sbx_ip4_ranges_contain(const struct sbx_ip4_range *r, size_t n, uint32_t a);
/* Whether some range of r overlaps [x.first, x.last]. */
bool sbx_ip4_ranges_overlap(const struct sbx_ip4_range *r, size_t n, struct sbx_ip4_range x);

/* Destinations no sandbox reaches whatever its rules (normalised): "this" network, private
 * ranges, shared address space, loopback, link-local (cloud metadata lives there), the IETF
 * protocol block, multicast and the reserved and broadcast block. */
extern const struct sbx_ip4_range sbx_ip4_always_blocked[];
extern const size_t sbx_ip4_n_always_blocked;
/* The part of the list above an operator may open (--allow-private): the private and shared
 * ranges, never loopback, link-local or multicast. */
extern const struct sbx_ip4_range sbx_ip4_openable[];
extern const size_t sbx_ip4_n_openable;

/* A daemon's sandbox network: a CIDR of SBX_NETPLAN_MIN_SIZE addresses or more. Its second
 * address is the gateway sandboxes route through (held by the host), and sandbox slot s (its
 * uid slot, unique among the daemon's sandboxes) has address base + 256 + s, so the low six
 * bits of a sandbox's address are its slot's (the nftables shard, see sandbox/nft.c). */
struct sbx_netplan {
    uint32_t base;
    int prefix;
};
#define SBX_NETPLAN_MAX_PREFIX 19 /* 8,192 addresses: the gateway and 4,096 slots fit */
bool sbx_netplan_parse(const char *cidr, struct sbx_netplan *out);
uint32_t sbx_netplan_gateway(const struct sbx_netplan *p);
uint32_t sbx_netplan_sandbox(const struct sbx_netplan *p, int slot);
/* The slot whose address a is, or -1. */
int sbx_netplan_slot(const struct sbx_netplan *p, uint32_t a);
struct sbx_ip4_range sbx_netplan_range(const struct sbx_netplan *p);

#endif
