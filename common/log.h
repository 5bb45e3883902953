/*
 * common/log.h - one-line log messages for users and system administrators.
 *
 * Lines go to stderr ("tomofs: warning: ...") until tomo_log_to_syslog() is called, which the
 * daemon does once it has detached from the terminal; from then on they go to syslog
 * (facility daemon, ident "tomofs"), where journalctl shows them.
 */
#ifndef TOMO_LOG_H
#define TOMO_LOG_H

enum tomo_log_level {
    TOMO_LOG_ERROR = 0,
    TOMO_LOG_WARNING = 1,
    TOMO_LOG_INFO = 2,
    TOMO_LOG_DEBUG = 3
};

/* Messages above `level` are dropped. The default is TOMO_LOG_INFO. */
void tomo_log_set_level(int level);

/* Sends later messages to syslog instead of stderr. */
void tomo_log_to_syslog(void);

void tomo_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define tomo_log_error(...)   tomo_log(TOMO_LOG_ERROR, __VA_ARGS__)
#define tomo_log_warning(...) tomo_log(TOMO_LOG_WARNING, __VA_ARGS__)
#define tomo_log_info(...)    tomo_log(TOMO_LOG_INFO, __VA_ARGS__)
#define tomo_log_debug(...)   tomo_log(TOMO_LOG_DEBUG, __VA_ARGS__)

#endif
