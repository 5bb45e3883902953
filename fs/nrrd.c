#include "nrrd.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

uint64_t tomo_nrrd_file_size(const tomo_nrrd_info *info)
{
    return TOMO_NRRD_HEADER_BYTES + (uint64_t)info->sizes[0] * (uint64_t)info->sizes[1] *
                                        (uint64_t)info->sizes[2] * tomo_sample_bytes(info->sample);
}

/* Appends printf output to buf at *len; sets *len past size when it does not fit. */
static void add(char *buf, size_t size, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void add(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
    if (*len >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, size - *len, fmt, ap);
    va_end(ap);
    *len = n < 0 ? size : *len + (size_t)n;
}

int tomo_nrrd_header(unsigned char out[TOMO_NRRD_HEADER_BYTES], const tomo_nrrd_info *info,
                     tomo_error *err)
{
    for (int i = 0; i < 3; i++) {
        if (info->sizes[i] < 1)
            return tomo_error_set(err, TOMO_E_INVALID, "volume of %d x %d x %d samples is empty",
                                  info->sizes[0], info->sizes[1], info->sizes[2]);
        if (!(info->spacing_um[i] > 0) || !isfinite(info->spacing_um[i]) ||
            !isfinite(info->origin_um[i]))
            return tomo_error_set(err, TOMO_E_INVALID,
                                  "volume spacing %g um or origin %g um is not usable",
                                  info->spacing_um[i], info->origin_um[i]);
    }
    char text[TOMO_NRRD_HEADER_BYTES + 1];
    size_t len = 0, size = sizeof text;
    add(text, size, &len, "NRRD0004\n");
    for (const char *c = info->comments; c && *c;) {
        const char *end = strchr(c, '\n');
        int n = end ? (int)(end - c) : (int)strlen(c);
        add(text, size, &len, "# %.*s\n", n, c);
        c += n + (end ? 1 : 0);
    }
    if (info->content && info->content[0])
        add(text, size, &len, "content: %s\n", info->content);
    add(text, size, &len, "type: %s\n", info->sample == TOMO_SAMPLE_UINT16 ? "uint16" : "float");
    add(text, size, &len, "dimension: 3\n");
    add(text, size, &len, "space: 3D-right-handed\n");
    add(text, size, &len, "sizes: %d %d %d\n", info->sizes[0], info->sizes[1], info->sizes[2]);
    add(text, size, &len, "space directions: (%.9g,0,0) (0,%.9g,0) (0,0,%.9g)\n",
        info->spacing_um[0], info->spacing_um[1], info->spacing_um[2]);
    add(text, size, &len, "space units: \"um\" \"um\" \"um\"\n");
    add(text, size, &len, "space origin: (%.9g,%.9g,%.9g)\n", info->origin_um[0],
        info->origin_um[1], info->origin_um[2]);
    add(text, size, &len, "centerings: cell cell cell\n");
    if (info->quantized)
        add(text, size, &len, "old min: %.17g\nold max: %.17g\n", info->old_min, info->old_max);
    add(text, size, &len, "endian: little\nencoding: raw\n");
    /* a comment line of spaces pads the header; the blank line after it ends the header */
    if (len + 3 > TOMO_NRRD_HEADER_BYTES)
        return tomo_error_set(err, TOMO_E_INVALID, "volume header of %zu bytes does not fit %d",
                              len, TOMO_NRRD_HEADER_BYTES);
    memcpy(out, text, len);
    size_t pad_end = TOMO_NRRD_HEADER_BYTES - 2; /* the pad line's newline */
    out[len] = '#';
    memset(out + len + 1, ' ', pad_end - len - 1);
    out[pad_end] = '\n';
    out[pad_end + 1] = '\n';
    return 0;
}
