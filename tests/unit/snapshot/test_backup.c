/* Checkpoints and backups of a running group (two VHD disks and one raw
 * disk with copy-before-write), with writers in flight on every disk. Every
 * restore is compared byte for byte with the disk as the guest saw it at
 * the cut (the workload paused for that copy). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "harness.h"
#include "testlib.h"

#define SIZE (16ull * 1024 * 1024)

static void compare_restore(const char *restore_dir, struct h_vm *vm, uint8_t **refs)
{
    struct hv_reactor *r;
    struct hv_err err = {0};
    assert_int_equal(hv_reactor_create(&r), 0);
    for (int i = 0; i < vm->n; i++) {
        char p[4200];
        snprintf(p, sizeof(p), "%s/c%d-s%d.vhd", restore_dir, vm->disks[i].controller,
                 vm->disks[i].slot);
        struct bdev *bd;
        struct vhd_open_options oo = {.is_read_only = true};
        assert_int_equal(vhd_open(r, p, &oo, &bd, &err), 0);
        assert_int_equal(bd->size_bytes, SIZE);
        uint8_t *buf = hv_alloc_aligned(SIZE);
        assert_int_equal(bdev_read_sync(bd, 0, buf, SIZE), 0);
        assert_memory_equal(buf, refs[i], SIZE);
        free(buf);
        bdev_close(bd);
    }
    hv_reactor_destroy(r);
}

static void test_full_then_three_incrementals_restore_exactly(void **state)
{
    (void)state;
    struct h_vm vm;
    struct hv_err err = {0};
    char dir[4096], bdir[4096];
    snprintf(dir, sizeof(dir), "%s/vm", t_tmpdir());
    snprintf(bdir, sizeof(bdir), "%s/backups", t_tmpdir());
    assert_int_equal(t_run(NULL, 0, "mkdir -p '%s'", dir), 0);
    assert_int_equal(h_open(&vm, dir, 2, 1, SIZE, true, &err), 0);
    /* Fill most of each disk, then let the guest change only its first MiBs
     * so that incrementals are small next to fulls. */
    vm.write_bytes = 256 * 1024;
    h_start(&vm);
    h_run_ms(&vm, 100);
    h_pause(&vm);
    vm.write_bytes = 4096;
    vm.write_span_bytes = 3 * 1024 * 1024;
    /* Some data first, then a clean checkpoint of nothing: CBT starts now. */
    h_start(&vm);
    h_run_ms(&vm, 30);
    h_pause(&vm);
    for (int seq = 0; seq < 4; seq++) {
        uint8_t *refs[H_MAX_DISKS];
        uint64_t changed = 0;
        for (int i = 0; i < vm.n; i++) {
            refs[i] = h_read_disk(&vm, i);
            assert_non_null(refs[i]);
            changed += h_changed_bytes(&vm, i);
        }
        struct snap_backup_options bo = {
            .dir = bdir, .vm_name = "vm1", .is_incremental = seq > 0, .want_app = true};
        struct snap_backup_result res;
        char recovered[1024];
        int rc = snap_backup_create(&vm.grp, &bo, &res, recovered, sizeof(recovered), &err);
        if (rc < 0)
            print_message("backup: %s\n", hv_err_msg(&err, rc));
        assert_int_equal(rc, 0);
        assert_int_equal(vm.status, 0);
        assert_int_equal(res.sequence, seq);
        assert_int_equal(res.consistency, SNAP_CRASH);
        assert_non_null(strstr(res.why_crash, "no guest agent"));
        print_message("backup #%d: %s%s%s, hold %.3f ms, read %llu, changed %llu (guest "
                      "wrote %llu)\n",
                      seq, res.is_incremental ? "incremental" : "full",
                      res.why_full[0] ? ": " : "", res.why_full, res.hold_ns / 1e6,
                      (unsigned long long)res.bytes_read, (unsigned long long)res.bytes_changed,
                      (unsigned long long)changed);
        if (seq == 0) {
            assert_false(res.is_incremental);
        } else if (seq == 1) {
            /* The first incremental after a fresh start: CBT had no history
             * at the full backup's cut... it had, since the full took it. */
            assert_true(res.is_incremental);
        }
        if (res.is_incremental) {
            /* Exactly the units the guest changed, nothing else. */
            assert_int_equal(res.bytes_read, changed);
            assert_int_equal(res.bytes_written, changed);
            assert_true(changed <= 3ull * 3 * 1024 * 1024);
        }
        /* The guest kept writing through the backup; the disks are back on
         * their own chains. */
        for (int i = 0; i < 2; i++) {
            assert_string_equal(vm.disks[i].vhd_path, vm.base[i]);
            assert_ptr_equal(snap_top_current(vm.disks[i].top), vm.chain[i]);
        }
        h_run_ms(&vm, 20);
        h_pause(&vm);
        assert_true(vm.writes > 0);

        json_t *report = NULL;
        rc = snap_backup_verify(bdir, &report, &err);
        if (rc < 0)
            hv_json_print(stderr, report);
        assert_int_equal(rc, 0);
        json_decref(report);
        char rdir[4200];
        snprintf(rdir, sizeof(rdir), "%s/restore%d", t_tmpdir(), seq);
        assert_int_equal(snap_backup_restore(bdir, seq, rdir, &err), 0);
        compare_restore(rdir, &vm, refs);
        for (int i = 0; i < vm.n; i++)
            free(refs[i]);
    }
    /* vhd convert of the newest file is a restore too: the chain is ordinary. */
    char conv[4200], newest[4200];
    snprintf(newest, sizeof(newest), "%s/3-c0-s0.vhd", bdir);
    snprintf(conv, sizeof(conv), "%s/conv.vhd", t_tmpdir());
    struct vhd_convert_options co = {0};
    assert_int_equal(vhd_convert(newest, conv, &co, &err), 0);
    char restored[4200];
    snprintf(restored, sizeof(restored), "%s/restore3/c0-s0.vhd", t_tmpdir());
    struct vhd_compare_result cr;
    assert_int_equal(vhd_compare(conv, VHD_FORMAT_VHD, restored, VHD_FORMAT_VHD, true, &cr, &err),
                     0);
    assert_true(cr.is_same);

    /* A backup block changed behind the manifest's back is found by verify. */
    char victim[4200];
    snprintf(victim, sizeof(victim), "%s/0-c0-s1.vhd", bdir);
    {
        struct hv_reactor *r2;
        struct bdev *bd;
        struct vhd_open_options oo = {0};
        assert_int_equal(hv_reactor_create(&r2), 0);
        assert_int_equal(vhd_open(r2, victim, &oo, &bd, &err), 0);
        uint8_t *junk = hv_alloc_aligned(4096);
        memset(junk, 0x5a, 4096);
        assert_int_equal(bdev_write_sync(bd, 1024 * 1024, junk, 4096, 0), 0);
        free(junk);
        assert_int_equal(bdev_close(bd), 0);
        hv_reactor_destroy(r2);
    }
    json_t *report = NULL;
    assert_true(snap_backup_verify(bdir, &report, &err) < 0);
    assert_false(json_is_true(json_object_get(report, "ok")));
    json_decref(report);

    assert_int_equal(h_close(&vm), 0);
    struct vhd_check_report rep = {0};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(vhd_check(vm.base[i], &rep, &err), VHD_CHECK_CLEAN);
        vhd_check_report_free(&rep);
    }
}

/* A checkpoint without a backup: the guest's disks get children, the hold
 * is short, the parents keep the cut, and deleting it merges live. */
static void test_checkpoint_create_merge_and_apply(void **state)
{
    (void)state;
    struct h_vm vm;
    struct hv_err err = {0};
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/vm2", t_tmpdir());
    assert_int_equal(t_run(NULL, 0, "mkdir -p '%s'", dir), 0);
    assert_int_equal(h_open(&vm, dir, 4, 0, SIZE, true, &err), 0);
    vm.grp.on_cut = NULL;
    h_start(&vm);
    h_run_ms(&vm, 20);
    h_pause(&vm);
    uint8_t *refs[4];
    for (int i = 0; i < 4; i++)
        refs[i] = h_read_disk(&vm, i);
    vm.grp.on_cut = h_on_cut;
    struct snap_checkpoint_result res;
    assert_int_equal(snap_checkpoint_create(&vm.grp, "cp1", true, &res, &err), 0);
    print_message("checkpoint of 4 disks: hold %.3f ms (drain %.3f ms)\n", res.hold_ns / 1e6,
                  res.drain_ns / 1e6);
    assert_int_equal(res.consistency, SNAP_CRASH);
    assert_true(res.hold_ns < 50 * 1000000ull);
    for (int i = 0; i < 4; i++) {
        assert_string_equal(vm.disks[i].vhd_path, res.disks[i].child_path);
        assert_string_equal(res.disks[i].parent_path, vm.base[i]);
    }
    h_run_ms(&vm, 30);
    h_pause(&vm);
    /* The parents still read as the cut. */
    for (int i = 0; i < 4; i++) {
        uint8_t *buf = hv_alloc_aligned(SIZE);
        assert_int_equal(bdev_read_sync(vm.chain[i], 0, buf, SIZE), 0);
        assert_memory_equal(buf, refs[i], SIZE);
        free(buf);
    }
    /* Delete disk 0's checkpoint live while writers run. */
    uint8_t *now0 = NULL;
    h_start(&vm);
    uint64_t hold = 0;
    int rc = snap_checkpoint_merge(&vm.grp, 0, &hold, &err);
    if (rc < 0)
        print_message("merge: %s\n", hv_err_msg(&err, rc));
    assert_int_equal(rc, 0);
    print_message("live merge: final hold %.3f ms\n", hold / 1e6);
    h_run_ms(&vm, 10);
    h_pause(&vm);
    assert_string_equal(vm.disks[0].vhd_path, vm.base[0]);
    assert_int_equal(access(res.disks[0].child_path, F_OK), -1);
    now0 = h_read_disk(&vm, 0);
    uint8_t *now1 = h_read_disk(&vm, 1);
    char child1[4096];
    snprintf(child1, sizeof(child1), "%s", res.disks[1].child_path);
    snap_checkpoint_result_free(&res);
    assert_int_equal(h_close(&vm), 0);

    /* Offline: disk 0 (merged) reads what the guest last saw; disk 1's
     * chain reads the same; apply reverts disk 1 to the cut. */
    struct hv_reactor *r;
    assert_int_equal(hv_reactor_create(&r), 0);
    struct bdev *bd;
    struct vhd_open_options oo = {.is_read_only = true};
    uint8_t *buf = hv_alloc_aligned(SIZE);
    assert_int_equal(vhd_open(r, vm.base[0], &oo, &bd, &err), 0);
    assert_int_equal(bdev_read_sync(bd, 0, buf, SIZE), 0);
    assert_memory_equal(buf, now0, SIZE);
    bdev_close(bd);
    assert_int_equal(vhd_open(r, child1, &oo, &bd, &err), 0);
    assert_int_equal(bdev_read_sync(bd, 0, buf, SIZE), 0);
    assert_memory_equal(buf, now1, SIZE);
    bdev_close(bd);
    struct vhd_check_report rep = {0};
    assert_int_equal(vhd_check(child1, &rep, &err), VHD_CHECK_CLEAN);
    vhd_check_report_free(&rep);
    char new_top[4096];
    assert_int_equal(snap_checkpoint_apply(child1, vm.base[1], new_top, sizeof(new_top), &err), 0);
    assert_string_equal(new_top, child1);
    assert_int_equal(vhd_open(r, new_top, &oo, &bd, &err), 0);
    assert_int_equal(bdev_read_sync(bd, 0, buf, SIZE), 0);
    assert_memory_equal(buf, refs[1], SIZE);
    bdev_close(bd);
    assert_int_equal(snap_checkpoint_apply(vm.base[2], vm.base[2], new_top, sizeof(new_top), &err),
                     -EINVAL);
    hv_reactor_destroy(r);
    free(buf);
    free(now0);
    free(now1);
    for (int i = 0; i < 4; i++)
        free(refs[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_then_three_incrementals_restore_exactly),
        cmocka_unit_test(test_checkpoint_create_merge_and_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
