/*
 * tomofs - raw tomography scans as folders of reconstructed slices.
 */
#include <stdio.h>
#include <string.h>

#include "cmd.h"

static const char usage[] =
    "usage: tomofs COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  mount SCAN MNT [-f] [-o OPTIONS]   show SCAN as folders of reconstructed slices at MNT\n"
    "  umount MNT                         unmount and wait for the daemon to exit\n"
    "  info SCAN [-o OPTIONS]             print what tomofs finds in SCAN (scan.json)\n"
    "  export SCAN OUTDIR [--range A:B]   write slices as files, identical to the mounted ones\n"
    "  phantom OUTDIR --width W --rows H --projections M\n"
    "                                     write a simulated SPring-8 scan with known truth\n"
    "  train SCAN [--epochs N] [--resume] train the denoising model of denoised/\n"
    "  bench SCAN [--rows N]              time the reconstruction stages on this machine\n"
    "  cache stats|verify|clear           show, check or empty the slice cache on disk\n"
    "\n"
    "Run 'tomofs COMMAND --help' for the options of a command.\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("tomofs %s\n", TOMOFS_VERSION);
        return 0;
    }
    static const struct {
        const char *name;
        int (*run)(int, char **);
    } commands[] = {
        {"mount", tomo_cmd_mount}, {"umount", tomo_cmd_umount}, {"unmount", tomo_cmd_umount},
        {"info", tomo_cmd_info},   {"export", tomo_cmd_export}, {"phantom", tomo_cmd_phantom},
        {"bench", tomo_cmd_bench}, {"cache", tomo_cmd_cache},   {"train", tomo_cmd_train},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "tomofs: unknown command '%s'\n\n%s", cmd, usage);
    return 2;
}
