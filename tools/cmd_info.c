#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "options.h"

static const char info_usage[] =
    "usage: tomofs info SCAN [-o OPTIONS]\n"
    "\n"
    "Validates SCAN and prints what the mount's scan.json would hold:\n"
    "format, shapes, angles, flats and darks, centre, parameters.\n"
    "\n";

int tomo_cmd_info(int argc, char **argv)
{
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    static const struct option long_opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("%s%s", info_usage, tomo_options_help);
            return 0;
        case 'o':
            if (tomo_options_parse(optarg, &opts, NULL, 0) < 0)
                return 2;
            break;
        default:
            fprintf(stderr, "%s", info_usage);
            return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "%s", info_usage);
        return 2;
    }
    tomo_volume *vol = tomo_open_scan_argument(argv[optind], &opts);
    if (!vol)
        return 1;
    fwrite(vol->scan_json, 1, vol->scan_json_len, stdout);
    tomo_volume_close(vol);
    return 0;
}
