/* The daemon's routing tables (src/daemon/live.c) and the search for the sandbox of a
 * presigned URL without an id (src/daemon/signed.c), with up to SBX_MAX_SANDBOXES fake
 * sandboxes. The cost is counted, never timed: this binary is linked with
 * --wrap=sbx_signature_v1_matches, so every signature computed is seen here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/signature.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "daemon/signed.h"
#include "harness.h"

static int computed;

bool __real_sbx_signature_v1_matches(const char *sig, const char *path, const char *operation,
                                     const char *user, const char *token, bool has_exp,
                                     int64_t exp);
bool __wrap_sbx_signature_v1_matches(const char *sig, const char *path, const char *operation,
                                     const char *user, const char *token, bool has_exp,
                                     int64_t exp);

bool
__wrap_sbx_signature_v1_matches(const char *sig, const char *path, const char *operation,
                                const char *user, const char *token, bool has_exp, int64_t exp)
{
    computed++;
    return __real_sbx_signature_v1_matches(sig, path, operation, user, token, has_exp, exp);
}

static struct sbx_daemon d; /* static: the id index alone is 64 KiB */

static struct sbx_live *
fake(bool secure)
{
    struct sbx_live *l = calloc(1, sizeof(*l));
    CHECK(l != NULL);
    l->rec = calloc(1, sizeof(*l->rec));
    CHECK(l->rec != NULL);
    CHECK(sbx_random_id(l->rec->id, SBX_DAEMON_ID_LEN) == 0);
    if (secure) {
        char tok[65];
        sbx_random_hex(tok, 32);
        l->rec->access_token = strdup(tok);
    }
    sbx_live_insert(&d, l);
    return l;
}

/* Fills in a request for a URL the SDKs presign for token (read: GET, write: POST). */
static void
presigned(struct sbx_http_req *req, char *query, size_t qlen, const char *method, const char *token)
{
    char sig[SBX_SIGNATURE_MAX], enc[3 * SBX_SIGNATURE_MAX];
    sbx_signature_v1("dir/a b.txt", strcmp(method, "POST") == 0 ? "write" : "read", "root",
                     token ? token : "not a token of any sandbox", false, 0, sig);
    size_t n = 0;
    for (const char *p = sig; *p; p++)
        n += (size_t)snprintf(enc + n, sizeof(enc) - n, *p == '+' || *p == '/' ? "%%%02X" : "%c",
                              (unsigned char)*p);
    snprintf(query, qlen, "path=dir%%2Fa%%20b.txt&username=root&signature=%s", enc);
    *req = (struct sbx_http_req){.method = method, .path = "/files", .query = query};
}

/* The sandbox found for a presigned URL of token, and how many signatures that cost. */
static struct sbx_live *
route(const char *method, const char *token, int *cost)
{
    struct sbx_http_req req;
    char query[512];
    presigned(&req, query, sizeof(query), method, token);
    struct sbx_live *out = NULL;
    computed = 0;
    CHECK(sbx_signed_find(&d, &req, &out));
    *cost = computed;
    return out;
}

static int
min(int a, int b)
{
    return a < b ? a : b;
}

TEST(lookup_by_id_computes_no_signature)
{
    static struct sbx_live *all[SBX_MAX_SANDBOXES];
    for (int i = 0; i < SBX_MAX_SANDBOXES; i++)
        all[i] = fake(i % 2 == 0);
    computed = 0;
    for (int i = 0; i < SBX_MAX_SANDBOXES; i++)
        CHECK(sbx_live_find(&d, all[i]->rec->id) == all[i]);
    CHECK(sbx_live_find(&d, "nosuchsandbox") == NULL);
    CHECK(computed == 0);
    sbx_live_remove(&d, all[7]);
    CHECK(sbx_live_find(&d, all[7]->rec->id) == NULL);
    CHECK(sbx_live_find(&d, all[8]->rec->id) == all[8]);
}

TEST(presigned_search_costs_the_same_for_any_number_of_sandboxes)
{
    static struct sbx_live *all[SBX_MAX_SANDBOXES];
    const int sizes[] = {1, 16, SBX_SIGNED_URL_CANDIDATES, 512, SBX_MAX_SANDBOXES};
    int n = 0;
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (; n < sizes[s]; n++)
            all[n] = fake(true);
        int want = min(n, SBX_SIGNED_URL_CANDIDATES), cost_bad, cost_new, cost_mid;
        /* A wrong signature, the newest sandbox's and one from the middle of the window: the
         * same number of signatures each, so the time says nothing about a match. */
        CHECK(route("GET", NULL, &cost_bad) == NULL);
        CHECK(route("POST", all[n - 1]->rec->access_token, &cost_new) == all[n - 1]);
        struct sbx_live *mid = all[n - 1 - (want - 1) / 2];
        CHECK(route("GET", mid->rec->access_token, &cost_mid) == mid);
        fprintf(stderr,
                "sandboxes=%d signatures per presigned lookup: wrong=%d newest=%d middle=%d\n", n,
                cost_bad, cost_new, cost_mid);
        CHECK(cost_bad == want && cost_new == want && cost_mid == want);
    }
}

TEST(only_recent_proven_use_makes_a_candidate)
{
    struct sbx_live *old = fake(true);
    fake(false); /* not secure: no presigned URLs, never a candidate */
    struct sbx_live *last = NULL;
    for (int i = 0; i < SBX_SIGNED_URL_CANDIDATES; i++)
        last = fake(true);
    int cost;
    CHECK(route("GET", old->rec->access_token, &cost) == NULL);
    CHECK(cost == SBX_SIGNED_URL_CANDIDATES);
    fprintf(stderr, "sandbox used %d sandboxes ago: not found (%d signatures)\n",
            SBX_SIGNED_URL_CANDIDATES, cost);
    sbx_live_touch(&d, old); /* e.g. the SDK's next call with its token */
    CHECK(route("GET", old->rec->access_token, &cost) == old);
    CHECK(route("GET", last->rec->access_token, &cost) == last);
    sbx_live_remove(&d, old);
    CHECK(route("GET", old->rec->access_token, &cost) == NULL);
    sbx_sandbox_rec_free(old->rec); /* removed from the table: ours again */
    free(old);
}

TEST(other_requests_are_not_presigned)
{
    fake(true);
    struct sbx_http_req req = {.method = "GET", .path = "/files", .query = "path=a.txt"};
    struct sbx_live *out = NULL;
    computed = 0;
    CHECK(!sbx_signed_find(&d, &req, &out));
    req = (struct sbx_http_req){.method = "PUT", .path = "/files", .query = "signature=v1_x"};
    CHECK(!sbx_signed_find(&d, &req, &out));
    req = (struct sbx_http_req){.method = "GET", .path = "/sandboxes", .query = "signature=v1_x"};
    CHECK(!sbx_signed_find(&d, &req, &out));
    CHECK(computed == 0 && out == NULL);
    /* Presigned, but with an expiration no token can have signed: refused at no cost. */
    req = (struct sbx_http_req){
        .method = "GET", .path = "/files", .query = "signature=v1_x&signature_expiration=soon"};
    CHECK(sbx_signed_find(&d, &req, &out) && out == NULL && computed == 0);
}

TEST_MAIN(60)
