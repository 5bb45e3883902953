#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "store_internal.h"

/* Reader slots in the lock file: every FUSE thread of every mount may read at once. */
#define MAX_READERS 510

/*
 * The map is address space, not memory or disk: without MDB_WRITEMAP the file only grows as
 * it is used. One size for every process avoids MDB_MAP_RESIZED between mounts.
 */
#define MIN_MAP_BYTES ((size_t)1 << 40)

void tomo_store_config_default(tomo_store_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->capacity = TOMO_STORE_DEFAULT_CAPACITY;
    cfg->level = 1;
    cfg->threads = 0;
    cfg->background = 1;
}

int tomo_store_default_dir(char *buf, size_t size, tomo_error *err)
{
    const char *xdg = getenv("XDG_CACHE_HOME");
    if (xdg && xdg[0] == '/') {
        snprintf(buf, size, "%s/tomofs", xdg);
        return 0;
    }
    const char *home = getenv("HOME");
    if (!home || home[0] != '/') {
        struct passwd *pw = getpwuid(getuid());
        home = pw ? pw->pw_dir : NULL;
    }
    if (!home || home[0] != '/')
        return tomo_error_set(err, TOMO_E_INVALID,
                              "no folder for the slice cache: neither XDG_CACHE_HOME nor HOME is "
                              "set; give one with -o cache=DIR");
    snprintf(buf, size, "%s/.cache/tomofs", home);
    return 0;
}

const char *tomo_store_dir(const tomo_store *s)
{
    return s->dir;
}

/* ---- opening ---- */

/* mkdir -p, new folders private to the user (the XDG rule for cache folders). */
static int make_dirs(const char *dir, tomo_error *err)
{
    char path[sizeof((tomo_store *)0)->dir];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
            return tomo_error_set(err, TOMO_E_IO, "%s: cannot create the cache folder: %s", dir,
                                  strerror(errno));
        *p = saved;
        if (!saved)
            break;
    }
    struct stat st;
    if (stat(dir, &st) < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot use the cache folder: %s", dir,
                              strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot use the cache folder: not a folder", dir);
    return 0;
}

static int lmdb_error(tomo_store *s, tomo_error *err, const char *what, int rc)
{
    return tomo_error_set(err, TOMO_E_IO, "%s: %s: %s", s->dir, what, mdb_strerror(rc));
}

static int check_format(tomo_store *s, MDB_txn *txn, tomo_error *err)
{
    MDB_val k = {6, "format"}, v;
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        MDB_val f = {strlen(STORE_FORMAT), STORE_FORMAT};
        rc = mdb_put(txn, s->meta, &k, &f, 0);
        return rc ? lmdb_error(s, err, "cannot initialise the slice cache", rc) : 0;
    }
    if (rc)
        return lmdb_error(s, err, "cannot read the slice cache", rc);
    if (v.mv_size != strlen(STORE_FORMAT) || memcmp(v.mv_data, STORE_FORMAT, v.mv_size) != 0)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: slice cache of another format (%.*s; this tomofs writes %s): "
                              "remove the folder",
                              s->dir, (int)(v.mv_size < 16 ? v.mv_size : 16),
                              (const char *)v.mv_data, STORE_FORMAT);
    return 0;
}

/* Opens (creating) the four databases and checks the format, in one write transaction. */
static int open_dbis(tomo_store *s, tomo_error *err)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return lmdb_error(s, err, "cannot write to the slice cache", rc);
    const struct {
        const char *name;
        MDB_dbi *dbi;
    } dbs[] = {
        {"meta", &s->meta}, {"slices", &s->slices}, {"chunks", &s->chunks}, {"atime", &s->atime}};
    for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++)
        if ((rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, dbs[i].dbi)) != 0) {
            mdb_txn_abort(txn);
            return lmdb_error(s, err, "cannot open the slice cache", rc);
        }
    if (check_format(s, txn, err) < 0) {
        mdb_txn_abort(txn);
        return -err->code;
    }
    rc = mdb_txn_commit(txn);
    return rc ? lmdb_error(s, err, "cannot write to the slice cache", rc) : 0;
}

static int open_env(tomo_store *s, tomo_error *err)
{
    int rc = mdb_env_create(&s->env);
    if (rc)
        return lmdb_error(s, err, "cannot open the slice cache", rc);
    size_t map = MIN_MAP_BYTES;
    if (s->cfg.capacity > map / 2)
        map = (size_t)s->cfg.capacity * 2;
    mdb_env_set_maxdbs(s->env, 4);
    mdb_env_set_maxreaders(s->env, MAX_READERS);
    mdb_env_set_mapsize(s->env, map);
    /*
     * NOTLS: a read transaction belongs to its object, not to the thread, so any FUSE thread
     * may read. NOSYNC without WRITEMAP: a killed process never corrupts the file; the writer
     * syncs every few seconds.
     */
    rc = mdb_env_open(s->env, s->dir, MDB_NOTLS | MDB_NOSYNC, 0600);
    if (rc) {
        mdb_env_close(s->env);
        s->env = NULL;
        return lmdb_error(s, err, "cannot open the slice cache", rc);
    }
    int dead = 0;
    mdb_reader_check(s->env, &dead);
    MDB_stat st;
    mdb_env_stat(s->env, &st);
    s->page_size = st.ms_psize;
    return open_dbis(s, err);
}

int tomo_store_open(const tomo_store_config *cfg, tomo_store **out, tomo_error *err)
{
    *out = NULL;
    if (!cfg->dir || cfg->dir[0] != '/')
        return tomo_error_set(err, TOMO_E_INVALID, "%s: the cache folder must be an absolute path",
                              cfg->dir ? cfg->dir : "(none)");
    tomo_store *s = calloc(1, sizeof *s);
    if (!s)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    s->cfg = *cfg;
    snprintf(s->dir, sizeof s->dir, "%s", cfg->dir);
    s->cfg.dir = s->dir;
    atomic_init(&s->writable, 1);
    atomic_flag_clear(&s->read_error_logged);
    pthread_mutex_init(&s->codec_lock, NULL);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work_cond, NULL);
    pthread_cond_init(&s->writer_cond, NULL);
    pthread_cond_init(&s->idle_cond, NULL);
    int rc = make_dirs(s->dir, err);
    if (rc == 0)
        rc = open_env(s, err);
    if (rc == 0) {
        int cpus = tomo_cpu_count();
        s->read_pool = tomo_pool_create(cpus < 4 ? cpus : 4);
        if (!s->read_pool)
            rc = tomo_error_set(err, TOMO_E_NOMEM, "cannot start the cache's threads");
    }
    if (rc == 0 && cfg->background)
        rc = store_start_threads(s, err);
    if (rc < 0) {
        tomo_store_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int tomo_store_add_variant(tomo_store *s, uint64_t key, const char *identity, const char *info,
                           tomo_error *err)
{
    int n = atomic_load(&s->n_variants);
    if (n >= TOMO_STORE_MAX_VARIANTS)
        return tomo_error_set(err, TOMO_E_INVALID, "too many variants for one slice cache");
    store_variant *v = &s->variants[n];
    v->key = key;
    v->identity = strdup(identity);
    v->identity_len = strlen(identity);
    v->info = strdup(info ? info : "");
    if (!v->identity || !v->info) {
        free(v->identity);
        free(v->info);
        v->identity = v->info = NULL;
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    }
    atomic_init(&v->collided, 0);
    atomic_store(&s->n_variants, n + 1);
    return n;
}

/* ---- reading ---- */

tomo_codec *store_codec_take(tomo_store *s)
{
    tomo_codec *c = NULL;
    pthread_mutex_lock(&s->codec_lock);
    if (s->n_codecs > 0)
        c = s->codecs[--s->n_codecs];
    pthread_mutex_unlock(&s->codec_lock);
    return c ? c : tomo_codec_create(s->cfg.level);
}

void store_codec_give(tomo_store *s, tomo_codec *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&s->codec_lock);
    if (s->n_codecs == s->codecs_cap) {
        int cap = s->codecs_cap ? s->codecs_cap * 2 : 8;
        tomo_codec **grown = realloc(s->codecs, (size_t)cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&s->codec_lock);
            tomo_codec_destroy(c);
            return;
        }
        s->codecs = grown;
        s->codecs_cap = cap;
    }
    s->codecs[s->n_codecs++] = c;
    pthread_mutex_unlock(&s->codec_lock);
}

typedef struct decode_job {
    tomo_store *s;
    const MDB_val *vals;
    unsigned char *dst;
    uint64_t raw_bytes;
    void (*progress)(void *ctx, int chunk);
    void *ctx;
    pthread_mutex_t lock;
    int bad_chunk; /* lowest failing chunk, or -1 */
    tomo_chunk_status bad_status;
} decode_job;

static void decode_task(void *arg, int task, int slot)
{
    (void)slot;
    decode_job *j = arg;
    tomo_codec *c = store_codec_take(j->s);
    tomo_chunk_status st = TOMO_CHUNK_NOMEM;
    if (c)
        st = tomo_chunk_decode(c, j->vals[task].mv_data, j->vals[task].mv_size,
                               j->dst + (size_t)task * TOMO_STORE_CHUNK_BYTES,
                               store_chunk_raw(j->raw_bytes, (uint32_t)task));
    store_codec_give(j->s, c);
    if (st == TOMO_CHUNK_OK) {
        if (j->progress)
            j->progress(j->ctx, task);
        return;
    }
    pthread_mutex_lock(&j->lock);
    if (j->bad_chunk < 0 || task < j->bad_chunk) {
        j->bad_chunk = task;
        j->bad_status = st;
    }
    pthread_mutex_unlock(&j->lock);
}

/*
 * Decodes n chunks into dst on the caller's thread and the read pool. The pool hands out
 * chunks in increasing order, so a reader waiting for the start of a slice is served first.
 */
static int decode_chunks(tomo_store *s, const MDB_val *vals, uint32_t n, uint64_t raw_bytes,
                         unsigned char *dst, void (*progress)(void *ctx, int chunk), void *ctx,
                         slice_damage *damage)
{
    decode_job job = {.s = s,
                      .vals = vals,
                      .dst = dst,
                      .raw_bytes = raw_bytes,
                      .progress = progress,
                      .ctx = ctx,
                      .bad_chunk = -1};
    pthread_mutex_init(&job.lock, NULL);
    tomo_pool_run(s->read_pool, (int)n, decode_task, &job);
    pthread_mutex_destroy(&job.lock);
    if (job.bad_chunk < 0)
        return 0;
    *damage = (slice_damage){job.bad_chunk, tomo_chunk_status_text(job.bad_status)};
    return -1;
}

/* Finds every chunk of a slice: vals[i] points into the map until the transaction ends. */
static int find_chunks(tomo_store *s, MDB_txn *txn, uint64_t key, int z, uint32_t n, MDB_val *vals,
                       slice_damage *damage)
{
    for (uint32_t i = 0; i < n; i++) {
        unsigned char ck[TOMO_STORE_CHUNK_KEY_BYTES];
        tomo_store_chunk_key(key, z, (int)i, ck);
        MDB_val k = {sizeof ck, ck};
        if (mdb_get(txn, s->chunks, &k, &vals[i]) != 0) {
            *damage = (slice_damage){(int)i, "missing"};
            return -1;
        }
    }
    return 0;
}

int store_decode_slice(tomo_store *s, MDB_txn *txn, uint64_t key, int z, const slice_record *rec,
                       unsigned char *dst, slice_damage *damage)
{
    MDB_val *vals = calloc(rec->n_chunks ? rec->n_chunks : 1, sizeof *vals);
    if (!vals) {
        *damage = (slice_damage){-1, "out of memory"};
        return -1;
    }
    int rc = find_chunks(s, txn, key, z, rec->n_chunks, vals, damage);
    if (rc == 0)
        rc = decode_chunks(s, vals, rec->n_chunks, rec->raw_bytes, dst, NULL, NULL, damage);
    free(vals);
    return rc;
}

/* 1: the stored identity of the variant is ours; 0: absent or another one (a collision). */
static int identity_matches(tomo_store *s, MDB_txn *txn, store_variant *v)
{
    unsigned char vk[9];
    store_variant_key(v->key, vk);
    MDB_val k = {sizeof vk, vk}, val;
    return mdb_get(txn, s->meta, &k, &val) == 0 && store_variant_record_matches(&val, v);
}

static void read_failed(tomo_store *s, int rc)
{
    atomic_fetch_add(&s->errors, 1);
    if (!atomic_flag_test_and_set(&s->read_error_logged))
        tomo_log_warning("%s: cannot read the slice cache (%s); slices are recomputed instead",
                         s->dir, mdb_strerror(rc));
}

static uint64_t slice_id(int handle, int z)
{
    return (uint64_t)(handle + 1) << 32 | (uint32_t)z;
}

/*
 * A damaged slice stays marked until the writer has deleted it, so reads in between are
 * plain misses and the damage is logged once.
 */
static int marked_damaged(tomo_store *s, uint64_t id)
{
    int found = 0;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < STORE_DAMAGE_MARKS && !found; i++)
        found = s->damage_marks[i] == id;
    pthread_mutex_unlock(&s->lock);
    return found;
}

void store_unmark_damaged(tomo_store *s, int handle, int z)
{
    uint64_t id = slice_id(handle, z);
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < STORE_DAMAGE_MARKS; i++)
        if (s->damage_marks[i] == id)
            s->damage_marks[i] = 0;
    pthread_mutex_unlock(&s->lock);
}

static void report_damage(tomo_store *s, int handle, int z, const slice_damage *d)
{
    uint64_t id = slice_id(handle, z);
    if (marked_damaged(s, id))
        return;
    pthread_mutex_lock(&s->lock);
    s->damage_marks[s->next_mark++ % STORE_DAMAGE_MARKS] = id;
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add(&s->damaged, 1);
    if (d->chunk >= 0)
        tomo_log_warning("%s: slice %d of %s: chunk %d: %s; deleted, the slice is recomputed",
                         s->dir, z, s->variants[handle].info, d->chunk, d->what);
    else
        tomo_log_warning("%s: slice %d of %s: %s; deleted, the slice is recomputed", s->dir, z,
                         s->variants[handle].info, d->what);
    store_queue_delete(s, handle, z);
}

static void touch(tomo_store *s, int handle, int z)
{
    if (!s->cfg.background)
        return;
    uint64_t id = slice_id(handle, z);
    pthread_mutex_lock(&s->lock);
    touched_set *t = &s->touched;
    /* a full set drops the touch: the slice merely looks older than it is */
    if (t->slots && t->len < t->cap * 3 / 4) {
        size_t i = (size_t)((id * UINT64_C(0x9e3779b97f4a7c15)) >> 40) % t->cap;
        while (t->slots[i] && t->slots[i] != id)
            i = (i + 1) % t->cap;
        if (!t->slots[i]) {
            t->slots[i] = id;
            t->len++;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

struct tomo_store_slice {
    tomo_store *s;
    int handle;
    int z;
    MDB_txn *txn;
    slice_record rec;
    MDB_val *vals;
    slice_damage damage; /* what != NULL once something was found damaged */
    int decoded;         /* every chunk decoded and checked */
};

/* Looks the slice up inside r->txn: 1 found, 0 miss, -1 damaged (r->damage says why). */
static int find_slice(tomo_store_slice *r, int side)
{
    tomo_store *s = r->s;
    store_variant *v = &s->variants[r->handle];
    if (!identity_matches(s, r->txn, v))
        return 0;
    unsigned char skey[SLICE_KEY_BYTES];
    store_slice_key(v->key, r->z, skey);
    MDB_val k = {sizeof skey, skey}, val;
    int rc = mdb_get(r->txn, s->slices, &k, &val);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc) {
        read_failed(s, rc);
        return 0;
    }
    if (store_record_decode(&val, &r->rec) < 0) {
        r->damage = (slice_damage){-1, "bad record"};
        return -1;
    }
    /* the identity fixes the geometry; a caller asking for another size gets nothing */
    if (r->rec.side != (uint32_t)side)
        return 0;
    r->vals = calloc(r->rec.n_chunks ? r->rec.n_chunks : 1, sizeof *r->vals);
    if (!r->vals)
        return 0;
    return find_chunks(s, r->txn, v->key, r->z, r->rec.n_chunks, r->vals, &r->damage) < 0 ? -1 : 1;
}

static void end_read(tomo_store_slice *r)
{
    if (r->txn)
        mdb_txn_abort(r->txn);
    if (r->decoded) {
        atomic_fetch_add(&r->s->hits, 1);
        touch(r->s, r->handle, r->z);
    } else {
        atomic_fetch_add(&r->s->misses, 1);
    }
    if (r->damage.what)
        report_damage(r->s, r->handle, r->z, &r->damage);
    free(r->vals);
    free(r);
}

int tomo_store_slice_open(tomo_store *s, int handle, int z, int side, tomo_store_slice **out)
{
    *out = NULL;
    if (handle < 0 || handle >= atomic_load(&s->n_variants))
        return 0;
    tomo_store_slice *r = calloc(1, sizeof *r);
    if (!r)
        return 0;
    *r = (tomo_store_slice){.s = s, .handle = handle, .z = z};
    int rc = marked_damaged(s, slice_id(handle, z))
                 ? MDB_NOTFOUND
                 : mdb_txn_begin(s->env, NULL, MDB_RDONLY, &r->txn);
    if (rc && rc != MDB_NOTFOUND)
        read_failed(s, rc);
    if (rc || find_slice(r, side) != 1) {
        end_read(r);
        return 0;
    }
    *out = r;
    return 1;
}

uint64_t tomo_store_slice_chunks(const tomo_store_slice *r)
{
    return r->rec.n_chunks;
}

int tomo_store_slice_decode(tomo_store_slice *r, void *pixels,
                            void (*progress)(void *ctx, int chunk), void *ctx)
{
    if (r->decoded || r->damage.what)
        return r->decoded ? 0 : -1;
    if (decode_chunks(r->s, r->vals, r->rec.n_chunks, r->rec.raw_bytes, pixels, progress, ctx,
                      &r->damage) < 0)
        return -1;
    r->decoded = 1;
    return 0;
}

void tomo_store_slice_close(tomo_store_slice *r)
{
    if (r)
        end_read(r);
}

int tomo_store_get(tomo_store *s, int handle, int z, tomo_slice *slice)
{
    tomo_store_slice *r;
    if (tomo_store_slice_open(s, handle, z, slice->size, &r) != 1)
        return 0;
    int rc = tomo_store_slice_decode(r, slice->pixels, NULL, NULL);
    tomo_store_slice_close(r);
    return rc == 0;
}

/* ---- the rest ---- */

int tomo_store_read_totals(tomo_store *s, tomo_store_totals *t, tomo_error *err)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
        rc = store_totals_load(s, txn, t);
        mdb_txn_abort(txn);
    }
    return rc ? lmdb_error(s, err, "cannot read the slice cache", rc) : 0;
}

void tomo_store_get_stats(tomo_store *s, tomo_store_stats *st)
{
    memset(st, 0, sizeof *st);
    st->hits = atomic_load(&s->hits);
    st->misses = atomic_load(&s->misses);
    st->damaged = atomic_load(&s->damaged);
    st->writes = atomic_load(&s->writes);
    st->dropped = atomic_load(&s->dropped);
    st->errors = atomic_load(&s->errors);
    st->writable = atomic_load(&s->writable);
    pthread_mutex_lock(&s->lock);
    st->queued = s->compress_q.len + s->commit_q.len + (uint64_t)s->compressing;
    pthread_mutex_unlock(&s->lock);
    tomo_store_read_totals(s, &st->totals, NULL);
}

void tomo_store_close(tomo_store *s)
{
    if (!s)
        return;
    store_stop_threads(s);
    if (s->env) {
        mdb_env_sync(s->env, 1);
        mdb_env_close(s->env);
    }
    tomo_pool_destroy(s->read_pool);
    for (int i = 0; i < s->n_codecs; i++)
        tomo_codec_destroy(s->codecs[i]);
    free(s->codecs);
    for (int i = 0; i < atomic_load(&s->n_variants); i++) {
        free(s->variants[i].identity);
        free(s->variants[i].info);
    }
    free(s->touched.slots);
    pthread_mutex_destroy(&s->codec_lock);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->work_cond);
    pthread_cond_destroy(&s->writer_cond);
    pthread_cond_destroy(&s->idle_cond);
    free(s);
}
