/*
 * common/rng.h - reproducible random numbers: the phantom's noise and ring columns, and
 * training's weight initialisation, patch positions and flips. A small generator whose whole
 * state (four 64-bit words) can be saved, so a resumed training run draws exactly the numbers
 * an uninterrupted run would have drawn, and the same on every machine.
 *
 * Algorithm: xoshiro256** (Blackman and Vigna), seeded through splitmix64.
 */
#ifndef TOMO_RNG_H
#define TOMO_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct tomo_rng {
    uint64_t s[4];
} tomo_rng;

static inline uint64_t tomo_rng_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The same seed always gives the same sequence, on every machine. */
static inline void tomo_rng_seed(tomo_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        rng->s[i] = tomo_rng_splitmix64(&seed);
}

/*
 * Seeds from three words, chained through the mixer so that different triples, (a, b, c) and
 * (b, a, c) say, give unrelated streams: one stream per (seed, frame, row), for example.
 */
static inline void tomo_rng_seed_words(tomo_rng *rng, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t x = a;
    uint64_t k = tomo_rng_splitmix64(&x);
    x = k ^ b;
    k = tomo_rng_splitmix64(&x);
    x = k ^ c;
    for (int i = 0; i < 4; i++)
        rng->s[i] = tomo_rng_splitmix64(&x);
    if (!(rng->s[0] | rng->s[1] | rng->s[2] | rng->s[3]))
        rng->s[0] = 1; /* the one state xoshiro cannot leave */
}

static inline uint64_t tomo_rng_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* Next 64 random bits. */
static inline uint64_t tomo_rng_next(tomo_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = tomo_rng_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = tomo_rng_rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1), 53 random bits. */
static inline double tomo_rng_uniform(tomo_rng *rng)
{
    return (double)(tomo_rng_next(rng) >> 11) * 0x1.0p-53;
}

/* Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; the bias is below 2^-32). */
static inline uint64_t tomo_rng_below(tomo_rng *rng, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)tomo_rng_next(rng) * n) >> 64);
}

/* Standard normal (Box-Muller; one of the pair is dropped so the state stays simple). */
static inline double tomo_rng_normal(tomo_rng *rng)
{
    double u1 = 1.0 - tomo_rng_uniform(rng); /* (0, 1]: log stays finite */
    double u2 = tomo_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
