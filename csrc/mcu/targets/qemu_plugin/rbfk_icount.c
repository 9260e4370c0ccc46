/*
 * rbfk_icount.c - deterministic instruction counter for QEMU TCG (system mode), as a plugin.
 *
 * Counts every executed guest instruction (an inline 64-bit add per instruction, no callback), and
 * the instructions executed between two marker addresses: each time the first instruction of
 * `begin` executes the current count is remembered, each time `end` executes the difference is
 * added to the region sum. Same numbers on every run (TCG instruction counts do not depend on host
 * timing; only -smp 1 guests).
 *
 * Usage: qemu-system-... -plugin ./librbfk_icount.so,begin=0x<addr>,end=0x<addr>,out=<file>
 * Writes: insns_total N / regions N / region_sum N / region_first N / region_min N / region_max N
 *
 * Debian's QEMU 7.2 accepts -plugin but ships neither the contrib plugins nor qemu-plugin.h, so the
 * few declarations used here are written out below; they follow QEMU's stable plugin C ABI,
 * API version 1 (include/qemu/qemu-plugin.h of QEMU 4.2 .. 8.x; version 2+ keeps them compatible).
 * Build: gcc -shared -fPIC -O2 -fvisibility=hidden -o librbfk_icount.so rbfk_icount.c
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the subset of <qemu-plugin.h> (API v1) this plugin uses ---- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op, void *ptr,
                                                uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;
QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv);

/* ---- state (one vCPU: the MCU targets are single core) ---- */
static uint64_t insns;
static uint64_t begin_addr = UINT64_MAX, end_addr = UINT64_MAX;
static uint64_t start, regions, region_sum, region_first, region_min = UINT64_MAX, region_max;
static int in_region;
static char out_path[4096];

static void on_begin(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    start = insns;
    in_region = 1;
}

static void on_end(unsigned int vcpu, void *udata)
{
    uint64_t n;
    (void)vcpu;
    (void)udata;
    if (!in_region) {
        return;
    }
    n = insns - start;
    in_region = 0;
    if (regions == 0) {
        region_first = n;
    }
    regions += 1;
    region_sum += n;
    region_min = n < region_min ? n : region_min;
    region_max = n > region_max ? n : region_max;
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t i, n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    for (i = 0; i < n; ++i) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        /* markers first, so the marker instruction itself counts inside the region */
        if (pc == begin_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
        if (pc == end_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &insns, 1);
    }
}

static void on_exit(qemu_plugin_id_t id, void *udata)
{
    FILE *f = out_path[0] ? fopen(out_path, "w") : stderr;
    (void)id;
    (void)udata;
    if (f == NULL) {
        return;
    }
    fprintf(f, "insns_total %" PRIu64 "\nregions %" PRIu64 "\nregion_sum %" PRIu64 "\nregion_first %" PRIu64
               "\nregion_min %" PRIu64 "\nregion_max %" PRIu64 "\n",
            insns, regions, region_sum, region_first, regions ? region_min : 0, region_max);
    if (f != stderr) {
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    int i;
    (void)info;
    for (i = 0; i < argc; ++i) {
        const char *a = argv[i];
        if (strncmp(a, "begin=", 6) == 0) {
            begin_addr = strtoull(a + 6, NULL, 0);
        } else if (strncmp(a, "end=", 4) == 0) {
            end_addr = strtoull(a + 4, NULL, 0);
        } else if (strncmp(a, "out=", 4) == 0) {
            strncpy(out_path, a + 4, sizeof out_path - 1);
        } else {
            fprintf(stderr, "rbfk_icount: unknown argument %s\n", a);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
