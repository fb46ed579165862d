/* IPv4 parsing, range lists and the sandbox network's address plan (src/base/ip4.c). */
#include <stdio.h>
#include <string.h>

#include "base/ip4.h"
#include "harness.h"

static struct sbx_ip4_range
R(const char *first, const char *last) {
    struct sbx_ip4_range r;
    CHECK(sbx_ip4_parse(first, &r.first) && sbx_ip4_parse(last, &r.last));
    return r;
}

#define CHECK_RANGE(r, a, b)                                                                       \
    do {                                                                                           \
        struct sbx_ip4_range want_ = R(a, b);                                                      \
        char f_[SBX_IP4_STR_MAX], l_[SBX_IP4_STR_MAX];                                             \
        sbx_ip4_format((r).first, f_);                                                             \
        sbx_ip4_format((r).last, l_);                                                              \
        if ((r).first != want_.first || (r).last != want_.last) {                                  \
            fprintf(stderr, "%s:%d: %s-%s != %s-%s\n", __FILE__, __LINE__, f_, l_, a, b);          \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)

TEST(parse_addresses)
{
    uint32_t a;
    CHECK(sbx_ip4_parse("1.2.3.4", &a) && a == 0x01020304);
    CHECK(sbx_ip4_parse("255.255.255.255", &a) && a == 0xffffffff);
    CHECK(sbx_ip4_parse("0.0.0.0", &a) && a == 0);
    const char *bad[] = {"",         "1.2.3",  "1.2.3.4.5", "256.1.1.1", "1.2.3.4 ",  " 1.2.3.4",
                         "01.2.3.4", "1..2.3", "1.2.3.-4",  "0x1.2.3.4", "1.2.3.4/8", "10"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (sbx_ip4_parse(bad[i], &a)) {
            fprintf(stderr, "accepted '%s'\n", bad[i]);
            CHECK(false);
        }
    char buf[SBX_IP4_STR_MAX];
    sbx_ip4_format(0xc0a80001, buf);
    CHECK_STR(buf, "192.168.0.1");
}

TEST(parse_cidrs)
{
    struct sbx_ip4_range r;
    int len;
    CHECK(sbx_ip4_parse_cidr("10.1.2.3/8", &r, &len) && len == 8);
    CHECK_RANGE(r, "10.0.0.0", "10.255.255.255"); /* host bits masked away */
    CHECK(sbx_ip4_parse_cidr("1.1.1.1", &r, &len) && len == 32);
    CHECK_RANGE(r, "1.1.1.1", "1.1.1.1");
    CHECK(sbx_ip4_parse_cidr("0.0.0.0/0", &r, &len) && len == 0);
    CHECK_RANGE(r, "0.0.0.0", "255.255.255.255");
    const char *bad[] = {"1.2.3.4/33",  "1.2.3.4/", "1.2.3.4/-1",  "1.2.3.4/08",
                         "1.2.3.4/8/8", "::/0",     "example.com", "1.2.3.4/100"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(!sbx_ip4_parse_cidr(bad[i], &r, &len));
    CHECK(sbx_ip6_like("2001:db8::/32") && !sbx_ip6_like("10.0.0.0/8"));
}

TEST(normalize_merges_overlapping_and_adjacent_ranges)
{
    struct sbx_ip4_range r[] = {
        R("10.0.1.0", "10.0.1.255"),           R("1.1.1.1", "1.1.1.1"),
        R("10.0.0.0", "10.0.0.255"),           R("10.0.0.128", "10.0.3.0"),
        R("255.255.255.0", "255.255.255.255"), R("255.255.255.255", "255.255.255.255")};
    size_t n = sbx_ip4_ranges_normalize(r, 6);
    CHECK(n == 3);
    CHECK_RANGE(r[0], "1.1.1.1", "1.1.1.1");
    CHECK_RANGE(r[1], "10.0.0.0", "10.0.3.0");
    CHECK_RANGE(r[2], "255.255.255.0", "255.255.255.255");
    CHECK(sbx_ip4_ranges_are_normal(r, n));
    struct sbx_ip4_range adjacent[] = {R("1.0.0.0", "1.0.0.255"), R("1.0.1.0", "1.0.1.255")};
    CHECK(!sbx_ip4_ranges_are_normal(adjacent, 2));
    struct sbx_ip4_range reversed[] = {R("1.0.0.9", "1.0.0.1")};
    CHECK(!sbx_ip4_ranges_are_normal(reversed, 1));
    struct sbx_ip4_range unsorted[] = {R("9.0.0.0", "9.0.0.0"), R("1.0.0.0", "1.0.0.0")};
    CHECK(!sbx_ip4_ranges_are_normal(unsorted, 2));
    CHECK(sbx_ip4_ranges_normalize(r, 0) == 0);
}

TEST(subtract_opens_holes)
{
    struct sbx_ip4_range out[16];
    struct sbx_ip4_range open[] = {R("10.20.0.0", "10.20.255.255"),
                                   R("192.168.0.0", "192.168.255.255")};
    int n =
        sbx_ip4_ranges_subtract(sbx_ip4_always_blocked, sbx_ip4_n_always_blocked, open, 2, out, 16);
    CHECK(n == (int)sbx_ip4_n_always_blocked); /* 10/8 splits in two, 192.168/16 goes */
    CHECK(sbx_ip4_ranges_are_normal(out, (size_t)n));
    CHECK_RANGE(out[1], "10.0.0.0", "10.19.255.255");
    CHECK_RANGE(out[2], "10.21.0.0", "10.255.255.255");
    uint32_t a;
    CHECK(sbx_ip4_parse("10.20.3.4", &a) && !sbx_ip4_ranges_contain(out, (size_t)n, a));
    CHECK(sbx_ip4_parse("192.168.1.1", &a) && !sbx_ip4_ranges_contain(out, (size_t)n, a));
    CHECK(sbx_ip4_parse("169.254.169.254", &a) && sbx_ip4_ranges_contain(out, (size_t)n, a));
    CHECK(sbx_ip4_parse("127.0.0.1", &a) && sbx_ip4_ranges_contain(out, (size_t)n, a));
    CHECK(sbx_ip4_parse("8.8.8.8", &a) && !sbx_ip4_ranges_contain(out, (size_t)n, a));
    /* Not enough room: an error, never a cut list. */
    CHECK(sbx_ip4_ranges_subtract(sbx_ip4_always_blocked, sbx_ip4_n_always_blocked, open, 2, out,
                                  3) < 0);
}

TEST(always_blocked_list_is_normal_and_covers_the_internal_ranges)
{
    CHECK(sbx_ip4_ranges_are_normal(sbx_ip4_always_blocked, sbx_ip4_n_always_blocked));
    const char *in[] = {"0.1.2.3",         "10.9.8.7",    "100.64.0.1",
                        "127.0.0.1",       "169.254.1.1", "172.31.255.255",
                        "192.168.100.100", "224.0.0.1",   "255.255.255.255"};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        uint32_t a;
        CHECK(sbx_ip4_parse(in[i], &a));
        CHECK(sbx_ip4_ranges_contain(sbx_ip4_always_blocked, sbx_ip4_n_always_blocked, a));
    }
    const char *out[] = {"1.1.1.1", "8.8.8.8", "172.32.0.1", "198.51.100.7", "100.128.0.1"};
    for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++) {
        uint32_t a;
        CHECK(sbx_ip4_parse(out[i], &a));
        CHECK(!sbx_ip4_ranges_contain(sbx_ip4_always_blocked, sbx_ip4_n_always_blocked, a));
    }
}

TEST(netplan_addresses_follow_the_slot)
{
    struct sbx_netplan p;
    CHECK(sbx_netplan_parse("10.201.0.0/16", &p) && p.prefix == 16);
    char buf[SBX_IP4_STR_MAX];
    sbx_ip4_format(sbx_netplan_gateway(&p), buf);
    CHECK_STR(buf, "10.201.0.1");
    sbx_ip4_format(sbx_netplan_sandbox(&p, 0), buf);
    CHECK_STR(buf, "10.201.1.0");
    sbx_ip4_format(sbx_netplan_sandbox(&p, 4095), buf);
    CHECK_STR(buf, "10.201.16.255");
    for (int slot = 0; slot < 4096; slot += 7) {
        uint32_t a = sbx_netplan_sandbox(&p, slot);
        CHECK(sbx_netplan_slot(&p, a) == slot);
        CHECK((a & 63) == (uint32_t)(slot & 63)); /* the nftables shard */
    }
    CHECK(sbx_netplan_slot(&p, sbx_netplan_gateway(&p)) < 0);
    CHECK(sbx_netplan_slot(&p, sbx_netplan_sandbox(&p, 4095) + 1) < 0);
    CHECK(sbx_netplan_parse("172.20.0.0/19", &p));
    CHECK(!sbx_netplan_parse("172.20.0.0/20", &p)); /* too small for 4,096 sandboxes */
    CHECK(!sbx_netplan_parse("10.0.0.0/7", &p));
    CHECK(!sbx_netplan_parse("bogus", &p));
}

TEST_MAIN(30)
