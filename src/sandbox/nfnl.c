/* A small nf_tables netlink client for the one change made often: adding and deleting a
 * sandbox's elements of the rule sets of our table (nft.c), as one batch. libnftables would
 * fetch the ruleset for its cache before every command (milliseconds with a thousand
 * sandboxes' rules); a batch names the elements and nothing is read but the kernel's
 * acknowledgements. No library (libnftnl and libmnl are not dependencies): the messages are
 * few and fixed, built from validated addresses, and the only bytes parsed are the kernel's
 * answers, every length checked against what was received.
 *
 * A batch (NFNL_MSG_BATCH_BEGIN ... NFNL_MSG_BATCH_END) is one nf_tables transaction: if any
 * of its messages fails, the kernel aborts it and none of its changes is made. One socket,
 * opened when the table is made (sbx_nft_init, in the host's network namespace: net.c enters a
 * sandbox's only within one call) and kept. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox/internal.h"

#define BATCH_MAX (1u << 20) /* far above what SBX_NET_MAX_RULES of two sets take */

static int fd = -1;

int
sbx_nfnl_open(void)
{
    if (fd >= 0)
        return fd;
    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (s < 0)
        return -1;
    /* Errors echo only the failing message's header, not its (large) element list. */
    int one = 1;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    /* A stuck kernel answer must not hang the spawner, whose loop serves every sandbox. */
    struct timeval tv = {.tv_sec = 2};
    if (setsockopt(s, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one)) < 0 ||
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return fd = s;
}

static void
put_raw(struct sbx_nfnl_batch *b, const void *p, size_t n)
{
    static const char zero[NLMSG_ALIGNTO];
    if (sbx_buf_append(&b->buf, p, n, BATCH_MAX) < 0 ||
        sbx_buf_append(&b->buf, zero, NLMSG_ALIGN(n) - n, BATCH_MAX) < 0)
        b->failed = true;
}

/* Starts a message; its length is fixed by msg_end. Returns its offset in the buffer. */
static size_t
msg_begin(struct sbx_nfnl_batch *b, uint16_t type, uint16_t flags, uint16_t res_id)
{
    size_t at = b->buf.len;
    struct nlmsghdr h = {
        .nlmsg_type = type,
        .nlmsg_flags = (uint16_t)(NLM_F_REQUEST | flags),
        .nlmsg_seq = b->seq0 + b->n_msgs,
    };
    struct nfgenmsg g = {
        .nfgen_family =
            type == NFNL_MSG_BATCH_BEGIN || type == NFNL_MSG_BATCH_END ? AF_UNSPEC : NFPROTO_INET,
        .version = NFNETLINK_V0,
        .res_id = htons(res_id),
    };
    put_raw(b, &h, sizeof(h));
    put_raw(b, &g, sizeof(g));
    b->n_msgs++;
    return at;
}

static void
msg_end(struct sbx_nfnl_batch *b, size_t at)
{
    if (!b->failed)
        ((struct nlmsghdr *)(b->buf.data + at))->nlmsg_len = (uint32_t)(b->buf.len - at);
}

static size_t
attr(struct sbx_nfnl_batch *b, uint16_t type, const void *p, size_t n)
{
    size_t at = b->buf.len;
    struct nlattr a = {.nla_len = (uint16_t)(NLA_HDRLEN + n), .nla_type = type};
    put_raw(b, &a, sizeof(a));
    if (n)
        put_raw(b, p, n);
    return at;
}

static void
nest_end(struct sbx_nfnl_batch *b, size_t at)
{
    if (b->failed)
        return;
    size_t n = b->buf.len - at;
    if (n > UINT16_MAX) { /* an attribute's length is 16 bits */
        b->failed = true;
        return;
    }
    ((struct nlattr *)(b->buf.data + at))->nla_len = (uint16_t)n;
}

/* A key: the fields in network byte order, one after the other, each 4 bytes (nf_tables pads
 * every field of a concatenation to 32 bits; an IPv4 address is exactly that). */
static void
key(struct sbx_nfnl_batch *b, uint16_t type, const uint32_t *fields, size_t n)
{
    uint32_t be[2];
    for (size_t i = 0; i < n; i++)
        be[i] = htonl(fields[i]);
    size_t k = attr(b, type, NULL, 0);
    attr(b, NFTA_DATA_VALUE, be, n * sizeof(be[0]));
    nest_end(b, k);
}

void
sbx_nfnl_begin(struct sbx_nfnl_batch *b)
{
    static uint32_t seq;
    memset(b, 0, sizeof(*b));
    b->seq0 = seq += 1u << 16; /* a fresh range per batch: answers to an older one are ignored */
    msg_end(b, msg_begin(b, NFNL_MSG_BATCH_BEGIN, 0, NFNL_SUBSYS_NFTABLES));
}

void
sbx_nfnl_elems(struct sbx_nfnl_batch *b, bool add, const char *table, const char *set,
               uint32_t sandbox, const struct sbx_ip4_range *dest, size_t n)
{
    if (n == 0)
        return;
    uint16_t type =
        (uint16_t)(NFNL_SUBSYS_NFTABLES << 8 | (add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM));
    if (b->n_msgs > SBX_NFNL_MAX_MSGS) {
        b->failed = true;
        return;
    }
    snprintf(b->what[b->n_msgs - 1], sizeof(b->what[0]), "%s %s", add ? "add to" : "delete from",
             set);
    size_t m = msg_begin(b, type, (uint16_t)(NLM_F_ACK | (add ? NLM_F_CREATE : 0)), 0);
    attr(b, NFTA_SET_ELEM_LIST_TABLE, table, strlen(table) + 1);
    attr(b, NFTA_SET_ELEM_LIST_SET, set, strlen(set) + 1);
    size_t list = attr(b, NFTA_SET_ELEM_LIST_ELEMENTS, NULL, 0);
    for (size_t i = 0; i < (dest ? n : 1); i++) {
        size_t e = attr(b, NFTA_LIST_ELEM, NULL, 0);
        if (dest) {
            /* "sandbox . destination range" of an interval set (pipapo): the range's first
             * address in the key, its last in the key's end. */
            key(b, NFTA_SET_ELEM_KEY, (uint32_t[]){sandbox, dest[i].first}, 2);
            key(b, NFTA_SET_ELEM_KEY_END, (uint32_t[]){sandbox, dest[i].last}, 2);
        } else {
            key(b, NFTA_SET_ELEM_KEY, &sandbox, 1);
        }
        nest_end(b, e);
    }
    nest_end(b, list);
    msg_end(b, m);
}

/* Reads the answers to this batch's element messages (1 .. n-2, each with NLM_F_ACK) until
 * each has one, or the batch as a whole was refused (an error answering its first or last
 * message: malformed, no permission). The kernel handles a batch within send(), so the
 * answers are already queued; the receive timeout is a backstop. Returns 0, a kernel error
 * (*failed: the message's index), or -1 with errno when no complete answer came. */
static int
read_acks(uint32_t seq0, uint32_t n, uint32_t *failed, int *kernel_err)
{
    uint32_t answered = 0;
    *kernel_err = 0;
    char buf[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
    while (answered < n - 2) {
        ssize_t got = recv(fd, buf, sizeof(buf), 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        /* Signed: NLMSG_NEXT subtracts the aligned length, which may pass the end; only a
         * positive rest is compared with a message's (unsigned) length. */
        int left = (int)got;
        for (const struct nlmsghdr *h = (const void *)buf; left > 0 && NLMSG_OK(h, (size_t)left);
             h = NLMSG_NEXT(h, left)) {
            uint32_t i = h->nlmsg_seq - seq0;
            if (h->nlmsg_type != NLMSG_ERROR || i >= n)
                continue; /* not an answer to this batch */
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) {
                errno = EPROTO;
                return -1;
            }
            int e = -((const struct nlmsgerr *)NLMSG_DATA(h))->error;
            if (e != 0 && *kernel_err == 0) {
                *kernel_err = e;
                *failed = i;
            }
            if (i == 0 || i == n - 1) {
                if (e != 0)
                    return 0; /* refused whole: no other answer comes */
                continue;
            }
            answered++;
        }
    }
    return 0;
}

int
sbx_nfnl_commit(struct sbx_nfnl_batch *b, struct sbx_error **err)
{
    int rc = 0;
    if (b->n_msgs == 1) /* nothing to change */
        goto out;
    msg_end(b, msg_begin(b, NFNL_MSG_BATCH_END, 0, NFNL_SUBSYS_NFTABLES));
    if (b->failed) {
        rc = sbx_error_set(err, SBX_INTERNAL, 0, "nftables: the change is too large");
        goto out;
    }
    if (fd < 0) {
        rc = sbx_error_set(err, SBX_INTERNAL, 0, "nftables: no netlink socket");
        goto out;
    }
    /* Leftovers of a batch given up on (a timeout) must not be read as this one's. */
    char junk[512];
    while (recv(fd, junk, sizeof(junk), MSG_DONTWAIT) > 0)
        ;
    ssize_t sent = send(fd, b->buf.data, b->buf.len, 0);
    if (sent < 0 || (size_t)sent != b->buf.len) {
        rc = sbx_error_sys(err, sent < 0 ? errno : EMSGSIZE, "nftables: send the change");
        goto out;
    }
    uint32_t failed = 0;
    int e;
    if (read_acks(b->seq0, b->n_msgs, &failed, &e) < 0)
        rc = sbx_error_sys(err, errno, "nftables: the kernel's answer");
    else if (e != 0)
        /* The kernel aborted the whole transaction: none of the batch's changes was made. */
        rc = sbx_error_set(err, SBX_INTERNAL, e, "nftables: %s: %s",
                           failed >= 1 && failed <= SBX_NFNL_MAX_MSGS ? b->what[failed - 1]
                                                                      : "the change",
                           strerror(e));
out:
    sbx_buf_fini(&b->buf);
    return rc;
}
