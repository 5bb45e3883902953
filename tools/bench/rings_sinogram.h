/*
 * tools/bench/rings_sinogram.h - the synthetic sinogram of the ring-removal benchmark
 * (rings_bench.c), also the input on which tests/gpu/gpu_check.c compares the GPU ring removal
 * with the CPU one at the benchmark's size.
 *
 * rings_sinogram() fills an M x N sinogram (rows are projections over 180 degrees) with the
 * sinusoids of 40 off-centre discs, uniform noise of +-0.005 and a stripe every 50 columns:
 * offsets, gains, dead columns and partial stripes in turn. It draws from its own generator
 * with a fixed seed, so every call gives the same values on every machine.
 */
#ifndef TOMO_RINGS_SINOGRAM_H
#define TOMO_RINGS_SINOGRAM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* A uniform number in [0, 1) from a 64-bit linear congruential generator. */
static inline double rings_uniform(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) * (1.0 / 9007199254740992.0);
}

static inline void rings_sinogram(float *sino, int M, int N)
{
    enum { DISCS = 40 };
    uint64_t state = 0x9e3779b97f4a7c15ULL;
    double x[DISCS], y[DISCS], rad[DISCS], mu[DISCS];
    for (int d = 0; d < DISCS; d++) {
        double r = 0.4 * N * sqrt(rings_uniform(&state)), a = 2 * M_PI * rings_uniform(&state);
        x[d] = r * cos(a);
        y[d] = r * sin(a);
        rad[d] = (0.02 + 0.08 * rings_uniform(&state)) * N;
        mu[d] = 0.002 + 0.01 * rings_uniform(&state);
    }
    double c = 0.5 * N;
    for (int m = 0; m < M; m++) {
        double th = M_PI * m / M, ct = cos(th), st = sin(th);
        float *row = sino + (size_t)m * N;
        for (int j = 0; j < N; j++)
            row[j] = 0;
        for (int d = 0; d < DISCS; d++) {
            double u0 = x[d] * ct + y[d] * st + c;
            int a = (int)floor(u0 - rad[d]), b = (int)ceil(u0 + rad[d]);
            for (int j = a < 0 ? 0 : a; j <= b && j < N; j++) {
                double t = (j - u0) / rad[d];
                if (t * t < 1)
                    row[j] += (float)(2 * rad[d] * mu[d] * sqrt(1 - t * t));
            }
        }
        for (int j = 0; j < N; j++)
            row[j] += (float)(0.01 * (rings_uniform(&state) - 0.5));
    }
    /* stripes: offsets, gains, dead columns, partial stripes */
    for (int s = 0; s < N / 50; s++) {
        int j = (int)(rings_uniform(&state) * N);
        int kind = s % 4;
        for (int m = 0; m < M; m++) {
            float *v = sino + (size_t)m * N + j;
            if (kind == 0)
                *v += 0.02f;
            else if (kind == 1)
                *v *= 1.05f;
            else if (kind == 2)
                *v = 0.5f;
            else if (m > M / 3 && m < M / 2)
                *v -= 0.03f;
        }
    }
}

#endif
