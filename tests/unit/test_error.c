#include "../../common/error.h"
#include "check.h"

static void test_first_message_wins(void)
{
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(err.code, TOMO_OK);
    int rc = tomo_error_set(&err, TOMO_E_FORMAT, "%s: bad magic", "scan/q0001.img");
    CHECK_INT(rc, -TOMO_E_FORMAT);
    CHECK_INT(err.code, TOMO_E_FORMAT);
    tomo_error_set(&err, TOMO_E_IO, "later consequence");
    CHECK_INT(err.code, TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "scan/q0001.img: bad magic");
}

static void test_null_error_is_allowed(void)
{
    CHECK_INT(tomo_error_set(NULL, TOMO_E_IO, "dropped"), -TOMO_E_IO);
    tomo_error_clear(NULL);
}

static void test_names(void)
{
    CHECK(strcmp(tomo_error_name(TOMO_E_IO), "io") == 0);
    CHECK(strcmp(tomo_error_name(-TOMO_E_FORMAT), "format") == 0);
    CHECK(strcmp(tomo_error_name(999), "unknown") == 0);
}

static void test_long_message_is_truncated_not_overflowed(void)
{
    char big[3 * TOMO_ERROR_MESSAGE_MAX];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    tomo_error err;
    tomo_error_clear(&err);
    tomo_error_set(&err, TOMO_E_IO, "%s", big);
    CHECK_INT(strlen(err.message), TOMO_ERROR_MESSAGE_MAX - 1);
}

TOMO_TEST_MAIN(test_first_message_wins, test_null_error_is_allowed, test_names,
               test_long_message_is_truncated_not_overflowed)
