/* A sandbox's network settings (spec network.md §1, §4): decoding a create's "network" object
 * and allow_internet_access, or the body of PUT /sandboxes/{id}/network, into the form the
 * store keeps; and loading that form into what the router, the DNS forwarder and the spawner
 * work with. Pure: no I/O, driven by fuzz/fuzz_json_requests.c.
 *
 * The stored form is the client's object, checked and normalised: allowOut, denyOut (denyOut
 * is ["0.0.0.0/0"] when allow_internet_access was false), allowPublicTraffic,
 * maskRequestHost. Options this server cannot honour are refused with an error naming them,
 * never accepted and ignored. */
#include <stdarg.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/cleanup.h"
#include "base/limits.h"
#include "base/util.h"
#include "daemon/internal.h"
#include "json/json.h"

#define ALL_TRAFFIC     "0.0.0.0/0"
#define DOMAIN_MAX      253
#define DNS_SERVERS_MAX 10 /* as E2B */
#define HTTPS_PORTS_MAX 64

static int bad(struct sbx_error **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
bad(struct sbx_error **err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *msg = sbx_vformat(fmt, ap);
    va_end(ap);
    return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "%s",
                         msg ? msg : "invalid network settings");
}

/* An IPv4 address or CIDR. Its address may be the unspecified 0.0.0.0 only in all traffic,
 * "0.0.0.0/0" (the SDKs' ALL_TRAFFIC). */
static bool
parse_rule_cidr(const char *s, struct sbx_ip4_range *r)
{
    return sbx_ip4_parse_cidr(s, r, NULL) &&
           (strncmp(s, "0.0.0.0", 7) != 0 || strcmp(s, ALL_TRAFFIC) == 0);
}

/* A host name pattern of allowOut: "example.com", "*.example.com" or "*". */
static bool
valid_domain(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DOMAIN_MAX)
        return false;
    if (strcmp(s, "*") == 0)
        return true;
    if (strncmp(s, "*.", 2) == 0)
        s += 2;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
            return false;
    return *s != '\0' && *s != '.' && s[strlen(s) - 1] != '.' && strstr(s, "..") == NULL;
}

/* A list of strings, at most SBX_NET_MAX_RULES. */
static int
get_list(json_t *obj, const char *key, json_t **out, struct sbx_error **err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "network.%s must be a list of strings",
                             key);
    if (json_array_size(v) > SBX_NET_MAX_RULES)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "network.%s has %zu entries; at most %d are allowed", key,
                             json_array_size(v), SBX_NET_MAX_RULES);
    size_t i;
    json_t *e;
    json_array_foreach (v, i, e)
        if (!json_is_string(e))
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "network.%s must be a list of strings", key);
    *out = v;
    return 0;
}

static int
check_mask_host(const char *m, struct sbx_error **err)
{
    for (const unsigned char *p = (const unsigned char *)m; *p; p++)
        if (*p >= 0x80)
            return bad(err, "mask request host is not ASCII: %s", m);
    /* ${PORT} stands for the target port: check the host with a port in its place. */
    char host[300];
    const char *ph = strstr(m, "${PORT}");
    if (strlen(m) >= sizeof(host) - 8)
        return bad(err, "mask request host is not valid: %s", m);
    if (ph)
        snprintf(host, sizeof(host), "%.*s1%s", (int)(ph - m), m, ph + 7);
    else
        snprintf(host, sizeof(host), "%s", m);
    char *colon = strrchr(host, ':');
    if (colon) {
        char *end = NULL;
        long port = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end != '\0' || port < 1 || port > 65535)
            return bad(err, "mask request host is not valid: %s", m);
        *colon = '\0';
    }
    if (host[0] == '\0' || !valid_domain(host) || host[0] == '*')
        return bad(err, "mask request host is not valid: %s", m);
    return 0;
}

/* "host:port", the host a name or an IPv4 address; *port gets the port. */
static bool
parse_host_port(const char *s, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(s, ':');
    char *end = NULL;
    long p = colon ? strtol(colon + 1, &end, 10) : 0;
    if (colon == NULL || end == colon + 1 || *end != '\0' || p < 1 || p > 65535 ||
        (size_t)(colon - s) >= cap)
        return false;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    *port = (int)p;
    return host[0] != '*' && valid_domain(host);
}

/* network.egressProxy: a SOCKS5 proxy {address: "host:port", username?, password?} (RFC 1928,
 * 1929: credentials of at most 255 bytes). */
static int
decode_proxy(json_t *proxy, json_t *out, struct sbx_error **err)
{
    const char *address = NULL, *user = NULL, *pass = NULL;
    char host[DOMAIN_MAX + 1];
    int port;
    if (!json_is_object(proxy) || sbx_json_opt_string(proxy, "address", &address, err) < 0 ||
        sbx_json_opt_string(proxy, "username", &user, err) < 0 ||
        sbx_json_opt_string(proxy, "password", &pass, err) < 0) {
        sbx_error_free(*err);
        *err = NULL;
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "Invalid egress proxy config: an object with a string address "
                             "and optional string username and password is expected");
    }
    json_t *tls = json_object_get(proxy, "tls");
    if (tls && !json_is_null(tls) && !json_is_false(json_object_get(tls, "enabled")))
        return sbx_error_set(err, SBX_UNIMPLEMENTED, 0,
                             "network.egressProxy.tls is not supported by this server: it "
                             "speaks SOCKS5 to the proxy in clear");
    if (address == NULL || !parse_host_port(address, host, sizeof(host), &port))
        return bad(err, "Invalid egress proxy config: address %s is not host:port",
                   address ? address : "(none)");
    if ((user && strlen(user) > 255) || (pass && strlen(pass) > 255))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "Invalid egress proxy config: username and password have at most "
                             "255 bytes (RFC 1929)");
    json_t *p = json_pack("{s:s}", "address", address);
    if (user)
        json_object_set_new(p, "username", json_string(user));
    if (pass)
        json_object_set_new(p, "password", json_string(pass));
    json_object_set_new(out, "egressProxy", p);
    return 0;
}

/* The egress part (allowOut, denyOut, rules, egressProxy) of src, checked, into out. */
static int
decode_egress(json_t *src, int allow_internet, json_t *out, struct sbx_error **err)
{
    json_t *allow = NULL, *deny = NULL;
    if (get_list(src, "allowOut", &allow, err) < 0 || get_list(src, "denyOut", &deny, err) < 0)
        return -1;
    json_t *rules = json_object_get(src, "rules");
    if (rules && !json_is_null(rules) && !(json_is_object(rules) && json_object_size(rules) == 0))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "network.rules (header transforms) are not supported by this "
                             "server: it has no certificate authority that sandboxes trust to "
                             "rewrite their HTTPS requests");
    json_t *dns = NULL;
    if (get_list(src, "dnsServers", &dns, err) < 0)
        return -1;
    size_t i;
    json_t *e;
    json_array_foreach (dns, i, e) {
        uint32_t a;
        if (i == DNS_SERVERS_MAX || !sbx_ip4_parse(json_string_value(e), &a))
            return bad(err, "invalid DNS server %s (at most 10 IPv4 addresses)",
                       json_string_value(e));
    }
    json_t *proxy = json_object_get(src, "egressProxy");
    if (json_is_null(proxy))
        proxy = NULL;
    if (proxy && decode_proxy(proxy, out, err) < 0)
        return -1;
    bool all_denied = false;
    json_array_foreach (deny, i, e) {
        const char *s = json_string_value(e);
        struct sbx_ip4_range r;
        all_denied |= strcmp(s, ALL_TRAFFIC) == 0;
        /* IPv6 rules deny what sandboxes cannot reach anyway (they have no IPv6). */
        if (!sbx_ip6_like(s) && !parse_rule_cidr(s, &r))
            return bad(err, "invalid denied CIDR %s", s);
    }
    bool has_domain = false;
    json_array_foreach (allow, i, e) {
        const char *s = json_string_value(e);
        struct sbx_ip4_range r;
        if (sbx_ip4_parse_cidr(s, &r, NULL)) {
            if (!parse_rule_cidr(s, &r))
                return bad(err, "invalid allowed address %s", s);
        } else if (sbx_ip6_like(s)) {
            return bad(err, "invalid allowed address %s: sandboxes have no IPv6", s);
        } else if (!valid_domain(s)) {
            return bad(err, "invalid allowed domain %s", s);
        } else {
            has_domain = true;
        }
    }
    if (allow_internet == 0)
        all_denied = true;
    if (has_domain && !all_denied)
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "When specifying allowed domains in allow out, you must include "
                             "'ALL_TRAFFIC' in deny out to block all other traffic.");
    if (allow)
        json_object_set(out, "allowOut", allow);
    if (dns)
        json_object_set(out, "dnsServers", dns);
    if (allow_internet == 0)
        json_object_set_new(out, "denyOut", json_pack("[s]", ALL_TRAFFIC));
    else if (deny)
        json_object_set(out, "denyOut", deny);
    return 0;
}

int
sbx_netset_decode(json_t *network, int allow_internet, json_t **stored, struct sbx_error **err)
{
    if (json_is_null(network))
        network = NULL;
    if (network && !json_is_object(network))
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0, "network must be an object");
    json_t *out = json_object();
    bool public_traffic = true;
    const char *mask = NULL;
    json_t *https_ports = json_object_get(network, "httpsPorts");
    if (json_is_null(https_ports))
        https_ports = NULL;
    size_t i;
    json_t *e;
    if (https_ports &&
        (!json_is_array(https_ports) || json_array_size(https_ports) > HTTPS_PORTS_MAX)) {
        json_decref(out);
        return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                             "network.httpsPorts must be a list of at most %d ports",
                             HTTPS_PORTS_MAX);
    }
    json_array_foreach (https_ports, i, e) {
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > 65535) {
            json_decref(out);
            return sbx_error_set(err, SBX_INVALID_ARGUMENT, 0,
                                 "network.httpsPorts: not a port number");
        }
    }
    if (https_ports && json_array_size(https_ports) > 0)
        json_object_set(out, "httpsPorts", https_ports);
    if (decode_egress(network, allow_internet, out, err) < 0 ||
        sbx_json_opt_bool(network, "allowPublicTraffic", &public_traffic, err) < 0 ||
        sbx_json_opt_string(network, "maskRequestHost", &mask, err) < 0 ||
        (mask && check_mask_host(mask, err) < 0)) {
        json_decref(out);
        return -1;
    }
    if (!public_traffic)
        json_object_set_new(out, "allowPublicTraffic", json_false());
    if (mask)
        json_object_set_new(out, "maskRequestHost", json_string(mask));
    *stored = out;
    return 0;
}

int
sbx_netset_decode_update(json_t *body, const char *old, json_t **stored, struct sbx_error **err)
{
    bool allow_internet = true;
    int set = body ? sbx_json_opt_bool(body, "allow_internet_access", &allow_internet, err) : 0;
    if (set < 0)
        return -1;
    json_t *out = json_object();
    if (decode_egress(body, set && !allow_internet ? 0 : -1, out, err) < 0) {
        json_decref(out);
        return -1;
    }
    /* Ingress options are the sandbox's for life (spec §4). */
    json_t *prev = old ? json_loads(old, 0, NULL) : NULL;
    json_t *v;
    if ((v = json_object_get(prev, "allowPublicTraffic")))
        json_object_set(out, "allowPublicTraffic", v);
    if ((v = json_object_get(prev, "maskRequestHost")))
        json_object_set(out, "maskRequestHost", v);
    if ((v = json_object_get(prev, "httpsPorts")))
        json_object_set(out, "httpsPorts", v);
    json_decref(prev);
    *stored = out;
    return 0;
}

int
sbx_netset_check_proxy(json_t *stored, const struct sbx_ip4_range *blocked, size_t n,
                       struct sbx_error **err)
{
    const char *address =
        json_string_value(json_object_get(json_object_get(stored, "egressProxy"), "address"));
    char host[DOMAIN_MAX + 1];
    int port;
    uint32_t a;
    if (address && parse_host_port(address, host, sizeof(host), &port) && sbx_ip4_parse(host, &a) &&
        sbx_ip4_ranges_contain(blocked, n, a))
        return bad(err, "Invalid egress proxy config: %s is an internal address", address);
    return 0;
}

void
sbx_netset_free(struct sbx_netset *n)
{
    if (n == NULL)
        return;
    free(n->allow);
    free(n->deny);
    free(n->mask_host);
    free(n->https_ports);
    for (size_t i = 0; i < n->n_domains; i++)
        free(n->domains[i]);
    free(n->domains);
    free(n->proxy_host);
    free(n->proxy_user);
    sbx_secret_free(n->proxy_pass);
    free(n);
}

/* The host name patterns of allowOut, lowercased. */
static void
load_domains(struct sbx_netset *n, json_t *list)
{
    n->domains = calloc(json_array_size(list) + 1, sizeof(*n->domains));
    if (n->domains == NULL)
        abort();
    size_t i;
    json_t *e;
    json_array_foreach (list, i, e) {
        const char *s = json_string_value(e);
        struct sbx_ip4_range r;
        if (s == NULL || sbx_ip4_parse_cidr(s, &r, NULL) || sbx_ip6_like(s))
            continue;
        char *d = strdup(s);
        if (d == NULL)
            abort();
        for (char *c = d; *c; c++)
            *c = (char)tolower((unsigned char)*c);
        n->domains[n->n_domains++] = d;
    }
}

static void
load_proxy(struct sbx_netset *n, json_t *p)
{
    const char *address = json_string_value(json_object_get(p, "address"));
    char host[DOMAIN_MAX + 1];
    if (address == NULL || !parse_host_port(address, host, sizeof(host), &n->proxy_port))
        return;
    const char *user = json_string_value(json_object_get(p, "username"));
    const char *pass = json_string_value(json_object_get(p, "password"));
    n->proxy_host = strdup(host);
    n->proxy_user = user ? strdup(user) : NULL;
    n->proxy_pass = pass ? strdup(pass) : NULL;
    if (n->proxy_host == NULL || (user && n->proxy_user == NULL) || (pass && !n->proxy_pass))
        abort();
}

bool
sbx_netset_name_allowed(const struct sbx_netset *n, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < n->n_domains; i++) {
        const char *d = n->domains[i];
        if (strcmp(d, "*") == 0 || strcasecmp(d, name) == 0)
            return true;
        /* "*.example.com": any name under example.com, not example.com itself. */
        size_t dl = strlen(d);
        if (d[0] == '*' && d[1] == '.' && len > dl - 1 &&
            strcasecmp(name + len - (dl - 1), d + 1) == 0)
            return true;
    }
    return false;
}

/* The ranges of the IPv4 entries of list (host names and IPv6 skipped), normalised, with
 * those of extra when list has host names (dnsServers: E2B opens them for allowed domains). */
static struct sbx_ip4_range *
ranges(json_t *list, size_t *n, json_t *extra)
{
    struct sbx_ip4_range *r =
        calloc(json_array_size(list) + json_array_size(extra) + 1, sizeof(*r));
    if (r == NULL)
        abort();
    size_t k = 0, i;
    json_t *e;
    bool names = false;
    json_array_foreach (list, i, e) {
        if (json_is_string(e) && parse_rule_cidr(json_string_value(e), &r[k]))
            k++;
        else
            names = true;
    }
    json_array_foreach (names ? extra : NULL, i, e)
        if (json_is_string(e) && parse_rule_cidr(json_string_value(e), &r[k]))
            k++;
    *n = sbx_ip4_ranges_normalize(r, k);
    return r;
}

struct sbx_netset *
sbx_netset_load(const char *stored)
{
    struct sbx_netset *n = calloc(1, sizeof(*n));
    if (n == NULL)
        abort();
    n->public_traffic = true;
    json_t *o = stored ? json_loads(stored, 0, NULL) : NULL;
    if (stored && !json_is_object(o)) {
        /* Cannot happen (we wrote it); if it does, no traffic rather than all of it. */
        n->deny = calloc(1, sizeof(*n->deny));
        if (n->deny == NULL)
            abort();
        n->deny[0] = (struct sbx_ip4_range){0, UINT32_MAX};
        n->n_deny = 1;
        n->deny_all = true;
        json_decref(o);
        return n;
    }
    n->allow =
        ranges(json_object_get(o, "allowOut"), &n->n_allow, json_object_get(o, "dnsServers"));
    n->deny = ranges(json_object_get(o, "denyOut"), &n->n_deny, NULL);
    load_domains(n, json_object_get(o, "allowOut"));
    load_proxy(n, json_object_get(o, "egressProxy"));
    n->deny_all = n->n_deny == 1 && n->deny[0].first == 0 && n->deny[0].last == UINT32_MAX;
    n->public_traffic = !json_is_false(json_object_get(o, "allowPublicTraffic"));
    const char *mask = json_string_value(json_object_get(o, "maskRequestHost"));
    n->mask_host = mask ? strdup(mask) : NULL;
    json_t *ports = json_object_get(o, "httpsPorts");
    n->https_ports = calloc(json_array_size(ports) + 1, sizeof(*n->https_ports));
    if (n->https_ports == NULL)
        abort();
    size_t i;
    json_t *e;
    json_array_foreach (ports, i, e)
        n->https_ports[n->n_https_ports++] = (int)json_integer_value(e);
    json_decref(o);
    return n;
}

bool
sbx_netset_is_default(const struct sbx_netset *n)
{
    return n == NULL ||
           (n->n_allow == 0 && n->n_deny == 0 && n->n_domains == 0 && n->proxy_host == NULL);
}

void
sbx_netset_to_msg(const struct sbx_netset *n, struct sbx_spawner_msg *m)
{
    m->n_net_allow = m->n_net_deny = 0;
    m->net_flags = 0;
    if (n == NULL)
        return;
    /* Host name rules are enforced on the web ports' SNI and Host; a proxied sandbox's every
     * TCP connection goes through the egress proxy. */
    if (n->n_domains > 0)
        m->net_flags |= SBX_NET_PROXY_WEB;
    if (n->proxy_host)
        m->net_flags |= SBX_NET_PROXY_ALL;
    memcpy(m->net_allow, n->allow, n->n_allow * sizeof(*n->allow));
    memcpy(m->net_deny, n->deny, n->n_deny * sizeof(*n->deny));
    m->n_net_allow = (uint32_t)n->n_allow;
    m->n_net_deny = (uint32_t)n->n_deny;
}
