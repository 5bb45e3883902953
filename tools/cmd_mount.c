#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fuse_lowlevel.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../fs/fs.h"
#include "cmd.h"
#include "options.h"

static const char mount_usage[] =
    "usage: tomofs mount SCAN MNT [-f] [-d] [-o OPTIONS]\n"
    "\n"
    "Shows the raw scan SCAN as folders of reconstructed slices at the existing folder MNT.\n"
    "Returns once mounted; slices are reconstructed when something reads them.\n"
    "\n"
    "  -f, --foreground   stay in the foreground (log to the terminal)\n"
    "  -d, --debug        foreground, with libfuse's request trace\n"
    "  -o OPTIONS         reconstruction options (below) and FUSE mount options such as\n"
    "                     allow_other\n"
    "\n";

int tomo_cmd_mount(int argc, char **argv)
{
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    char fuse_opts[4096] = "";
    int foreground = 0, debug = 0;
    static const struct option long_opts[] = {{"help", no_argument, NULL, 'h'},
                                              {"foreground", no_argument, NULL, 'f'},
                                              {"debug", no_argument, NULL, 'd'},
                                              {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hfdo:", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("%s%s", mount_usage, tomo_options_help);
            return 0;
        case 'f':
            foreground = 1;
            break;
        case 'd':
            debug = foreground = 1;
            break;
        case 'o':
            if (tomo_options_parse(optarg, &opts, fuse_opts, sizeof fuse_opts) < 0)
                return 2;
            break;
        default:
            fprintf(stderr, "%s", mount_usage);
            return 2;
        }
    }
    if (optind + 2 != argc) {
        fprintf(stderr, "%s", mount_usage);
        return 2;
    }
    char mountpoint[PATH_MAX];
    struct stat st;
    if (!realpath(argv[optind + 1], mountpoint) || stat(mountpoint, &st) != 0 ||
        !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "tomofs: %s: the mount point must be an existing folder\n",
                argv[optind + 1]);
        return 1;
    }

    tomo_volume *vol = tomo_open_scan_argument(argv[optind], &opts);
    if (!vol)
        return 1;
    tomo_error err;
    tomo_error_clear(&err);
    const tomo_volume_variant *var = &vol->variants[0];
    fprintf(stderr,
            "tomofs: %s: %s, %d x %d detector, %d projections; centre %.3f (%s), %s filter, "
            "%s padding\n",
            vol->scan->path, vol->scan->format, vol->scan->width, vol->scan->rows,
            vol->scan->n_proj, var->params.center, vol->center_automatic ? "found" : "given",
            tomo_filter_name(var->params.filter),
            var->params.pad == TOMO_PAD_EDGE ? "edge" : "zero");

    char mount_opts[4200];
    snprintf(mount_opts, sizeof mount_opts,
             "ro,default_permissions,fsname=tomofs,subtype=tomofs%s%s", fuse_opts[0] ? "," : "",
             fuse_opts);
    char *fuse_argv[] = {"tomofs", "-o", mount_opts, debug ? "-d" : NULL, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(debug ? 4 : 3, fuse_argv);
    int rc = tomo_fs_serve(vol, &args, mountpoint, foreground, &err);
    fuse_opt_free_args(&args);
    if (rc < 0)
        tomo_log_error("%s", err.message);
    tomo_volume_close(vol);
    return rc < 0 ? 1 : 0;
}

/* The daemon's pid, from the status file of a mounted tomofs; 0 if it cannot be read. */
static pid_t daemon_pid(const char *mountpoint)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/.tomofs/status", mountpoint);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long pid = 0;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "pid: %ld", &pid) == 1)
            break;
    fclose(f);
    return (pid_t)pid;
}

static int run_fusermount(const char *mountpoint)
{
    pid_t child = fork();
    if (child < 0)
        return -1;
    if (child == 0) {
        execlp("fusermount3", "fusermount3", "-u", mountpoint, (char *)NULL);
        execlp("fusermount", "fusermount", "-u", mountpoint, (char *)NULL);
        _exit(127);
    }
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static const char umount_usage[] =
    "usage: tomofs umount MNT\n"
    "\n"
    "Unmounts a tomofs mount and waits until its daemon has exited.\n";

int tomo_cmd_umount(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        fputs(umount_usage, stdout);
        return 0;
    }
    if (argc != 2) {
        fputs(umount_usage, stderr);
        return 2;
    }
    char mountpoint[PATH_MAX];
    if (!realpath(argv[1], mountpoint))
        snprintf(mountpoint, sizeof mountpoint, "%s", argv[1]);
    pid_t pid = daemon_pid(mountpoint);
    if (run_fusermount(mountpoint) < 0) {
        fprintf(stderr, "tomofs: %s: could not unmount (is it a tomofs mount, and not busy?)\n",
                argv[1]);
        return 1;
    }
    /* The daemon finishes or cancels what it is computing, then exits. */
    for (int i = 0; pid > 0 && i < 600; i++) {
        if (kill(pid, 0) != 0 && errno == ESRCH)
            return 0;
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    if (pid > 0) {
        fprintf(stderr, "tomofs: %s: unmounted, but daemon %ld is still running after 30 s\n",
                argv[1], (long)pid);
        return 1;
    }
    return 0;
}
