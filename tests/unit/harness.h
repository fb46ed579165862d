/* Minimal unit-test harness: each TEST runs in a forked child with a timeout, so a crash,
 * a hang or a leaked namespace fails that test alone (libuv test/runner.c does the same).
 * Output ends with the plain line "N passed, N failed". A test that needs root calls
 * REQUIRE_ROOT(): it skips loudly outside CI and fails under CI=true. */
#ifndef SBX_TEST_HARNESS_H
#define SBX_TEST_HARNESS_H

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Under ASan, LeakSanitizer runs at exit, which a forked test skips (_exit): each test
 * checks for leaks itself before it exits, and so can a process a test forks. A leak
 * fails the test. gcc says ASan with __SANITIZE_ADDRESS__, clang with __has_feature. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SBX_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(SBX_TEST_ASAN)
#include <sanitizer/lsan_interface.h>
#define sbx_test_leak_check() __lsan_do_leak_check()
#else
#define sbx_test_leak_check() ((void)0)
#endif

struct sbx_test {
    const char *name;
    void (*fn)(void);
};

#define SBX_TEST_MAX 256
static struct sbx_test sbx_tests[SBX_TEST_MAX];
static int sbx_n_tests;

/* A fresh directory for the running test: made before it starts and removed once it has
 * ended, however it ended (a failed CHECK leaves by _exit, which runs no atexit handler). */
static char sbx_test_dir[64];

#define TEST(name)                                                                                 \
    static void test_##name(void);                                                                 \
    __attribute__((constructor)) static void register_##name(void)                                 \
    {                                                                                              \
        if (sbx_n_tests < SBX_TEST_MAX)                                                            \
            sbx_tests[sbx_n_tests++] = (struct sbx_test){#name, test_##name};                      \
    }                                                                                              \
    static void test_##name(void)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                                     \
            fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, a_ ? a_ : "(null)",   \
                    b_ ? b_ : "(null)");                                                           \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)

#define SBX_TEST_SKIP_CODE 77

#define REQUIRE_ROOT()                                                                             \
    do {                                                                                           \
        if (geteuid() != 0) {                                                                      \
            const char *ci_ = getenv("CI");                                                        \
            fprintf(stderr, "SKIP: needs root\n");                                                 \
            _exit(ci_ &&*ci_ ? 1 : SBX_TEST_SKIP_CODE);                                            \
        }                                                                                          \
    } while (0)

/* How many descriptors this process has open (the test's leaks and handovers). */
static inline int
sbx_test_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the dir's own fd */
}

static inline int
sbx_test_main(int timeout_s)
{
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < sbx_n_tests; i++) {
        snprintf(sbx_test_dir, sizeof(sbx_test_dir), "/tmp/sbx-test-XXXXXX");
        if (mkdtemp(sbx_test_dir) == NULL) {
            perror("mkdtemp");
            return 1;
        }
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm((unsigned)timeout_s);
            sbx_tests[i].fn();
            sbx_test_leak_check();
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        char rm[96];
        snprintf(rm, sizeof(rm), "rm -rf %s", sbx_test_dir);
        if (system(rm) != 0)
            fprintf(stderr, "could not remove %s\n", sbx_test_dir);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            printf("ok %s\n", sbx_tests[i].name);
            passed++;
        } else if (WIFEXITED(st) && WEXITSTATUS(st) == SBX_TEST_SKIP_CODE) {
            printf("skip %s\n", sbx_tests[i].name);
            skipped++;
        } else {
            printf("FAIL %s (%s %d)\n", sbx_tests[i].name, WIFSIGNALED(st) ? "signal" : "exit",
                   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
            failed++;
        }
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}

#define TEST_MAIN(timeout_s)                                                                       \
    int main(void)                                                                                 \
    {                                                                                              \
        return sbx_test_main(timeout_s);                                                           \
    }

#endif
