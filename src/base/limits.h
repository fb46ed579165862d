/* Every size and time limit of sbx, in one place. Checked before allocating. */
#ifndef SBX_BASE_LIMITS_H
#define SBX_BASE_LIMITS_H

#define SBX_HTTP_MAX_HEADER_BYTES  (64 * 1024) /* request line + all headers */
#define SBX_HTTP_MAX_HEADERS       100
#define SBX_HTTP_MAX_BUFFERED_BODY (16 * 1024 * 1024) /* bodies read whole (JSON, unary RPC) */
#define SBX_HTTP_WRITE_HIGH_WATER  (1024 * 1024) /* pause producers above this many queued bytes */
#define SBX_HTTP_MAX_PENDING_INPUT (1024 * 1024) /* unparsed input kept per connection */
#define SBX_HTTP_MAX_DRAIN_BYTES   (4 * 1024 * 1024) /* unread body discarded before close */
#define SBX_HTTP_LINGER_MS         5000              /* ... and for at most this long */
/* Bytes read per read(2). Larger reads save little (bodies are parsed in place) and make
 * every leftover copied into inbuf and every queued write a large malloc. */
#define SBX_HTTP_READ_SLAB (64 * 1024)
/* Bytes read per read(2) where they are only passed on (a tunnel, an upstream's response):
 * fewer system calls per byte on the way to and from a sandbox's port. */
#define SBX_RELAY_READ_SLAB (256 * 1024)
#define SBX_PROXY_SNDBUF    (1024 * 1024) /* send buffer towards an agent, best effort */
/* A tunnel (WebSocket, CONNECT, proxied egress) that carries no byte either way this long
 * is closed, as E2B's proxy does; clients that keep one open send pings. */
#define SBX_TUNNEL_IDLE_MS              (620 * 1000)
#define SBX_TUNNEL_KEEPALIVE_S          60 /* TCP keepalive of a tunnel's client: a peer that vanished */
#define SBX_CONNECT_KEEPALIVE_DEFAULT_S 50 /* keepalive events on streams, when not asked */
#define SBX_CONNECT_KEEPALIVE_MAX_S     60
#define SBX_CONNECT_MAX_MESSAGE         (16 * 1024 * 1024)

/* Log lines of client errors (4xx): at most one per client address per interval, the rest
 * counted in one summary line at its end, for at most this many addresses (others share one
 * count); the error message in a line is cut at this many bytes. */
#define SBX_HTTP_LOG_INTERVAL_MS   10000
#define SBX_HTTP_LOG_SOURCES_MAX   1024
#define SBX_HTTP_LOG_ERROR_MAX     256
#define SBX_HTTP_LOG_BODY_SCAN_MAX 4096 /* an error body read for its message, at most */

/* API keys: at most this many valid keys; an address that fails to authenticate this many
 * times within the window gets 429 until it ends (addresses beyond the table's size share one
 * count); a key's last use is written at most once per interval. */
#define SBX_MAX_API_KEYS           1000
#define SBX_AUTH_FAIL_MAX          30
#define SBX_AUTH_FAIL_WINDOW_MS    60000
#define SBX_AUTH_SOURCES_MAX       1024
#define SBX_AUTH_TOUCH_INTERVAL_MS 60000

#define SBX_DEFAULT_LISTEN     "127.0.0.1:3000"
#define SBX_DEFAULT_STATE_DIR  "/var/lib/sbx"
#define SBX_DEFAULT_CONFIG     "/etc/sbx/sbx.conf" /* read if it exists */
#define SBX_CONFIG_LINE_MAX    4096                /* bytes of one line of it */
#define SBX_DEFAULT_USER       "sbx" /* the daemon's unprivileged front end runs as this user */
#define SBX_LISTEN_BACKLOG     1024
#define SBX_DEFAULT_TIMEOUT_S  300
#define SBX_MAX_TIMEOUT_S      (24 * 3600)
#define SBX_MAX_SANDBOXES      4096
#define SBX_MAX_METADATA_BYTES (64 * 1024)
/* Template builds: at most SBX_MAX_BUILDS at once (--max-builds), each step killed after
 * SBX_DEFAULT_BUILD_STEP_TIMEOUT_S (--build-step-timeout); their build sandboxes take the top
 * uid slots. */
#define SBX_MAX_BUILDS                   8
#define SBX_DEFAULT_MAX_BUILDS           2
#define SBX_DEFAULT_BUILD_STEP_TIMEOUT_S 1800
/* Each build step writes into a disk of its own of this size (--build-disk-mb), as sandboxes
 * do: a step cannot fill the host's disk. */
#define SBX_DEFAULT_BUILD_DISK_MB 10240
#define SBX_UPLOAD_MAX_BYTES      (4ULL << 30) /* one COPY archive, uncompressed content */
#define SBX_UPLOAD_MAX_ENTRIES    500000
#define SBX_UPLOAD_URL_TTL_S      1800
/* An uploaded COPY archive unused (neither uploaded nor probed) this long is deleted: a build
 * after that probes, finds it absent and uploads it again. */
#define SBX_UPLOAD_KEEP_MS (7LL * 24 * 3600 * 1000)
/* A build no tag names any more, and a layer no kept build stacks, are forgotten this long
 * after their last use: until then a rebuild still finds them in the cache. */
#define SBX_BUILD_KEEP_MS (7LL * 24 * 3600 * 1000)
/* Where scripts/templates.sh builds the built-in templates' layers (--layer-cache). */
#define SBX_DEFAULT_LAYER_CACHE "/var/cache/sbx/layers"
/* Pause and resume. */
#define SBX_DEFAULT_PAUSED_RETENTION_S (30 * 24 * 3600) /* --paused-retention */
#define SBX_RESUME_DEFAULT_TIMEOUT_S   15   /* POST /sandboxes/{id}/resume without a timeout */
#define SBX_PAUSE_HEALTH_MS            2000 /* a strict pause waits this long for the agent */
/* Volumes. */
#define SBX_DEFAULT_VOLUME_MB      1024  /* --volume-mb: the size of a new volume */
#define SBX_VOLUME_SERVICE_IDLE_MS 60000 /* a volume's content service exits when idle */
#define SBX_VOLUME_NAME_MAX        64
#define SBX_VOLUME_SERVICE_PATH    "/volume" /* where its service sandbox mounts a volume */
/* Warm pools (--pool, --pool-memory-mb). */
#define SBX_DEFAULT_POOLS          "base=2,code-interpreter-v1=1"
#define SBX_DEFAULT_POOL_MEMORY_MB 2048
#define SBX_POOL_MAX               64               /* sandboxes one pool may keep */
#define SBX_POOL_READY_MS          60000            /* for a pooled sandbox to be warm */
#define SBX_START_READY_MS         (11 * 60 * 1000) /* a template's ready command: 10 min cap */
#define SBX_POOL_INIT_MS           10000 /* for its agent to take its client's identity */
#define SBX_POOL_RETRY_MS          5000  /* before a pool that failed to fill tries again */
#define SBX_POOL_DRAIN_MS          5000  /* a clean stop waits this long for them to go */
#define SBX_MAX_ENV_VARS           4096  /* in one map of environment variables */
/* Secure sandboxes, the most recently used first, tried for a presigned URL that names no
 * sandbox: one SHA-256 each (about 0.4 us), whatever the number of sandboxes. */
#define SBX_SIGNED_URL_CANDIDATES 64

/* Default per-sandbox limits; overridable with sbx serve flags (see docs/configuration.md). */
#define SBX_DEFAULT_MEMORY_MB 512
#define SBX_DEFAULT_PIDS_MAX  512
#define SBX_DEFAULT_CPU_COUNT 1
#define SBX_DEFAULT_DISK_MB   1024
#define SBX_MIN_DISK_MB       16

/* Client connection deadlines of the daemon; overridable with sbx serve flags. The idle one
 * outlasts the SDKs' own pool expiry (Python e2b: 300 s, E2B_KEEPALIVE_EXPIRY; Node's fetch:
 * 4 s), so that the client, not the server, retires an idle connection: a request sent just
 * as the server closes is lost to a reset, and a POST cannot be safely retried. */
#define SBX_DEFAULT_HEADER_TIMEOUT_S 30
#define SBX_DEFAULT_IDLE_TIMEOUT_S   310
/* ... except for a connection that has not carried an authenticated request: an anonymous
 * client has no pool to keep warm, and a kept connection holds a descriptor. */
#define SBX_ANON_IDLE_TIMEOUT_S 10

/* The default client connection limit (--max-connections) leaves room, under the open-file
 * limit, for the daemon's own descriptors (database, listening socket, event loop, signals,
 * what a create holds for a moment), a pidfd per sandbox (at most a quarter of the limit),
 * and an upstream socket per connection (a proxied request holds both): connections get
 * half of the rest, and never fewer than SBX_MIN_CONNECTIONS. */
#define SBX_DAEMON_RESERVED_FDS 64
#define SBX_MIN_CONNECTIONS     16

/* Sandbox logs (the agent's ring and the daemon's events, stored when the sandbox ends): one
 * line at most this long, the ring read within this time, pages of at most this many entries,
 * pruned this often; kept this long after the sandbox ends, within this much in all. */
#define SBX_LOG_LINE_MAX            4096
#define SBX_LOG_FETCH_TIMEOUT_MS    3000
#define SBX_LOG_PAGE_MAX            1000
#define SBX_LOG_PRUNE_INTERVAL_MS   (10 * 60 * 1000)
#define SBX_DEFAULT_LOG_RETENTION_H 168
#define SBX_DEFAULT_LOG_STORE_MB    256

/* Running sandboxes that get series of their own in /metrics (the rest are counted). */
#define SBX_METRICS_MAX_SANDBOXES 1000

/* The agent keeps its own log in a ring in its memory (charged to the sandbox), never in a
 * host file: only the newest this many bytes are kept. */
#define SBX_AGENT_LOG_BYTES (256 * 1024)

/* Contexts of one sandbox's code interpreter, the default ones included. Each runs a kernel
 * (about 40 MiB for Python): the memory limit caps them too, this caps what the agent keeps. */
#define SBX_INTERP_MAX_CONTEXTS 16

/* The sandbox network (--network-cidr; see sandbox/net.c). */
#define SBX_NET_MAX_RULES 200 /* entries of one list (allowOut, denyOut) of a sandbox */

#define SBX_ENVD_PORT    49983
#define SBX_JUPYTER_PORT 49999
#define SBX_ENVD_VERSION "0.6.13"

#endif
