#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

static int max_level = TOMO_LOG_INFO;
static int use_syslog;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void tomo_log_set_level(int level)
{
    max_level = level;
}

void tomo_log_to_syslog(void)
{
    openlog("tomofs", LOG_PID, LOG_DAEMON);
    use_syslog = 1;
}

void tomo_log(int level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    static const int priorities[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    if (level > max_level || level < 0)
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (use_syslog) {
        syslog(priorities[level], "%s", line);
        return;
    }
    pthread_mutex_lock(&log_lock);
    if (level == TOMO_LOG_INFO)
        fprintf(stderr, "tomofs: %s\n", line);
    else
        fprintf(stderr, "tomofs: %s: %s\n", names[level], line);
    pthread_mutex_unlock(&log_lock);
}
