/* SNI and Host sniffing: see sniff.h. */
#include "http/sniff.h"

#include <ctype.h>
#include <string.h>

/* Copies a host name, lowercased and checked: letters, digits, '-', '_' and '.', no port. */
static int
take_name(const uint8_t *p, size_t n, char name[SBX_SNIFF_NAME_MAX + 1])
{
    while (n > 0 && p[n - 1] == '.')
        n--; /* a fully qualified name's root */
    if (n == 0 || n > SBX_SNIFF_NAME_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int c = p[i];
        if (!isalnum(c) && c != '-' && c != '.' && c != '_')
            return -1;
        name[i] = (char)tolower(c);
    }
    name[n] = '\0';
    return 1;
}

static unsigned
u16(const uint8_t *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

int
sbx_sniff_tls_sni(const uint8_t *d, size_t len, char name[SBX_SNIFF_NAME_MAX + 1])
{
    /* One handshake record (type 22) holding the ClientHello (type 1), which fits one record
     * in practice; a hello split over records counts as no name. */
    if (len >= 1 && d[0] != 22)
        return -1;
    if (len < 9)
        return 0;
    size_t rec = u16(d + 3);
    if (d[1] != 3 || d[5] != 1 || rec < 4 || rec > SBX_SNIFF_MAX)
        return -1;
    if (len < 5 + rec)
        return 0;
    size_t hs = (size_t)d[6] << 16 | (size_t)d[7] << 8 | d[8];
    const uint8_t *p = d + 9, *end = d + 5 + rec;
    if (hs > rec - 4)
        return -1;
    end = p + hs;
    /* version, random, session id, cipher suites, compression methods */
    if (end - p < 35)
        return -1;
    p += 34;
    p += 1 + p[0];
    if (end - p < 2 || (size_t)(end - p) < 2 + u16(p))
        return -1;
    p += 2 + u16(p);
    if (end - p < 1 || end - p < 1 + p[0])
        return -1;
    p += 1 + p[0];
    if (end - p < 2)
        return -1; /* no extensions */
    size_t ext_len = u16(p);
    p += 2;
    if ((size_t)(end - p) < ext_len)
        return -1;
    end = p + ext_len;
    while (end - p >= 4) {
        unsigned type = u16(p), n = u16(p + 2);
        p += 4;
        if ((size_t)(end - p) < n)
            return -1;
        if (type == 0) { /* server_name: a list of one host_name (type 0) */
            if (n < 5 || p[2] != 0 || u16(p + 3) > n - 5 || u16(p) != n - 2)
                return -1;
            return take_name(p + 5, u16(p + 3), name);
        }
        p += n;
    }
    return -1;
}

int
sbx_sniff_http_host(const uint8_t *d, size_t len, char name[SBX_SNIFF_NAME_MAX + 1])
{
    /* A request line starts with a method: letters only. */
    for (size_t i = 0; i < len && d[i] != ' '; i++)
        if (!isupper(d[i]) || i > 16)
            return -1;
    const uint8_t *head_end = memmem(d, len, "\r\n\r\n", 4);
    if (head_end == NULL)
        return len >= SBX_SNIFF_MAX ? -1 : 0;
    const uint8_t *line = memchr(d, '\n', (size_t)(head_end - d));
    while (line && line < head_end) {
        line++;
        const uint8_t *eol = memchr(line, '\r', (size_t)(head_end + 2 - line));
        size_t n = eol ? (size_t)(eol - line) : 0;
        if (n > 5 && strncasecmp((const char *)line, "host:", 5) == 0) {
            const uint8_t *v = line + 5;
            size_t vn = n - 5;
            while (vn > 0 && (*v == ' ' || *v == '\t'))
                v++, vn--;
            while (vn > 0 && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
                vn--;
            const uint8_t *colon = memchr(v, ':', vn);
            if (colon) {
                for (const uint8_t *c = colon + 1; c < v + vn; c++)
                    if (!isdigit(*c))
                        return -1;
                vn = (size_t)(colon - v);
            }
            return take_name(v, vn, name);
        }
        line = memchr(line, '\n', (size_t)(head_end + 2 - line));
    }
    return -1;
}
