/*
 * tests/unit/check.h - the minimal harness of the C unit tests.
 *
 * A test file defines `static void test_xxx(void)` functions and lists them in
 * TOMO_TEST_MAIN(test_a, test_b, ...). CHECK* macros record a failure with file and line and
 * continue; the program exits 1 if anything failed, 77 (skipped) if a test called SKIP and
 * nothing failed.
 */
#ifndef TOMO_CHECK_H
#define TOMO_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;
static int check_skipped;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

/* |a - b| <= tol */
#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double check_a_ = (double)(a), check_b_ = (double)(b), check_t_ = (double)(tol);           \
        if (!(fabs(check_a_ - check_b_) <= check_t_)) {                                            \
            fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %.9g, %s = %.9g, tolerance %.3g\n",    \
                    __FILE__, __LINE__, #a, check_a_, #b, check_b_, check_t_);                     \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                            \
        if (check_a_ != check_b_) {                                                                \
            fprintf(stderr, "%s:%d: CHECK_INT failed: %s = %lld, expected %s = %lld\n", __FILE__,  \
                    __LINE__, #a, check_a_, #b, check_b_);                                         \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

/* The string `hay` contains `needle`. */
#define CHECK_CONTAINS(hay, needle)                                                                \
    do {                                                                                           \
        const char *check_h_ = (hay), *check_n_ = (needle);                                        \
        if (!check_h_ || !strstr(check_h_, check_n_)) {                                            \
            fprintf(stderr, "%s:%d: CHECK_CONTAINS failed: \"%s\" does not contain \"%s\"\n",      \
                    __FILE__, __LINE__, check_h_ ? check_h_ : "(null)", check_n_);                 \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define SKIP(why)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "SKIP: %s\n", why);                                                        \
        check_skipped++;                                                                           \
        return;                                                                                    \
    } while (0)

typedef void (*check_test_fn)(void);

static inline int check_run(const char *const *names, const check_test_fn *tests, int n)
{
    for (int i = 0; i < n; i++) {
        int before = check_failures;
        tests[i]();
        fprintf(stderr, "%s %s\n", check_failures == before ? "ok  " : "FAIL", names[i]);
    }
    if (check_failures) {
        fprintf(stderr, "%d check(s) failed\n", check_failures);
        return 1;
    }
    return check_skipped ? 77 : 0;
}

#define CHECK_STR_(x) #x
#define TOMO_TEST_MAIN(...)                                                                        \
    int main(void)                                                                                 \
    {                                                                                              \
        static const check_test_fn tests[] = {__VA_ARGS__};                                        \
        static const char names_[] = CHECK_STR_((__VA_ARGS__));                                    \
        static char buf[sizeof names_];                                                            \
        const char *names[sizeof tests / sizeof tests[0]];                                         \
        memcpy(buf, names_, sizeof names_);                                                        \
        char *s = buf + 1;                                                                         \
        for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {                              \
            while (*s == ' ')                                                                      \
                s++;                                                                               \
            names[i] = s;                                                                          \
            while (*s && *s != ',' && *s != ')')                                                   \
                s++;                                                                               \
            *s++ = '\0';                                                                           \
        }                                                                                          \
        return check_run(names, tests, (int)(sizeof tests / sizeof tests[0]));                     \
    }

#endif
