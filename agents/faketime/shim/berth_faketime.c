/*
 * berth-faketime: a preload library that shifts the wall clock, and only the
 * wall clock, by an offset read from a file.
 *
 * Written for berth from scratch. Design notes (see README.md for users):
 *
 *  - Reading the wall clock (clock_gettime on CLOCK_REALTIME, _COARSE, _ALARM
 *    and CLOCK_TAI, gettimeofday, time, timespec_get, ftime) returns real time
 *    plus the offset. Monotonic, boot-time and CPU clocks are never touched, so
 *    relative sleeps, poll/select/epoll timeouts and monotonic deadlines keep
 *    working exactly as without the shim.
 *  - Functions that take an ABSOLUTE deadline on a wall clock get the deadline
 *    translated back to real time (minus the offset) before glibc hands it to
 *    the kernel: a program that computes "faked now + 0.5 s" waits 0.5 s.
 *  - The offset lives in the file named by FAKETIME_TIMESTAMP_FILE. It is
 *    re-checked (one stat) at most every FAKETIME_CACHE_DURATION seconds
 *    (default 1, 0 = on every call) and re-read only when the file changed.
 *    The common path costs the real clock read, two relaxed atomic loads and
 *    an add; no locks, no malloc, no extra syscalls.
 *  - The library must load into any x86_64 glibc from 2.17 on, including
 *    images that carry nothing but the loader and libc.so.6: its only
 *    DT_NEEDED is libc.so.6, and it imports only getenv, dl_iterate_phdr and
 *    __errno_location (all GLIBC_2.2.5). It does not use libdl: it finds the
 *    "next" definition of each wrapped function itself, walking the loaded
 *    objects with dl_iterate_phdr and reading their dynamic symbol tables
 *    (see "finding the real functions"). File I/O uses raw system calls, so
 *    stat@GLIBC_2.33 and friends are never referenced and errno is never
 *    disturbed.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <mqueue.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>

#if !defined(__x86_64__)
#error "berth-faketime supports x86_64 only"
#endif

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NSEC 1000000000LL

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* ------------------------------------------------------------------------ */
/* raw system calls: no errno, no libc symbol versions                       */

static long raw_syscall(long nr, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

static int raw_open(const char *path)
{
	return (int)raw_syscall(SYS_open, (long)path,
				O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0, 0);
}

static long raw_read(int fd, void *buf, size_t len)
{
	return raw_syscall(SYS_read, fd, (long)buf, (long)len, 0);
}

static void raw_close(int fd) { raw_syscall(SYS_close, fd, 0, 0, 0); }

/* ------------------------------------------------------------------------ */
/* finding the real functions                                                */

/*
 * What dlsym(RTLD_NEXT, name) / dlvsym(RTLD_NEXT, name, version) would return,
 * without libdl (dlsym lives in libdl.so.2 before glibc 2.34, and minimal
 * images do not carry it): the first object loaded after this one that
 * defines `name`, in the order dl_iterate_phdr reports them (the loader's
 * load order: the program, preloads, then their dependencies breadth first,
 * then dlopen()ed objects). Each object is read through its own dynamic
 * section: DT_SYMTAB and DT_STRTAB, DT_GNU_HASH or DT_HASH to find the name,
 * DT_VERSYM and DT_VERDEF to match a symbol version.
 *
 * Pointers in a dynamic section are link-time addresses in some objects and
 * already relocated in others: glibc relocates DT_SYMTAB, DT_STRTAB, the hash
 * tables and DT_VERSYM in place for ordinary objects but not DT_VERDEF, and
 * nothing in the vDSO or where the dynamic section is read-only; musl
 * relocates nothing. So every pointer is taken as it is when it lies inside
 * one of the object's loaded segments, else with the load bias added, and an
 * object whose tables fit neither way is skipped.
 */

struct want {
	const char *name;
	const char *version; /* NULL: the default version */
	uint32_t gnu, sysv;  /* the name's hashes */
	void *found;
};

/* A function of this library: whichever loaded object contains it is us. */
static void marker(void) {}

static int in_segments(const struct dl_phdr_info *info, uintptr_t p, size_t len)
{
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD)
			continue;
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
		if (p >= lo && p - lo <= ph->p_memsz && len <= ph->p_memsz - (p - lo))
			return 1;
	}
	return 0;
}

/* A d_ptr value as an address of this process, or 0 (see above). */
static uintptr_t dyn_addr(const struct dl_phdr_info *info, ElfW(Addr) v, size_t len)
{
	if (v == 0)
		return 0;
	if (in_segments(info, (uintptr_t)v, len))
		return (uintptr_t)v;
	if (in_segments(info, info->dlpi_addr + (uintptr_t)v, len))
		return info->dlpi_addr + (uintptr_t)v;
	return 0;
}

static uint32_t hash_gnu(const char *s)
{
	uint32_t h = 5381;
	for (; *s; s++)
		h = h * 33 + (unsigned char)*s;
	return h;
}

static uint32_t hash_sysv(const char *s)
{
	uint32_t h = 0;
	for (; *s; s++) {
		h = (h << 4) + (unsigned char)*s;
		uint32_t g = h & 0xf0000000u;
		h ^= g >> 24;
		h &= ~g;
	}
	return h;
}

static int str_eq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

/* One object's tables, addresses checked. */
struct object {
	const struct dl_phdr_info *info;
	const ElfW(Sym) *symtab;
	const char *strtab;
	size_t strsz;
	const uint32_t *gnu_hash, *sysv_hash;
	const ElfW(Half) *versym;
	uintptr_t verdef;
	size_t verdefnum;
};

static int object_from(const struct dl_phdr_info *info, struct object *o)
{
	const ElfW(Dyn) *dyn = NULL;
	for (int i = 0; i < info->dlpi_phnum; i++)
		if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
			dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
	if (dyn == NULL)
		return 0;
	ElfW(Addr) symtab = 0, strtab = 0, gnu = 0, sysv = 0, versym = 0, verdef = 0;
	o->info = info;
	o->strsz = 0;
	o->verdefnum = 0;
	for (; dyn->d_tag != DT_NULL; dyn++) {
		switch (dyn->d_tag) {
		case DT_SYMTAB: symtab = dyn->d_un.d_ptr; break;
		case DT_STRTAB: strtab = dyn->d_un.d_ptr; break;
		case DT_STRSZ: o->strsz = dyn->d_un.d_val; break;
		case DT_GNU_HASH: gnu = dyn->d_un.d_ptr; break;
		case DT_HASH: sysv = dyn->d_un.d_ptr; break;
		case DT_VERSYM: versym = dyn->d_un.d_ptr; break;
		case DT_VERDEF: verdef = dyn->d_un.d_ptr; break;
		case DT_VERDEFNUM: o->verdefnum = dyn->d_un.d_val; break;
		default: break;
		}
	}
	o->symtab = (const ElfW(Sym) *)dyn_addr(info, symtab, sizeof(ElfW(Sym)));
	o->strtab = (const char *)dyn_addr(info, strtab, o->strsz);
	o->gnu_hash = (const uint32_t *)dyn_addr(info, gnu, 16);
	o->sysv_hash = (const uint32_t *)dyn_addr(info, sysv, 8);
	o->versym = (const ElfW(Half) *)dyn_addr(info, versym, sizeof(ElfW(Half)));
	o->verdef = dyn_addr(info, verdef, sizeof(ElfW(Verdef)));
	if (o->verdef == 0)
		o->verdefnum = 0;
	return o->symtab != NULL && o->strtab != NULL && o->strsz > 0 &&
	       (o->gnu_hash != NULL || o->sysv_hash != NULL);
}

/* The name of version index `ndx` in the object's DT_VERDEF, or NULL. */
static const char *version_name(const struct object *o, ElfW(Half) ndx)
{
	uintptr_t at = o->verdef;
	for (size_t i = 0; i < o->verdefnum && at != 0; i++) {
		if (!in_segments(o->info, at, sizeof(ElfW(Verdef))))
			return NULL;
		const ElfW(Verdef) *vd = (const ElfW(Verdef) *)at;
		if (vd->vd_ndx == ndx && vd->vd_cnt > 0) {
			uintptr_t aux = at + vd->vd_aux;
			if (!in_segments(o->info, aux, sizeof(ElfW(Verdaux))))
				return NULL;
			size_t name = ((const ElfW(Verdaux) *)aux)->vda_name;
			return name < o->strsz ? o->strtab + name : NULL;
		}
		if (vd->vd_next == 0)
			break;
		at += vd->vd_next;
	}
	return NULL;
}

/* How well symbol `idx` answers `w`: 0 not at all, 1 acceptable (an
 * unversioned definition for a versioned request), 2 exactly. */
static int sym_match(const struct object *o, size_t idx, const struct want *w)
{
	const ElfW(Sym) *sym = &o->symtab[idx];
	if (!in_segments(o->info, (uintptr_t)sym, sizeof *sym))
		return 0;
	int type = ELF64_ST_TYPE(sym->st_info), bind = ELF64_ST_BIND(sym->st_info);
	if (sym->st_shndx == SHN_UNDEF || sym->st_value == 0 ||
	    (type != STT_FUNC && type != STT_GNU_IFUNC) ||
	    (bind != STB_GLOBAL && bind != STB_WEAK && bind != STB_GNU_UNIQUE))
		return 0;
	if (sym->st_name >= o->strsz || !str_eq(o->strtab + sym->st_name, w->name))
		return 0;
	if (o->versym == NULL)
		return 2; /* an object without versions: any request takes it, as glibc does */
	ElfW(Half) vs = o->versym[idx];
	ElfW(Half) ndx = vs & 0x7fff;
	int hidden = (vs & 0x8000) != 0;
	if (ndx <= 1) /* local or global without a version */
		return w->version == NULL ? 2 : 1;
	if (w->version == NULL)
		return hidden ? 0 : 2; /* the default (@@) version */
	const char *v = version_name(o, ndx);
	return v != NULL && str_eq(v, w->version) ? 2 : 0;
}

/* The address of symbol `idx`, calling an IFUNC resolver as the loader would. */
static void *sym_address(const struct object *o, size_t idx)
{
	const ElfW(Sym) *sym = &o->symtab[idx];
	uintptr_t a = o->info->dlpi_addr + sym->st_value;
	if (ELF64_ST_TYPE(sym->st_info) == STT_GNU_IFUNC)
		a = ((uintptr_t(*)(void))a)();
	return (void *)a;
}

/* The best definition of `w` in one object, or NULL. */
static void *lookup(const struct object *o, const struct want *w)
{
	size_t best = 0;
	int best_score = 0;
	if (o->gnu_hash != NULL) {
		const uint32_t *h = o->gnu_hash;
		uint32_t nbuckets = h[0], symoffset = h[1], bloom_size = h[2], shift = h[3];
		if (nbuckets == 0 || bloom_size == 0)
			return NULL;
		const ElfW(Addr) *bloom = (const ElfW(Addr) *)(h + 4);
		const uint32_t *buckets = (const uint32_t *)(bloom + bloom_size);
		const uint32_t *chain = buckets + nbuckets;
		if (!in_segments(o->info, (uintptr_t)bloom, sizeof *bloom * bloom_size) ||
		    !in_segments(o->info, (uintptr_t)buckets, sizeof *buckets * nbuckets))
			return NULL;
		const unsigned bits = sizeof(ElfW(Addr)) * 8;
		ElfW(Addr) word = bloom[(w->gnu / bits) % bloom_size];
		ElfW(Addr) mask = ((ElfW(Addr))1 << (w->gnu % bits)) |
				  ((ElfW(Addr))1 << ((w->gnu >> shift) % bits));
		if ((word & mask) != mask)
			return NULL;
		uint32_t i = buckets[w->gnu % nbuckets];
		if (i < symoffset)
			return NULL;
		for (;; i++) {
			const uint32_t *c = &chain[i - symoffset];
			if (!in_segments(o->info, (uintptr_t)c, sizeof *c))
				break;
			if ((*c | 1) == (w->gnu | 1)) {
				int score = sym_match(o, i, w);
				if (score > best_score) {
					best = i;
					best_score = score;
					if (score == 2)
						break;
				}
			}
			if (*c & 1)
				break;
		}
	} else {
		const uint32_t *h = o->sysv_hash;
		uint32_t nbucket = h[0], nchain = h[1];
		if (nbucket == 0 || !in_segments(o->info, (uintptr_t)h, 4 * (2 + (size_t)nbucket + nchain)))
			return NULL;
		const uint32_t *bucket = h + 2, *chain = bucket + nbucket;
		uint32_t steps = 0;
		for (uint32_t i = bucket[w->sysv % nbucket]; i != STN_UNDEF && i < nchain && steps < nchain;
		     i = chain[i], steps++) {
			int score = sym_match(o, i, w);
			if (score > best_score) {
				best = i;
				best_score = score;
				if (score == 2)
					break;
			}
		}
	}
	return best_score > 0 ? sym_address(o, best) : NULL;
}

struct search {
	struct want *wants;
	int n;
	int pass;      /* 0: objects after this one; 1: every object but the program and this one */
	int seen_self; /* this library was met during the walk */
	int index;     /* position of the object in the walk */
};

static int search_object(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	struct search *s = data;
	int index = s->index++;
	if (in_segments(info, (uintptr_t)&marker, 1)) {
		s->seen_self = 1;
		return 0;
	}
	if (s->pass == 0 ? !s->seen_self : index == 0)
		return 0;
	struct object o;
	if (!object_from(info, &o))
		return 0;
	int missing = 0;
	for (int i = 0; i < s->n; i++) {
		if (s->wants[i].found == NULL)
			s->wants[i].found = lookup(&o, &s->wants[i]);
		missing += s->wants[i].found == NULL;
	}
	return missing == 0; /* nonzero stops the walk */
}

/* Fills in every `found` it can, in one walk over the loaded objects (two if
 * this library was not in the list, e.g. loaded into another namespace). */
static void find_next(struct want *wants, int n)
{
	for (int i = 0; i < n; i++) {
		wants[i].gnu = hash_gnu(wants[i].name);
		wants[i].sysv = hash_sysv(wants[i].name);
		wants[i].found = NULL;
	}
	struct search s = {wants, n, 0, 0, 0};
	dl_iterate_phdr(search_object, &s);
	if (!s.seen_self) {
		s.pass = 1;
		s.index = 0;
		dl_iterate_phdr(search_object, &s);
	}
}

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int (*gettimeofday_fn)(struct timeval *, void *);

static clock_gettime_fn real_clock_gettime;
static gettimeofday_fn real_gettimeofday;

/* Looks a symbol up in the objects loaded after this one, once found. The slot is
 * written atomically so concurrent first calls at worst resolve twice. */
static void *resolve(void **slot, const char *name, const char *version)
{
	void *p = LOAD(slot);
	if (LIKELY(p != NULL))
		return p;
	struct want w[2] = {{name, version, 0, 0, NULL}, {name, NULL, 0, 0, NULL}};
	/* like dlvsym, then dlsym: a definition of the asked version, else the default one */
	find_next(w, version != NULL ? 2 : 1);
	p = w[0].found != NULL ? w[0].found : (version != NULL ? w[1].found : NULL);
	if (p != NULL)
		STORE(slot, p);
	return p;
}

/* Every wrapped function that forwards to a "next" definition: name and the
 * symbol version to ask for first (NULL: the default version). */
#define FORWARDED(X)                                                           \
	X(timespec_get, NULL)                                                  \
	X(clock_nanosleep, NULL)                                               \
	X(sem_timedwait, NULL)                                                 \
	X(sem_clockwait, "GLIBC_2.30")                                         \
	X(pthread_mutex_timedlock, NULL)                                       \
	X(pthread_mutex_clocklock, "GLIBC_2.30")                               \
	X(pthread_rwlock_timedrdlock, NULL)                                    \
	X(pthread_rwlock_timedwrlock, NULL)                                    \
	X(pthread_rwlock_clockrdlock, "GLIBC_2.30")                            \
	X(pthread_rwlock_clockwrlock, "GLIBC_2.30")                            \
	X(pthread_timedjoin_np, NULL)                                          \
	X(pthread_clockjoin_np, "GLIBC_2.31")                                  \
	X(pthread_cond_timedwait, "GLIBC_2.3.2")                               \
	X(pthread_cond_clockwait, "GLIBC_2.30")                                \
	X(mq_timedsend, NULL)                                                  \
	X(mq_timedreceive, NULL)                                               \
	X(timerfd_create, NULL)                                                \
	X(timerfd_settime, NULL)                                               \
	X(timer_create, NULL)                                                  \
	X(timer_delete, NULL)                                                  \
	X(timer_settime, NULL)

#define DECLARE_SLOT(name, version) static void *slot_##name;
FORWARDED(DECLARE_SLOT)

/* Resolves the clock readers and everything else that is already loaded, in
 * one walk, so that the first call of an async-signal-safe function
 * (clock_gettime, clock_nanosleep) never walks the loader's lists. Functions
 * of libraries loaded later (libpthread, librt before glibc 2.34) resolve on
 * their first call. */
static void preresolve(void)
{
#define WANT(name, version) {#name, version, 0, 0, NULL}, {#name, NULL, 0, 0, NULL},
	struct want w[] = {
		{"clock_gettime", NULL, 0, 0, NULL},
		{"gettimeofday", NULL, 0, 0, NULL},
		FORWARDED(WANT)
	};
	find_next(w, (int)(sizeof w / sizeof w[0]));
	STORE(&real_clock_gettime, (clock_gettime_fn)w[0].found);
	STORE(&real_gettimeofday, (gettimeofday_fn)w[1].found);
	int i = 2;
#define TAKE(name, version)                                                    \
	{                                                                      \
		void *p = w[i].found;                                          \
		if (p == NULL && (version) != NULL)                            \
			p = w[i + 1].found;                                    \
		if (p != NULL)                                                 \
			STORE(&slot_##name, p);                                \
		i += 2;                                                        \
	}
	FORWARDED(TAKE)
}

#define REAL(type, name, version)                                              \
	__typeof__(type) real = (__typeof__(type))resolve(&slot_##name, #name, version)

static int call_clock_gettime(clockid_t clk, struct timespec *ts)
{
	clock_gettime_fn f = LOAD_RELAXED(&real_clock_gettime);
	if (LIKELY(f != NULL))
		return f(clk, ts);
	long r = raw_syscall(SYS_clock_gettime, clk, (long)ts, 0, 0);
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* offset parsing: the grammar is documented in README.md and mirrored by
 * berth_faketime::file::parse_content in Rust (tests hold them together).   */

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* "[+-]digits" -> *out. 1 on success. */
static int parse_int(const char *s, const char *end, int64_t *out)
{
	int neg = 0;
	if (s < end && (*s == '+' || *s == '-'))
		neg = *s++ == '-';
	if (s == end)
		return 0;
	int64_t v = 0;
	for (; s < end; s++) {
		if (!is_digit(*s))
			return 0;
		/* accumulate negatively so INT64_MIN parses */
		if (__builtin_mul_overflow(v, 10, &v) ||
		    __builtin_sub_overflow(v, (int64_t)(*s - '0'), &v))
			return 0;
	}
	if (!neg) {
		if (v == INT64_MIN)
			return 0;
		v = -v;
	}
	*out = v;
	return 1;
}

/* "[+-]digits[.digits][smhdy]" -> nanoseconds. 1 on success. */
static int parse_relative(const char *s, const char *end, int64_t *out)
{
	int neg = 0;
	if (s < end && (*s == '+' || *s == '-'))
		neg = *s++ == '-';
	int64_t unit = 1; /* seconds per unit */
	if (end > s) {
		switch (end[-1]) {
		case 's': unit = 1; end--; break;
		case 'm': unit = 60; end--; break;
		case 'h': unit = 3600; end--; break;
		case 'd': unit = 86400; end--; break;
		case 'y': unit = 365 * 86400; end--; break;
		default: break;
		}
	}
	int64_t whole = 0, frac = 0, scale = NSEC; /* frac * scale = ns of one unit fraction */
	int digits = 0, frac_digits = 0, in_frac = 0;
	for (; s < end; s++) {
		if (*s == '.' && !in_frac) {
			in_frac = 1;
			continue;
		}
		if (!is_digit(*s))
			return 0;
		if (in_frac) {
			if (++frac_digits > 9)
				return 0;
			frac = frac * 10 + (*s - '0');
			scale /= 10;
		} else {
			digits++;
			if (__builtin_mul_overflow(whole, 10, &whole) ||
			    __builtin_add_overflow(whole, (int64_t)(*s - '0'), &whole))
				return 0;
		}
	}
	if (digits == 0 || (in_frac && frac_digits == 0))
		return 0;
	int64_t ns;
	if (__builtin_mul_overflow(whole, unit, &ns) || __builtin_mul_overflow(ns, NSEC, &ns))
		return 0;
	/* frac < 10^k and scale = 10^(9-k): frac * scale < 1e9, times unit fits */
	if (__builtin_add_overflow(ns, frac * scale * unit, &ns))
		return 0;
	*out = neg ? -ns : ns;
	return 1;
}

static int starts_with(const char *s, const char *end, const char *prefix)
{
	for (; *prefix; prefix++, s++)
		if (s >= end || *s != *prefix)
			return 0;
	return 1;
}

/* Whole file content -> offset. 1 on success, 0 if malformed. */
static int parse_content(const char *s, size_t len, int64_t *out)
{
	const char *end = s + len;
	while (s < end) {
		const char *eol = s;
		while (eol < end && *eol != '\n')
			eol++;
		const char *a = s, *b = eol;
		s = eol < end ? eol + 1 : end;
		while (a < b && is_space(*a))
			a++;
		while (b > a && is_space(b[-1]))
			b--;
		if (a == b || *a == '#')
			continue;
		if (starts_with(a, b, "offset_ns="))
			return parse_int(a + 10, b, out);
		return parse_relative(a, b, out);
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* offset state                                                              */

#define BACKSTEP_NS (1 * NSEC) /* a real clock step back by more than this forces a re-check */

static char g_path[4096];
static int g_have_path;
static int64_t g_cache_ns = NSEC;

static int g_init;          /* 0 not started, 1 running, 2 done */
static int64_t g_offset_ns; /* current offset */
static int64_t g_last_ns;   /* real time of the last check */
static int64_t g_next_ns;   /* real time of the next check */
static int g_lock;          /* pid of the refreshing process, 0 = free */

struct ident {
	uint64_t dev, ino;
	int64_t size, mtime_s, mtime_ns, ctime_s, ctime_ns;
	int valid;
};
static struct ident g_ident; /* guarded by g_lock */

static void ident_from(struct ident *id, const struct stat *st)
{
	id->dev = st->st_dev;
	id->ino = st->st_ino;
	id->size = st->st_size;
	id->mtime_s = st->st_mtim.tv_sec;
	id->mtime_ns = st->st_mtim.tv_nsec;
	id->ctime_s = st->st_ctim.tv_sec;
	id->ctime_ns = st->st_ctim.tv_nsec;
	id->valid = 1;
}

static int ident_eq(const struct ident *a, const struct ident *b)
{
	return a->valid && b->valid && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_s == b->mtime_s && a->mtime_ns == b->mtime_ns && a->ctime_s == b->ctime_s &&
	       a->ctime_ns == b->ctime_ns;
}

static int lock_try(void)
{
	int me = (int)raw_syscall(SYS_getpid, 0, 0, 0, 0); /* not cached: fork() changes it */
	int seen = 0;
	if (__atomic_compare_exchange_n(&g_lock, &seen, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
		return 1;
	/* Held by another process: we are a fork()ed child and the holder thread
	 * does not exist here, so the lock can never be released. Take it. */
	if (seen != me &&
	    __atomic_compare_exchange_n(&g_lock, &seen, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
		return 1;
	return 0;
}

static void lock_release(void) { STORE(&g_lock, 0); }

static int64_t saturating_add(int64_t a, int64_t b)
{
	int64_t r;
	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? INT64_MAX : INT64_MIN;
	return r;
}

/* Reads the file if it changed; returns the offset to use. Caller holds g_lock. */
static int64_t load_offset_locked(int64_t current)
{
	struct stat st;
	if (raw_syscall(SYS_stat, (long)g_path, (long)&st, 0, 0) < 0) {
		g_ident.valid = 0;
		return 0; /* missing or unreadable: real time */
	}
	struct ident seen;
	ident_from(&seen, &st);
	if (ident_eq(&seen, &g_ident))
		return current;

	int fd = raw_open(g_path);
	if (fd < 0) {
		g_ident.valid = 0;
		return 0;
	}
	int64_t off = 0;
	/* identify what we actually read, not what stat saw a moment earlier */
	if (raw_syscall(SYS_fstat, fd, (long)&st, 0, 0) == 0 && S_ISREG(st.st_mode)) {
		char buf[512];
		size_t len = 0;
		for (;;) {
			long n = raw_read(fd, buf + len, sizeof buf - len);
			if (n == -EINTR)
				continue;
			if (n <= 0)
				break;
			len += (size_t)n;
			if (len == sizeof buf)
				break;
		}
		int64_t parsed;
		if (len < sizeof buf && parse_content(buf, len, &parsed))
			off = parsed;
		ident_from(&g_ident, &st);
	} else {
		g_ident.valid = 0;
	}
	raw_close(fd);
	return off;
}

static int64_t refresh(int64_t now)
{
	if (!lock_try())
		return LOAD_RELAXED(&g_offset_ns); /* someone else is refreshing */
	int64_t off = LOAD_RELAXED(&g_offset_ns);
	int64_t next = LOAD_RELAXED(&g_next_ns);
	int64_t last = LOAD_RELAXED(&g_last_ns);
	if (now >= next || saturating_add(now, BACKSTEP_NS) < last) {
		off = load_offset_locked(off);
		STORE(&g_offset_ns, off);
		STORE(&g_last_ns, now);
		STORE(&g_next_ns, saturating_add(now, g_cache_ns));
	}
	lock_release();
	return off;
}

/* "<seconds>[.<fraction>]" -> ns, for FAKETIME_CACHE_DURATION. */
static int parse_duration(const char *s, int64_t *out)
{
	const char *end = s;
	while (*end)
		end++;
	if (s == end || *s == '-' || *s == '+')
		return 0;
	return parse_relative(s, end, out) && *out >= 0;
}

static void init_state(void)
{
	preresolve();

	const char *path = getenv("FAKETIME_TIMESTAMP_FILE");
	size_t n = 0;
	if (path != NULL)
		while (path[n] && n < sizeof g_path)
			n++;
	if (path != NULL && n > 0 && n < sizeof g_path) {
		for (size_t i = 0; i <= n; i++)
			g_path[i] = path[i];
		g_have_path = 1;
	}

	const char *cache = getenv("FAKETIME_CACHE_DURATION");
	int64_t cache_ns;
	if (cache != NULL && parse_duration(cache, &cache_ns))
		g_cache_ns = cache_ns;

	if (g_have_path) {
		STORE(&g_last_ns, INT64_MIN);
		STORE(&g_next_ns, INT64_MIN); /* first use reads the file */
	} else {
		STORE(&g_last_ns, INT64_MIN);
		STORE(&g_next_ns, INT64_MAX); /* nothing to read: offset 0 forever */
	}
}

static void ensure_init(void)
{
	int state = 0;
	if (__atomic_compare_exchange_n(&g_init, &state, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		init_state();
		STORE(&g_init, 2);
	}
	/* state 1: another thread (or a call from inside the lookup) is initialising;
	 * the caller goes on with offset 0 / raw syscalls meanwhile. */
}

/* The offset for a real wall-clock reading of `now` ns. */
static inline int64_t offset_at(int64_t now)
{
	if (UNLIKELY(LOAD(&g_init) != 2)) {
		ensure_init();
		if (LOAD(&g_init) != 2)
			return LOAD_RELAXED(&g_offset_ns);
	}
	int64_t next = LOAD_RELAXED(&g_next_ns);
	int64_t last = LOAD_RELAXED(&g_last_ns);
	if (LIKELY(now < next && now + BACKSTEP_NS >= last))
		return LOAD_RELAXED(&g_offset_ns);
	return refresh(now);
}

/* The offset now, for deadline translation (reads the real clock once). */
static int64_t current_offset(void)
{
	struct timespec ts;
	if (call_clock_gettime(CLOCK_REALTIME, &ts) != 0)
		return LOAD_RELAXED(&g_offset_ns);
	return offset_at((int64_t)ts.tv_sec * NSEC + ts.tv_nsec);
}

/* Initialise and read the file before main(), while the process has one
 * thread: later readers then always find a loaded offset, and a reader that
 * loses the race for a refresh uses the previous one. */
__attribute__((constructor)) static void berth_faketime_init(void)
{
	ensure_init();
	current_offset();
}

/* ------------------------------------------------------------------------ */
/* timespec arithmetic                                                       */

static void add_offset(struct timespec *ts, int64_t off)
{
	int64_t osec = off / NSEC, onsec = off % NSEC;
	int64_t sec = ts->tv_sec + osec, nsec = ts->tv_nsec + onsec;
	if (nsec >= NSEC) {
		nsec -= NSEC;
		sec++;
	} else if (nsec < 0) {
		nsec += NSEC;
		sec--;
	}
	ts->tv_sec = sec;
	ts->tv_nsec = nsec;
}

/* Faked absolute deadline -> real deadline. Returns the deadline to pass on:
 * `in` itself when there is nothing to translate or it is invalid (so the
 * real function reports EINVAL), else `out`. A deadline that falls before
 * the epoch becomes {0, 1}: already expired, and still "armed" for timers. */
static const struct timespec *to_real(const struct timespec *in, struct timespec *out)
{
	if (in == NULL || in->tv_nsec < 0 || in->tv_nsec >= NSEC)
		return in;
	int64_t off = current_offset();
	if (off == 0)
		return in;
	/* "wait forever" deadlines near the limits stay as they are */
	if (in->tv_sec > INT64_MAX / 2 || in->tv_sec < INT64_MIN / 2)
		return in;
	*out = *in;
	add_offset(out, -off);
	if (out->tv_sec < 0) {
		out->tv_sec = 0;
		out->tv_nsec = 1;
	}
	return out;
}

static int is_wall_clock(clockid_t clk)
{
	return clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE || clk == CLOCK_TAI ||
	       clk == CLOCK_REALTIME_ALARM;
}

/* clocks a timer or sleep can take an absolute wall-clock deadline on */
static int is_wall_deadline_clock(clockid_t clk)
{
	return clk == CLOCK_REALTIME || clk == CLOCK_TAI || clk == CLOCK_REALTIME_ALARM;
}

/* ------------------------------------------------------------------------ */
/* reading the wall clock                                                    */

EXPORT int clock_gettime(clockid_t clk, struct timespec *ts)
{
	int r = call_clock_gettime(clk, ts);
	if (LIKELY(r == 0) && is_wall_clock(clk) && ts != NULL) {
		int64_t off = offset_at((int64_t)ts->tv_sec * NSEC + ts->tv_nsec);
		if (off != 0)
			add_offset(ts, off);
	}
	return r;
}

EXPORT int gettimeofday(struct timeval *tv, void *tz)
{
	gettimeofday_fn f = LOAD_RELAXED(&real_gettimeofday);
	int r;
	if (LIKELY(f != NULL)) {
		r = f(tv, tz);
	} else {
		long k = raw_syscall(SYS_gettimeofday, (long)tv, (long)tz, 0, 0);
		r = k < 0 ? (errno = (int)-k, -1) : 0;
	}
	if (LIKELY(r == 0) && tv != NULL) {
		struct timespec ts = {tv->tv_sec, (long)tv->tv_usec * 1000};
		int64_t off = offset_at((int64_t)ts.tv_sec * NSEC + ts.tv_nsec);
		if (off != 0) {
			add_offset(&ts, off);
			tv->tv_sec = ts.tv_sec;
			tv->tv_usec = ts.tv_nsec / 1000;
		}
	}
	return r;
}

EXPORT time_t time(time_t *out)
{
	/* glibc's time() reads the coarse clock too; stay consistent with it */
	struct timespec ts;
	if (call_clock_gettime(CLOCK_REALTIME_COARSE, &ts) != 0)
		return (time_t)-1;
	int64_t off = offset_at((int64_t)ts.tv_sec * NSEC + ts.tv_nsec);
	if (off != 0)
		add_offset(&ts, off);
	if (out != NULL)
		*out = ts.tv_sec;
	return ts.tv_sec;
}

EXPORT int timespec_get(struct timespec *ts, int base)
{
	if (base == TIME_UTC)
		return clock_gettime(CLOCK_REALTIME, ts) == 0 ? base : 0;
	REAL(int (*)(struct timespec *, int), timespec_get, NULL);
	return real != NULL ? real(ts, base) : 0;
}

/* struct timeb without <sys/timeb.h> (deprecated, absent from newer headers) */
struct berth_timeb {
	time_t time;
	unsigned short millitm;
	short timezone;
	short dstflag;
};

EXPORT int ftime(struct berth_timeb *tb)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
		return -1;
	tb->time = ts.tv_sec;
	tb->millitm = (unsigned short)(ts.tv_nsec / 1000000);
	tb->timezone = 0;
	tb->dstflag = 0;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* absolute wall-clock deadlines                                             */

EXPORT int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req,
			   struct timespec *rem)
{
	REAL(int (*)(clockid_t, int, const struct timespec *, struct timespec *),
	     clock_nanosleep, NULL);
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	if ((flags & TIMER_ABSTIME) && is_wall_deadline_clock(clk))
		req = to_real(req, &t);
	return real(clk, flags, req, rem);
}

EXPORT int sem_timedwait(sem_t *sem, const struct timespec *abs)
{
	REAL(int (*)(sem_t *, const struct timespec *), sem_timedwait, NULL);
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	struct timespec t;
	return real(sem, to_real(abs, &t));
}

EXPORT int sem_clockwait(sem_t *sem, clockid_t clk, const struct timespec *abs)
{
	REAL(int (*)(sem_t *, clockid_t, const struct timespec *), sem_clockwait, "GLIBC_2.30");
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	struct timespec t;
	if (is_wall_deadline_clock(clk))
		abs = to_real(abs, &t);
	return real(sem, clk, abs);
}

EXPORT int pthread_mutex_timedlock(pthread_mutex_t *m, const struct timespec *abs)
{
	REAL(int (*)(pthread_mutex_t *, const struct timespec *), pthread_mutex_timedlock, NULL);
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	return real(m, to_real(abs, &t));
}

EXPORT int pthread_mutex_clocklock(pthread_mutex_t *m, clockid_t clk, const struct timespec *abs)
{
	REAL(int (*)(pthread_mutex_t *, clockid_t, const struct timespec *),
	     pthread_mutex_clocklock, "GLIBC_2.30");
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	if (is_wall_deadline_clock(clk))
		abs = to_real(abs, &t);
	return real(m, clk, abs);
}

EXPORT int pthread_rwlock_timedrdlock(pthread_rwlock_t *l, const struct timespec *abs)
{
	REAL(int (*)(pthread_rwlock_t *, const struct timespec *), pthread_rwlock_timedrdlock,
	     NULL);
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	return real(l, to_real(abs, &t));
}

EXPORT int pthread_rwlock_timedwrlock(pthread_rwlock_t *l, const struct timespec *abs)
{
	REAL(int (*)(pthread_rwlock_t *, const struct timespec *), pthread_rwlock_timedwrlock,
	     NULL);
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	return real(l, to_real(abs, &t));
}

EXPORT int pthread_rwlock_clockrdlock(pthread_rwlock_t *l, clockid_t clk,
				      const struct timespec *abs)
{
	REAL(int (*)(pthread_rwlock_t *, clockid_t, const struct timespec *),
	     pthread_rwlock_clockrdlock, "GLIBC_2.30");
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	if (is_wall_deadline_clock(clk))
		abs = to_real(abs, &t);
	return real(l, clk, abs);
}

EXPORT int pthread_rwlock_clockwrlock(pthread_rwlock_t *l, clockid_t clk,
				      const struct timespec *abs)
{
	REAL(int (*)(pthread_rwlock_t *, clockid_t, const struct timespec *),
	     pthread_rwlock_clockwrlock, "GLIBC_2.30");
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	if (is_wall_deadline_clock(clk))
		abs = to_real(abs, &t);
	return real(l, clk, abs);
}

EXPORT int pthread_timedjoin_np(pthread_t th, void **ret, const struct timespec *abs)
{
	REAL(int (*)(pthread_t, void **, const struct timespec *), pthread_timedjoin_np, NULL);
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	return real(th, ret, to_real(abs, &t));
}

EXPORT int pthread_clockjoin_np(pthread_t th, void **ret, clockid_t clk,
				const struct timespec *abs)
{
	REAL(int (*)(pthread_t, void **, clockid_t, const struct timespec *),
	     pthread_clockjoin_np, "GLIBC_2.31");
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	if (is_wall_deadline_clock(clk))
		abs = to_real(abs, &t);
	return real(th, ret, clk, abs);
}

/* Which clock does a condition variable wait on? glibc keeps it in a bit of
 * pthread_cond_t whose place has moved twice (byte 40 before 2.25, 36 until
 * 2.40, 28 since 2.41). Rather than trusting a layout, find the bit once:
 * initialise one condvar on CLOCK_REALTIME and one on CLOCK_MONOTONIC with
 * the running glibc and see which single bit differs. */
static int g_cond_state;      /* 0 not calibrated, 1 bit found, 2 use the layout */
static int g_cond_byte;       /* byte index of the clock bit */
static unsigned char g_cond_mask, g_cond_mono;

static void *slot_condattr_init, *slot_condattr_setclock, *slot_condattr_destroy, *slot_cond_init,
	*slot_cond_destroy;

static int calibrate_cond_bit(void)
{
	int (*attr_init)(pthread_condattr_t *) =
		(int (*)(pthread_condattr_t *))resolve(&slot_condattr_init, "pthread_condattr_init", NULL);
	int (*setclock)(pthread_condattr_t *, clockid_t) = (int (*)(pthread_condattr_t *, clockid_t))
		resolve(&slot_condattr_setclock, "pthread_condattr_setclock", NULL);
	int (*attr_destroy)(pthread_condattr_t *) = (int (*)(pthread_condattr_t *))resolve(
		&slot_condattr_destroy, "pthread_condattr_destroy", NULL);
	int (*cond_init)(pthread_cond_t *, const pthread_condattr_t *) =
		(int (*)(pthread_cond_t *, const pthread_condattr_t *))resolve(
			&slot_cond_init, "pthread_cond_init", "GLIBC_2.3.2");
	int (*cond_destroy)(pthread_cond_t *) = (int (*)(pthread_cond_t *))resolve(
		&slot_cond_destroy, "pthread_cond_destroy", "GLIBC_2.3.2");
	if (!attr_init || !setclock || !attr_destroy || !cond_init || !cond_destroy)
		return 0;

	pthread_condattr_t ra, ma;
	pthread_cond_t rc, mc;
	unsigned char *r = (unsigned char *)&rc, *m = (unsigned char *)&mc;
	for (size_t i = 0; i < sizeof rc; i++)
		r[i] = m[i] = 0;
	if (attr_init(&ra) != 0)
		return 0;
	if (attr_init(&ma) != 0) {
		attr_destroy(&ra);
		return 0;
	}
	int ok = setclock(&ra, CLOCK_REALTIME) == 0 && setclock(&ma, CLOCK_MONOTONIC) == 0 &&
		 cond_init(&rc, &ra) == 0;
	if (ok && cond_init(&mc, &ma) != 0) {
		cond_destroy(&rc);
		ok = 0;
	}
	attr_destroy(&ra);
	attr_destroy(&ma);
	if (!ok)
		return 0;

	int found = -1, bits = 0;
	for (size_t i = 0; i < sizeof rc; i++) {
		unsigned char d = r[i] ^ m[i];
		if (d != 0) {
			found = (int)i;
			bits += __builtin_popcount(d);
		}
	}
	if (bits == 1) {
		g_cond_byte = found;
		g_cond_mask = r[found] ^ m[found];
		g_cond_mono = m[found] & g_cond_mask;
	}
	cond_destroy(&rc);
	cond_destroy(&mc);
	return bits == 1;
}

/* 1 if the condvar's deadlines are on CLOCK_REALTIME */
static int cond_is_realtime(pthread_cond_t *c)
{
	int state = LOAD(&g_cond_state);
	if (UNLIKELY(state == 0)) {
		state = calibrate_cond_bit() ? 1 : 2;
		STORE(&g_cond_state, state);
	}
	const unsigned char *p = (const unsigned char *)c;
	if (LIKELY(state == 1))
		return (LOAD_RELAXED(&p[g_cond_byte]) & g_cond_mask) != g_cond_mono;
	/* fallback: the known layouts. Bit 0 of __nwaiters (offset 40) before
	 * 2.25; bit 1 of __wrefs since, at offset 36 until 2.40 and 28 from 2.41
	 * (which dropped __g_refs); set = monotonic. */
	static void *slot_version;
	const char *(*version)(void) =
		(const char *(*)(void))resolve(&slot_version, "gnu_get_libc_version", NULL);
	const char *v = version != NULL ? version() : "";
	int major = 0, minor = 0;
	while (is_digit(*v))
		major = major * 10 + (*v++ - '0');
	if (*v == '.')
		v++;
	while (is_digit(*v))
		minor = minor * 10 + (*v++ - '0');
	unsigned int word;
	if (major == 2 && minor < 25) {
		__builtin_memcpy(&word, p + 40, sizeof word);
		return (word & 1) == 0;
	}
	__builtin_memcpy(&word, p + (major == 2 && minor < 41 ? 36 : 28), sizeof word);
	return (word & 2) == 0;
}

EXPORT int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *abs)
{
	REAL(int (*)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *),
	     pthread_cond_timedwait, "GLIBC_2.3.2");
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	if (abs != NULL && cond_is_realtime(c))
		abs = to_real(abs, &t);
	return real(c, m, abs);
}

EXPORT int pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk,
				  const struct timespec *abs)
{
	REAL(int (*)(pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *),
	     pthread_cond_clockwait, "GLIBC_2.30");
	if (real == NULL)
		return ENOSYS;
	struct timespec t;
	if (is_wall_deadline_clock(clk))
		abs = to_real(abs, &t);
	return real(c, m, clk, abs);
}

EXPORT int mq_timedsend(mqd_t q, const char *msg, size_t len, unsigned int prio,
			const struct timespec *abs)
{
	REAL(int (*)(mqd_t, const char *, size_t, unsigned int, const struct timespec *),
	     mq_timedsend, NULL);
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	struct timespec t;
	return real(q, msg, len, prio, to_real(abs, &t));
}

EXPORT ssize_t mq_timedreceive(mqd_t q, char *msg, size_t len, unsigned int *prio,
			       const struct timespec *abs)
{
	REAL(ssize_t (*)(mqd_t, char *, size_t, unsigned int *, const struct timespec *),
	     mq_timedreceive, NULL);
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	struct timespec t;
	return real(q, msg, len, prio, to_real(abs, &t));
}

/* Timer deadlines: translate it_value only (it_interval is relative), and
 * never a zero it_value, which disarms. */
static const struct itimerspec *timer_to_real(const struct itimerspec *in, struct itimerspec *out)
{
	if (in == NULL || (in->it_value.tv_sec == 0 && in->it_value.tv_nsec == 0))
		return in;
	struct timespec t;
	const struct timespec *v = to_real(&in->it_value, &t);
	if (v == &in->it_value)
		return in;
	out->it_interval = in->it_interval;
	out->it_value = *v;
	return out;
}

/* timerfd clocks: 2 bits per fd below TIMERFD_TRACKED (0 unknown, 1 wall, 2 other);
 * unknown fds (dup()ed, inherited over exec, beyond the table) are looked up
 * in /proc/self/fdinfo. */
#define TIMERFD_TRACKED 65536
static unsigned char g_timerfd_clock[TIMERFD_TRACKED];

static int fdinfo_clock(int fd)
{
	char path[64] = "/proc/self/fdinfo/";
	char digits[16];
	int n = 0;
	unsigned int v = (unsigned int)fd;
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	size_t p = 18;
	while (n > 0)
		path[p++] = digits[--n];
	path[p] = 0;
	int f = raw_open(path);
	if (f < 0)
		return -1;
	char buf[1024];
	long len = 0;
	for (;;) {
		long r = raw_read(f, buf + len, sizeof buf - 1 - (size_t)len);
		if (r == -EINTR)
			continue;
		if (r <= 0)
			break;
		len += r;
		if (len == (long)sizeof buf - 1)
			break;
	}
	raw_close(f);
	buf[len] = 0;
	for (long i = 0; i < len; i++) {
		if ((i == 0 || buf[i - 1] == '\n') && starts_with(buf + i, buf + len, "clockid:")) {
			const char *q = buf + i + 8;
			while (*q == ' ' || *q == '\t')
				q++;
			int clk = 0;
			if (!is_digit(*q))
				return -1;
			while (is_digit(*q))
				clk = clk * 10 + (*q++ - '0');
			return clk;
		}
	}
	return -1;
}

EXPORT int timerfd_create(int clk, int flags)
{
	REAL(int (*)(int, int), timerfd_create, NULL);
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	int fd = real(clk, flags);
	if (fd >= 0 && fd < TIMERFD_TRACKED)
		STORE(&g_timerfd_clock[fd], is_wall_deadline_clock(clk) ? 1 : 2);
	return fd;
}

EXPORT int timerfd_settime(int fd, int flags, const struct itimerspec *nv, struct itimerspec *ov)
{
	REAL(int (*)(int, int, const struct itimerspec *, struct itimerspec *), timerfd_settime,
	     NULL);
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	struct itimerspec t;
	if ((flags & TFD_TIMER_ABSTIME) && nv != NULL) {
		int wall;
		unsigned char known = fd >= 0 && fd < TIMERFD_TRACKED ? LOAD(&g_timerfd_clock[fd]) : 0;
		if (known != 0) {
			wall = known == 1;
		} else {
			int saved = errno;
			wall = is_wall_deadline_clock(fdinfo_clock(fd));
			errno = saved;
		}
		if (wall)
			nv = timer_to_real(nv, &t);
	}
	return real(fd, flags, nv, ov);
}

/* POSIX timers on a wall clock, by timer id. A full table means untracked
 * timers (their absolute deadlines stay untranslated). */
#define TIMERS_TRACKED 1024
static struct {
	int state; /* 0 free, 1 claiming, 2 wall-clock timer */
	int pid;   /* creating process: timers are not inherited over fork() */
	timer_t id;
} g_timers[TIMERS_TRACKED];

static int raw_getpid(void) { return (int)raw_syscall(SYS_getpid, 0, 0, 0, 0); }

EXPORT int timer_create(clockid_t clk, struct sigevent *sev, timer_t *id)
{
	REAL(int (*)(clockid_t, struct sigevent *, timer_t *), timer_create, NULL);
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	int r = real(clk, sev, id);
	if (r == 0 && is_wall_deadline_clock(clk)) {
		int me = raw_getpid();
		for (int i = 0; i < TIMERS_TRACKED; i++) {
			int seen = LOAD(&g_timers[i].state);
			/* free, or left behind by the process we were forked from */
			if ((seen == 0 || (seen == 2 && g_timers[i].pid != me)) &&
			    __atomic_compare_exchange_n(&g_timers[i].state, &seen, 1, 0,
							__ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
				g_timers[i].id = *id;
				g_timers[i].pid = me;
				STORE(&g_timers[i].state, 2);
				break;
			}
		}
	}
	return r;
}

static int timer_slot(timer_t id)
{
	int me = 0;
	for (int i = 0; i < TIMERS_TRACKED; i++) {
		if (LOAD(&g_timers[i].state) == 2 && g_timers[i].id == id) {
			if (me == 0)
				me = raw_getpid();
			if (g_timers[i].pid == me)
				return i;
		}
	}
	return -1;
}

EXPORT int timer_delete(timer_t id)
{
	REAL(int (*)(timer_t), timer_delete, NULL);
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	int i = timer_slot(id);
	int r = real(id);
	if (i >= 0)
		STORE(&g_timers[i].state, 0);
	return r;
}

EXPORT int timer_settime(timer_t id, int flags, const struct itimerspec *nv, struct itimerspec *ov)
{
	REAL(int (*)(timer_t, int, const struct itimerspec *, struct itimerspec *), timer_settime,
	     NULL);
	if (real == NULL) {
		errno = ENOSYS;
		return -1;
	}
	struct itimerspec t;
	if ((flags & TIMER_ABSTIME) && nv != NULL && timer_slot(id) >= 0)
		nv = timer_to_real(nv, &t);
	return real(id, flags, nv, ov);
}
