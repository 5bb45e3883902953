#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../cache/store.h"
#include "cmd.h"
#include "progress.h"

static const char cache_usage[] =
    "usage: tomofs cache stats|verify|clear [--cache DIR] [--delete]\n"
    "\n"
    "Shows, checks or empties the slice cache that every mount of this user shares.\n"
    "\n"
    "  stats         slices, bytes (raw, stored, on disk), compression ratio, hits and misses,\n"
    "                and the usage of every scan and parameter set\n"
    "  verify        decodes every chunk and checks its checksum, and checks the totals;\n"
    "                exits 1 if anything is wrong\n"
    "  clear         deletes every slice; safe while mounted (the file keeps its size and\n"
    "                reuses the space)\n"
    "  --cache DIR   the cache folder (default $XDG_CACHE_HOME/tomofs or ~/.cache/tomofs)\n"
    "  --delete      with verify: delete damaged slices and stray entries, fix the totals\n";

/* "12.3 MiB" */
static const char *human(uint64_t bytes, char *buf, size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", v, units[u]);
    return buf;
}

static double ratio(uint64_t raw, uint64_t stored)
{
    return stored ? (double)raw / (double)stored : 0.0;
}

static void print_usage(void *ctx, const tomo_store_usage *u)
{
    (void)ctx;
    char raw[32], stored[32], when[32] = "never";
    time_t t = (time_t)(u->last_used_ms / 1000);
    struct tm tm;
    if (u->last_used_ms && localtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
    printf("  key %016llx: %llu slices, %s raw, %s stored, ratio %.2f, last used %s\n",
           (unsigned long long)u->key, (unsigned long long)u->slices,
           human(u->raw_bytes, raw, sizeof raw), human(u->stored_bytes, stored, sizeof stored),
           ratio(u->raw_bytes, u->stored_bytes), when);
    printf("    %s\n    %s\n", u->info[0] ? u->info : "(no scan recorded)",
           u->identity[0] ? u->identity : "(no parameters recorded)");
}

static int show_stats(tomo_store *s)
{
    tomo_store_totals t;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_store_read_totals(s, &t, &err) < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        return 1;
    }
    char path[4200], a[32], b[32], c[32], d[32];
    struct stat st;
    snprintf(path, sizeof path, "%s/data.mdb", tomo_store_dir(s));
    uint64_t file = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
    printf("cache: %s\n", tomo_store_dir(s));
    printf("file: %llu bytes (%s)\n", (unsigned long long)file, human(file, a, sizeof a));
    printf("entries: %llu slices in %llu chunks\n", (unsigned long long)t.slices,
           (unsigned long long)t.chunks);
    printf("raw_bytes: %llu (%s)\n", (unsigned long long)t.raw_bytes,
           human(t.raw_bytes, a, sizeof a));
    printf("stored_bytes: %llu (%s compressed)\n", (unsigned long long)t.stored_bytes,
           human(t.stored_bytes, b, sizeof b));
    printf("disk_bytes: %llu (%s in pages; the capacity bounds this)\n",
           (unsigned long long)t.disk_bytes, human(t.disk_bytes, c, sizeof c));
    printf("ratio: %.3f\n", ratio(t.raw_bytes, t.stored_bytes));
    printf("capacity: %llu (%s, set by the last mount that wrote)\n",
           (unsigned long long)t.capacity, human(t.capacity, d, sizeof d));
    printf("hits: %llu\nmisses: %llu\n", (unsigned long long)t.hits, (unsigned long long)t.misses);
    printf("evictions: %llu\ndamaged: %llu\n", (unsigned long long)t.evictions,
           (unsigned long long)t.damaged);
    printf("scans:\n");
    if (tomo_store_list_usage(s, print_usage, NULL, &err) < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        return 1;
    }
    return 0;
}

static void print_problem(void *ctx, const char *line)
{
    (void)ctx;
    printf("damaged: %s\n", line);
}

static void show_progress(void *ctx, uint64_t checked, uint64_t total)
{
    tomo_progress *bar = ctx;
    /* the totals are a guide: the walk may find more slices than they record */
    long goal = (long)(checked > total ? checked : total);
    if (bar->total < goal)
        tomo_progress_start(bar, "verify", goal);
    tomo_progress_update(bar, (long)checked, NULL);
}

static int run_verify(tomo_store *s, int repair)
{
    tomo_store_verify_report r;
    tomo_error err;
    tomo_error_clear(&err);
    tomo_progress bar;
    tomo_progress_start(&bar, "verify", 0);
    int rc = tomo_store_verify(s, repair, print_problem, show_progress, &bar, &r, &err);
    tomo_progress_finish(&bar, bar.total);
    if (rc < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        return 1;
    }
    int problems = r.bad_slices || r.orphan_chunks || r.stale_entries || !r.totals_ok;
    printf("checked %llu slices, %llu chunks: %llu damaged, %llu orphan chunks, %llu stale "
           "entries, totals %s\n",
           (unsigned long long)r.slices, (unsigned long long)r.chunks,
           (unsigned long long)r.bad_slices, (unsigned long long)r.orphan_chunks,
           (unsigned long long)r.stale_entries, r.totals_ok ? "ok" : "wrong");
    if (repair) {
        printf("deleted %llu entries%s\n", (unsigned long long)r.deleted,
               r.totals_ok ? "" : "; the totals are still wrong");
        return r.totals_ok ? 0 : 1;
    }
    if (problems)
        printf("run 'tomofs cache verify --delete' to remove them\n");
    return problems ? 1 : 0;
}

static int run_clear(tomo_store *s)
{
    tomo_store_totals before;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_store_clear(s, &before, &err) < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        return 1;
    }
    char a[32];
    printf("cleared %s: %llu slices, %s stored (the file keeps its size and reuses the space)\n",
           tomo_store_dir(s), (unsigned long long)before.slices,
           human(before.stored_bytes, a, sizeof a));
    return 0;
}

int tomo_cmd_cache(int argc, char **argv)
{
    const char *dir_opt = NULL;
    int repair = 0;
    static const struct option long_opts[] = {{"help", no_argument, NULL, 'h'},
                                              {"cache", required_argument, NULL, 'c'},
                                              {"delete", no_argument, NULL, 'd'},
                                              {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(cache_usage, stdout);
            return 0;
        case 'c':
            dir_opt = optarg;
            break;
        case 'd':
            repair = 1;
            break;
        default:
            fputs(cache_usage, stderr);
            return 2;
        }
    }
    const char *action = optind + 1 == argc ? argv[optind] : "";
    if (strcmp(action, "stats") != 0 && strcmp(action, "verify") != 0 &&
        strcmp(action, "clear") != 0) {
        fputs(cache_usage, stderr);
        return 2;
    }
    char dir[4096];
    tomo_error err;
    tomo_error_clear(&err);
    if (dir_opt && !realpath(dir_opt, dir))
        snprintf(dir, sizeof dir, "%s", dir_opt);
    else if (!dir_opt && tomo_store_default_dir(dir, sizeof dir, &err) < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        return 1;
    }
    char data[4200];
    struct stat st;
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    if (stat(data, &st) != 0) {
        printf("no slice cache in %s\n", dir);
        return 0;
    }
    tomo_store_config cfg;
    tomo_store_config_default(&cfg);
    cfg.dir = dir;
    cfg.background = 0;
    tomo_store *s;
    if (tomo_store_open(&cfg, &s, &err) < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        return 1;
    }
    int status = strcmp(action, "stats") == 0    ? show_stats(s)
                 : strcmp(action, "verify") == 0 ? run_verify(s, repair)
                                                 : run_clear(s);
    tomo_store_close(s);
    return status;
}
